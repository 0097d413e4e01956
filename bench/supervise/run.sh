#!/bin/sh
# Local process loop benchmark: write->stop signal and exit->start latency
# over 60 saves, RSS while watching 50,000 files. Prints `name value unit`.
# Targets: write_to_signal_p99 < debounce + 30 ms; exit_to_start_p99 < 20 ms;
# rss_tpr_watching < 30 MiB.
# Usage: bench/supervise/run.sh [SAVES [FILES]]
set -eu
cd "$(dirname "$0")/../.."
cargo build --quiet --release -p tpr --example supervise_bench
exec target/release/examples/supervise_bench "$@"
