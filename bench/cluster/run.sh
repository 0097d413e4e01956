#!/usr/bin/env bash
# tpr (and Telepresence OSS, when installed) on the test cluster, over the
# real port-forward through the API server. tests/cluster/up must have run
# and the images be loaded (tests/cluster/load-images). Prints `name value
# unit` lines, each figure once per tool (prefix tpr_ or tel_):
#   *_start_fresh_s       up/intercept -> first intercepted answer, agent not installed
#   *_start_warm_s        the same with the agent installed (median of 3)
#   *_leave_to_app_s      down/leave -> the app answers again (median of 3)
#   *_c1_p50_ms, *_c1_p99_ms, *_c1_rps
#                         intercepted, wrk on one keep-alive connection
#   *_c50_rps, *_c50_p50_ms, *_c50_p99_ms
#                         intercepted, wrk on 50 connections
#   *_upload_100mib_s, *_download_100mib_s
#                         100 MiB through the intercept, each direction
#   *_passthrough_c1_p50_ms, *_passthrough_c1_rps
#                         agent installed, not intercepted, one connection
#   *_agent_mem_idle_mib, *_agent_mem_load_mib
#                         the agent container's working set (cgroup memory:
#                         usage - inactive file), idle and the peak under the
#                         50-connection load
# wrk runs on the node against the Service's ClusterIP (the node routes to
# Services); the intercepted app is examples/hello on this machine.
# Settings: TPR_BIN=path (skips the release build), TPR_BENCH_SECONDS (wrk
# duration, default 10), TPR_KUBECONFIG. Not part of tests/run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/bench/cluster
export KUBECONFIG=${TPR_KUBECONFIG:-/var/lib/tpr-cluster/kubeconfig}
kubectl=/var/cache/tpr-cluster/bin/kubectl
[[ -x $kubectl ]] || kubectl=$repo/tests/cluster/bin/kubectl
hello=/var/cache/tpr-cluster/bin/hello
seconds=${TPR_BENCH_SECONDS:-10}
bytes=$((100 << 20))
tpr=${TPR_BIN:-}
if [[ -z $tpr ]]; then
	(cd "$repo" && cargo build -q -p tpr --release)
	tpr=$repo/target/release/tpr
fi
tpr=$(realpath "$tpr")
command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
tel=$(command -v telepresence || true)
[[ -z $tel && -x /var/cache/tpr-peers/telepresence/bin/telepresence ]] &&
	tel=/var/cache/tpr-peers/telepresence/bin/telepresence

ns=bench-cluster-$RANDOM$RANDOM
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	"$kubectl" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
export HOME=$work/home XDG_CONFIG_HOME=$work/home/config XDG_STATE_HOME=$work/home/state
say() { printf '[bench] %s\n' "$*" >&2; }

say "namespace $ns: deploying examples/hello"
"$kubectl" create namespace "$ns" >/dev/null
for f in deployment service; do
	sed "s/namespace: default/namespace: $ns/" "$repo/examples/hello/k8s/$f.yaml" | "$kubectl" apply -f - >/dev/null
done
"$kubectl" -n "$ns" rollout status deploy/hello --timeout=120s >/dev/null
ip=$("$kubectl" -n "$ns" get service hello -o jsonpath='{.spec.clusterIP}')
url=http://$ip/
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
# until_answer TEXT: polls the Service until it answers with TEXT (60 s at most).
until_answer() {
	local deadline=$(($(date +%s) + 60))
	until "$hello" get "$url" 2>/dev/null | grep -q "$1"; do
		(($(date +%s) < deadline)) || {
			say "no answer with '$1' in 60 s; the last answer: $("$hello" get "$url" 2>&1 | head -c 300)"
			for f in "$work"/up.out "$work"/up.err; do [[ -s $f ]] && { say "$f:"; tail -n 20 "$f" >&2; }; done
			exit 1
		}
	done
}
background() { "$@" & pids+=($!); }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The local side: hello for requests, transfer.py for the bulk figures; both
# listen on 127.0.0.1:$port in turn.
local_hello() { PORT=$port HELLO_WHO=local background "$hello" serve >/dev/null 2>&1; local_pid=$!; }

# ms VALUE: wrk's latency ("812.00us", "1.23ms", "2.01s") in milliseconds.
ms() {
	python3 -c "
import re, sys
v, u = re.match(r'([0-9.]+)([a-z]+)', '$1').groups()
print(f'{float(v) * {\"us\": 1e-3, \"ms\": 1, \"s\": 1e3, \"m\": 6e4}[u]:.3f}')"
}
# wrk_figures PREFIX CONNECTIONS: p50, p99 and requests/s of wrk on $url.
wrk_figures() {
	local threads=1 out
	(($2 > 1)) && threads=2
	out=$(wrk -t"$threads" -c"$2" -d"${seconds}s" --latency "$url")
	grep -q 'Non-2xx\|Socket errors' <<<"$out" && { say "wrk saw errors:"; echo "$out" >&2; }
	echo "${1}_p50_ms $(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") ms"
	echo "${1}_p99_ms $(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")") ms"
	echo "${1}_rps $(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out") req/s"
}

# The working set of a container of the hello pod, in MiB.
container_cgroup() {
	local cid
	cid=$("$kubectl" -n "$ns" get pod -l app=hello -o json | python3 -c "
import json, sys
for pod in json.load(sys.stdin)['items']:
    if pod['metadata'].get('deletionTimestamp'): continue
    for c in pod['status'].get('containerStatuses', []):
        if c['name'] == '$1' and c.get('containerID'): print(c['containerID'].split('//')[1])")
	find /sys/fs/cgroup/memory/kubepods -maxdepth 3 -type d -name "$cid" | head -n1
}
mem_mib() {
	local usage inactive
	usage=$(cat "$1/memory.usage_in_bytes")
	inactive=$(awk '$1 == "total_inactive_file" {print $2}' "$1/memory.stat")
	echo $(((usage - inactive) >> 20))
}

# transfer_figures PREFIX: 100 MiB up and down through the intercept.
transfer_figures() {
	stop "$local_pid"
	background python3 "$here/transfer.py" serve "$port"
	local server=$!
	sleep 0.3
	echo "${1}_upload_100mib_s $(python3 "$here/transfer.py" up "$ip:80" "$bytes") s"
	echo "${1}_download_100mib_s $(python3 "$here/transfer.py" down "$ip:80" "$bytes") s"
	stop "$server"
	local_hello
	until_answer "hello from local"
}

# intercepted_figures PREFIX AGENT_CONTAINER: the figures taken while intercepting.
intercepted_figures() {
	local cg peak=0 sampler
	cg=$(container_cgroup "$2")
	[[ -n $cg ]] || { say "no cgroup for the $2 container"; exit 1; }
	sleep 2
	echo "${1}_agent_mem_idle_mib $(mem_mib "$cg") MiB"
	wrk_figures "${1}_c1" 1
	(while :; do mem_mib "$cg"; sleep 0.2; done >"$work/mem") &
	sampler=$!
	wrk_figures "${1}_c50" 50
	stop "$sampler"
	peak=$(sort -n "$work/mem" | tail -n1)
	echo "${1}_agent_mem_load_mib $peak MiB"
	transfer_figures "$1"
}

local_hello

# ---- tpr ----
cat >"$work/telepresence.toml" <<TOML
format_version = 1
[cluster]
namespace = "$ns"
[[intercept]]
workload = "hello"
port = "$port:http"
TOML
up_pid=
tpr_up() { (cd "$work" && exec "$tpr" up >"$work/up.out" 2>"$work/up.err") & up_pid=$!; pids+=($up_pid); }
tpr_down() { (cd "$work" && "$tpr" down >/dev/null); wait "$up_pid" 2>/dev/null || true; }

say "tpr: fresh start (installs the agent)"
t0=$(now); tpr_up; until_answer "hello from local"; t1=$(now)
echo "tpr_start_fresh_s $(elapsed "$t0" "$t1") s"
intercepted_figures tpr tpr-agent
ups=() downs=()
for _ in 1 2 3; do
	t0=$(now); tpr_down; until_answer "hello from hello-"; t1=$(now)
	downs+=("$(elapsed "$t0" "$t1")")
	t0=$(now); tpr_up; until_answer "hello from local"; t1=$(now)
	ups+=("$(elapsed "$t0" "$t1")")
done
tpr_down
until_answer "hello from hello-"
echo "tpr_start_warm_s $(median "${ups[@]}") s"
echo "tpr_leave_to_app_s $(median "${downs[@]}") s"
wrk_figures tpr_passthrough_c1 1 | grep -v p99

# ---- Telepresence OSS ----
if [[ -z $tel ]] || ! "$kubectl" get deploy -A 2>/dev/null | grep -q traffic-manager; then
	echo "telepresence: not installed (run ../shared/peers/telepresence/install)"
	exit 0
fi
say "telepresence: removing tpr's agent first"
(cd "$work" && "$tpr" uninstall --all -n "$ns" >/dev/null)
"$kubectl" -n "$ns" rollout status deploy/hello --timeout=120s >/dev/null
until_answer "hello from hello-"
"$tel" connect -n "$ns" >/dev/null
tel_intercept() { "$tel" intercept hello --namespace "$ns" --port "$port:http" >/dev/null; }
tel_leave() { "$tel" leave hello >/dev/null 2>&1 || "$tel" leave "hello-$ns" >/dev/null; }
say "telepresence: fresh intercept (injects the agent)"
t0=$(now); tel_intercept; until_answer "hello from local"; t1=$(now)
echo "tel_start_fresh_s $(elapsed "$t0" "$t1") s"
intercepted_figures tel traffic-agent
ups=() downs=()
for _ in 1 2 3; do
	t0=$(now); tel_leave; until_answer "hello from hello-"; t1=$(now)
	downs+=("$(elapsed "$t0" "$t1")")
	t0=$(now); tel_intercept; until_answer "hello from local"; t1=$(now)
	ups+=("$(elapsed "$t0" "$t1")")
done
tel_leave
until_answer "hello from hello-"
echo "tel_start_warm_s $(median "${ups[@]}") s"
echo "tel_leave_to_app_s $(median "${downs[@]}") s"
wrk_figures tel_passthrough_c1 1 | grep -v p99
"$tel" uninstall --all-agents >/dev/null 2>&1 || true
"$tel" quit >/dev/null 2>&1 || true
