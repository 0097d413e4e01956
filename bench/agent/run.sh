#!/usr/bin/env bash
# The agent's benchmark: latency, throughput, requests/s and RSS, each path
# against a direct connection, printed as `name value unit` lines.
# Usage: bench/agent/run.sh   (TPR_BENCH_BYTES=... to change the 1 GiB transfer)
set -euo pipefail
cd "$(dirname "$0")/../.."
# 1,000 relayed connections need ~4,000 descriptors across the processes.
ulimit -n 20000 2>/dev/null || true
exec cargo bench -q -p tpr-agent --bench agent
