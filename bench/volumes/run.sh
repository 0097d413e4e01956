#!/usr/bin/env bash
# Figures of TELEPRESENCE_ROOT (the pod's mounted files copied to the
# workstation) on the test cluster (tests/cluster/up has run, images
# loaded). A hostPath volume on this (single) node holds 1,000 files of
# 51.2 KiB (50 MiB) in 10 directories; the intercept includes it. Prints
# `name value unit`:
#   volumes_initial_copy_s     intercept ACTIVE printed -> "copied 1000 files" printed
#                              (the agent lists and sends, tpr writes; agent installed)
#   volumes_tpr_rss_mib        tpr up's resident memory once the copy is done
#   volumes_tpr_peak_rss_mib   its peak (VmHWM) up to then
#   volumes_tpr_rss_off_mib    for comparison: tpr up's resident memory with
#                              [intercept.volumes] enabled = false, once ACTIVE
#   volumes_change_to_local_s  a file rewritten on the node -> the new content in the
#                              local copy (median of 10); includes the agent's poll
#                              (every 1 s, so 0.5 s on average)
#   volumes_change_after_poll_s  the same minus the mean poll wait (0.5 s): the agent
#                              seeing the change -> the local file replaced
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export KUBECONFIG=${TPR_KUBECONFIG:-/var/lib/tpr-cluster/kubeconfig}
kubectl=/var/cache/tpr-cluster/bin/kubectl
[[ -x $kubectl ]] || kubectl=$repo/tests/cluster/bin/kubectl
# TPR_BIN=path skips the release build (e.g. target/debug/tpr).
tpr=${TPR_BIN:-}
if [[ -z $tpr ]]; then
	(cd "$repo" && cargo build -q -p tpr --release)
	tpr=$repo/target/release/tpr
fi

ns=bench-vol-$RANDOM$RANDOM
work=$(mktemp -d)
data=/var/tmp/tpr-bench-volumes-$ns
up_pid=
cleanup() {
	if [[ -n $up_pid ]]; then kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null || true; fi
	"$kubectl" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work" "$data"
}
trap cleanup EXIT
export HOME=$work/home XDG_CONFIG_HOME=$work/home/config XDG_STATE_HOME=$work/home/state
export XDG_RUNTIME_DIR=$work/run
mkdir -p "$XDG_RUNTIME_DIR"

echo "[bench] writing 1,000 files (50 MiB) to $data" >&2
python3 - "$data" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(10):
    os.makedirs(f"{root}/d{d}", mode=0o755, exist_ok=True)
    for f in range(100):
        with open(f"{root}/d{d}/f{f}", "wb") as out:
            out.write(os.urandom(52428))
os.chmod(root, 0o755)
PY

echo "[bench] namespace $ns: deploying hello with the hostPath volume" >&2
"$kubectl" create namespace "$ns" >/dev/null
"$kubectl" -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: hello
          image: hello:0.1.0
          args: [serve]
          ports: [{name: http, containerPort: 8080}]
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, hostPath: {path: $data, type: Directory}}]
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: http}]
YAML
"$kubectl" -n "$ns" rollout status deploy/hello --timeout=120s >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/src"
cat >"$work/telepresence.toml" <<TOML
format_version = 1
[cluster]
namespace = "$ns"
[[intercept]]
workload = "hello"
port = "$port:http"
[intercept.volumes]
include = ["/data"]
[[process]]
command = ["sleep", "3600"]
env_from = "hello"
watch = ["src"]
TOML

now() { date +%s.%N; }
# Waits until FILE contains TEXT; prints the time it was seen.
seen() {
	local file=$1 text=$2 end=$((SECONDS + 180))
	until grep -q -- "$text" "$file" 2>/dev/null; do
		((SECONDS < end)) || { echo "[bench] timed out waiting for '$text' in $file" >&2; cat "$file" >&2; exit 1; }
		sleep 0.005
	done
	now
}

# A first run installs the agent (the rollout is not what is measured).
(cd "$work" && exec "$tpr" up >"$work/first.out" 2>&1) &
up_pid=$!
seen "$work/first.out" "copied 1000 files" >/dev/null
(cd "$work" && "$tpr" down >/dev/null)
wait "$up_pid" || true
up_pid=
# The same without the copy: what tpr holds anyway.
sed -i 's/^include = \["\/data"\]$/enabled = false/' "$work/telepresence.toml"
(cd "$work" && exec "$tpr" up >"$work/off.out" 2>&1) &
up_pid=$!
seen "$work/off.out" "State                  : ACTIVE" >/dev/null
sleep 1
off=$(awk '/VmRSS/ {print $2}' "/proc/$up_pid/status")
(cd "$work" && "$tpr" down >/dev/null)
wait "$up_pid" || true
up_pid=
sed -i 's/^enabled = false$/include = ["\/data"]/' "$work/telepresence.toml"

out=$work/up.out
(cd "$work" && exec "$tpr" up >"$out" 2>&1) &
up_pid=$!
active=$(seen "$out" "State                  : ACTIVE")
copied=$(seen "$out" "copied 1000 files")
echo "volumes_initial_copy_s $(python3 -c "print(f'{$copied - $active:.2f}')") s"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$up_pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$up_pid/status")
echo "volumes_tpr_rss_mib $(python3 -c "print(f'{$rss / 1024:.1f}')") MiB"
echo "volumes_tpr_peak_rss_mib $(python3 -c "print(f'{$hwm / 1024:.1f}')") MiB"
echo "volumes_tpr_rss_off_mib $(python3 -c "print(f'{$off / 1024:.1f}')") MiB"

root=$(find "$XDG_RUNTIME_DIR/tpr" -maxdepth 1 -name 'volumes-*' | head -1)
[[ -n $root && -f $root/data/d0/f0 ]] || { echo "[bench] no copy under $XDG_RUNTIME_DIR/tpr" >&2; exit 1; }
times=()
for i in $(seq 1 10); do
	sleep 1.3
	# Written beside and renamed, as an application would replace a file.
	printf 'change %s' "$i" >"$data/d5/.new" && mv "$data/d5/.new" "$data/d5/changed"
	start=$(now)
	end=$((SECONDS + 30))
	until [[ $(cat "$root/data/d5/changed" 2>/dev/null) == "change $i" ]]; do
		((SECONDS < end)) || { echo "[bench] change $i never arrived" >&2; exit 1; }
		sleep 0.002
	done
	times+=("$(python3 -c "print($(now) - $start)")")
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 2}')
echo "volumes_change_to_local_s $(python3 -c "print(f'{$median:.2f}')") s"
echo "volumes_change_after_poll_s $(python3 -c "print(f'{max($median - 0.5, 0):.2f}')") s"
