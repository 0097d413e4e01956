#!/usr/bin/env bash
# Outbound (`tpr up`'s processes reaching the cluster through the TUN, the
# userspace stack and the agent's DialOut/Resolve) on the test cluster,
# each figure beside the direct path in the same run. This machine routes
# to pods and Services itself, so "direct" is the same client
# (bench/outbound/client.py) run on the host, outside tpr's namespace;
# "tpr" is it run by `tpr exec -- python3 client.py ...`. Prints `name
# value unit` lines (a target, where there is one, after a `#`):
#   {tpr,direct}_connect_p50_ms, _p99_ms, added_connect_p50_ms
#                         200 sequential TCP connects to a Service's ClusterIP
#                         (connect() returning; tpr's stack may complete the
#                         handshake before the agent has dialled)
#   {tpr,direct}_connect_req_p50_ms, _p99_ms, added_connect_req_p50_ms
#                         200 new connections, each with one `GET /` and its
#                         answer: the agent's dial included
#   {tpr,direct}_http_p50_ms, _p99_ms
#                         200 `GET /` on one keep-alive connection to
#                         examples/hello behind a Service
#   {tpr,direct}_download_mib_s, _upload_mib_s, tpr_*_pct_of_direct
#                         100 MiB (TPR_BENCH_MIB) from hello's /blob, to its
#                         POST /sum
#   portforward_{download,upload}_mib_s, tpr_*_pct_of_portforward
#                         the same transfers through `kubectl port-forward`
#                         to the web pod: the API server's streaming path,
#                         the ceiling of anything that reaches a pod
#                         through it (tpr's agent connection included)
#   {tpr,direct}_dns_cluster_first_p50_ms, _cached_p50_ms
#                         A lookups of Service names (absolute, so one query
#                         each): 20 names never looked up before, then one
#                         name 200 times. tpr: getaddrinfo in the namespace
#                         (tpr's resolver); direct: raw UDP queries from the
#                         host to kube-dns
#   {tpr,direct}_dns_external_first_p50_ms, tpr_dns_external_cached_p50_ms
#                         the same for names only the host's nameserver
#                         knows: a nameserver on 127.0.0.1 (client.py
#                         dns-server) given to tpr by TPR_HOST_NAMESERVERS.
#                         Not an /etc/hosts name: the namespace shares the
#                         host's /etc/hosts, so libc would answer it without
#                         asking tpr's resolver
#   tpr_rss_idle_mib, tpr_rss_200conn_mib
#                         VmRSS of `tpr up` before and while 200 outbound
#                         connections are open
# Settings: TPR_BIN=path (skips the release build), TPR_KUBECONFIG,
# TPR_BENCH_MIB. Needs root (outbound namespaces). Not part of tests/run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/bench/outbound
export KUBECONFIG=${TPR_KUBECONFIG:-/var/lib/tpr-cluster/kubeconfig}
kubectl=/var/cache/tpr-cluster/bin/kubectl
[[ -x $kubectl ]] || kubectl=$repo/tests/cluster/bin/kubectl
hello=/var/cache/tpr-cluster/bin/hello
bytes=$((${TPR_BENCH_MIB:-100} << 20))
n=200
tpr=${TPR_BIN:-}
if [[ -z $tpr ]]; then
	(cd "$repo" && cargo build -q -p tpr --release)
	tpr=$repo/target/release/tpr
fi
tpr=$(realpath "$tpr")

ns=bench-outbound-$RANDOM$RANDOM
work=$(mktemp -d)
pids=()
up_pid=
cleanup() {
	exec 8>&- 2>/dev/null || true
	if [[ -n $up_pid ]] && kill -0 "$up_pid" 2>/dev/null; then
		(cd "$work" && timeout 30 "$tpr" down >/dev/null 2>&1) || true
		kill "$up_pid" 2>/dev/null || true
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	"$kubectl" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export HOME=$work/home XDG_CONFIG_HOME=$work/home/config XDG_STATE_HOME=$work/home/state
say() { printf '[bench] %s\n' "$*" >&2; }
client() { python3 "$here/client.py" "$@"; }
inside() { (cd "$work" && "$tpr" exec -- python3 "$here/client.py" "$@"); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
calc() { python3 -c "print(f'{$1:.${2:-3}f}')"; }

say "namespace $ns: deploying hello (intercepted), web and 40 Services"
"$kubectl" create namespace "$ns" >/dev/null
for f in deployment service; do
	sed "s/namespace: default/namespace: $ns/" "$repo/examples/hello/k8s/$f.yaml" | "$kubectl" apply -f - >/dev/null
done
{
	cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $ns}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {name: web, image: "hello:0.1.0", args: [serve], env: [{name: HELLO_WHO, value: web}], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $ns}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
YAML
	for i in $(seq 0 39); do
		printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: n%s, namespace: %s}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n' "$i" "$ns"
	done
} | "$kubectl" apply -f - >/dev/null
"$kubectl" -n "$ns" rollout status deploy/hello --timeout=120s >/dev/null
"$kubectl" -n "$ns" rollout status deploy/web --timeout=120s >/dev/null
web=$("$kubectl" -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
kube_dns=$("$kubectl" -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}')

dns_port=$(free_port)
python3 "$here/client.py" dns-server "$dns_port" >"$work/dns.out" &
pids+=($!)
port=$(free_port)
cat >"$work/telepresence.toml" <<TOML
format_version = 1
[cluster]
namespace = "$ns"
[[intercept]]
workload = "hello"
port = "$port:http"
[network]
outbound = true
[[process]]
name = "local"
command = ["$hello", "serve"]
env_from = "hello"
env = { PORT = "$port", HELLO_WHO = "local" }
TOML
say "tpr up (outbound, host nameserver 127.0.0.1:$dns_port)"
(cd "$work" && TPR_HOST_NAMESERVERS=127.0.0.1:$dns_port exec "$tpr" up >"$work/up.out" 2>"$work/up.err") &
up_pid=$!
deadline=$(($(date +%s) + 150))
until inside http "$web" 80 1 >/dev/null 2>&1; do
	if ! kill -0 "$up_pid" 2>/dev/null || (($(date +%s) > deadline)); then
		say "tpr up did not get ready; its output:"
		cat "$work/up.out" "$work/up.err" >&2
		exit 1
	fi
	sleep 0.5
done
rss_mib() { awk '$1 == "VmRSS:" {printf "%.1f", $2 / 1024}' "/proc/$up_pid/status"; }
sleep 1
rss_idle=$(rss_mib)

# target NAME VALUE UNIT [TARGET]
figure() { echo "$1 $2 $3${4:+  # target $4}"; }

say "TCP connects"
client connect "$web" 80 20 >/dev/null
inside connect "$web" 80 20 >/dev/null
read -r d50 d99 dr50 dr99 < <(client connect "$web" 80 "$n")
read -r t50 t99 tr50 tr99 < <(inside connect "$web" 80 "$n")
figure tpr_connect_p50_ms "$t50" ms
figure tpr_connect_p99_ms "$t99" ms
figure direct_connect_p50_ms "$d50" ms
figure direct_connect_p99_ms "$d99" ms
figure added_connect_p50_ms "$(calc "$t50 - $d50")" ms "< 2 ms"
figure tpr_connect_req_p50_ms "$tr50" ms
figure tpr_connect_req_p99_ms "$tr99" ms
figure direct_connect_req_p50_ms "$dr50" ms
figure direct_connect_req_p99_ms "$dr99" ms
figure added_connect_req_p50_ms "$(calc "$tr50 - $dr50")" ms

say "HTTP requests"
read -r d50 d99 < <(client http "$web" 80 "$n")
read -r t50 t99 < <(inside http "$web" 80 "$n")
figure tpr_http_p50_ms "$t50" ms
figure tpr_http_p99_ms "$t99" ms
figure direct_http_p50_ms "$d50" ms
figure direct_http_p99_ms "$d99" ms

say "throughput ($((bytes >> 20)) MiB each way)"
dd=$(client down "$web" 80 "$bytes")
td=$(inside down "$web" 80 "$bytes")
du=$(client up "$web" 80 "$bytes")
tu=$(inside up "$web" 80 "$bytes")
figure tpr_download_mib_s "$td" MiB/s
figure direct_download_mib_s "$dd" MiB/s
figure tpr_download_pct_of_direct "$(calc "100 * $td / $dd" 0)" % ">= 25 %"
figure tpr_upload_mib_s "$tu" MiB/s
figure direct_upload_mib_s "$du" MiB/s
figure tpr_upload_pct_of_direct "$(calc "100 * $tu / $du" 0)" % ">= 25 %"
# The ceiling of any path through the API server: `kubectl port-forward`
# to the web pod, the same client on its local port.
pf_port=$(free_port)
web_pod=$("$kubectl" -n "$ns" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
"$kubectl" -n "$ns" port-forward "pod/$web_pod" "$pf_port:8080" >/dev/null 2>&1 &
pids+=($!)
until client http 127.0.0.1 "$pf_port" 1 >/dev/null 2>&1; do sleep 0.2; done
pd=$(client down 127.0.0.1 "$pf_port" "$bytes")
pu=$(client up 127.0.0.1 "$pf_port" "$bytes")
figure portforward_download_mib_s "$pd" MiB/s
figure portforward_upload_mib_s "$pu" MiB/s
figure tpr_download_pct_of_portforward "$(calc "100 * $td / $pd" 0)" %
figure tpr_upload_pct_of_portforward "$(calc "100 * $tu / $pu" 0)" %

say "DNS"
names() { for i in $(seq "$2" "$3"); do printf '%s ' "$1$i.$4."; done; }
read -r tf tc < <(inside resolve "$n" $(names n 0 19 "$ns.svc.cluster.local"))
read -r df dc < <(client query "$kube_dns:53" "$n" $(names n 20 39 "$ns.svc.cluster.local"))
figure tpr_dns_cluster_first_p50_ms "$tf" ms
figure tpr_dns_cluster_cached_p50_ms "$tc" ms "< 0.5 ms"
figure direct_dns_cluster_first_p50_ms "$df" ms
figure direct_dns_cluster_cached_p50_ms "$dc" ms
read -r tf tc < <(inside resolve "$n" $(names e 0 19 bench.test))
read -r df _ < <(client query "127.0.0.1:$dns_port" 2 $(names e 20 39 bench.test))
figure tpr_dns_external_first_p50_ms "$tf" ms
figure tpr_dns_external_cached_p50_ms "$tc" ms "< 0.5 ms"
figure direct_dns_external_first_p50_ms "$df" ms

say "$n open connections"
mkfifo "$work/hold.in"
inside hold "$web" 80 "$n" <"$work/hold.in" >"$work/hold.out" 2>&1 &
pids+=($!)
exec 8>"$work/hold.in"
deadline=$(($(date +%s) + 60))
until grep -q ready "$work/hold.out"; do
	if (($(date +%s) > deadline)) || ! kill -0 "${pids[-1]}" 2>/dev/null; then
		say "the $n connections did not open:"
		cat "$work/hold.out" >&2
		exit 1
	fi
	sleep 0.2
done
sleep 1
figure tpr_rss_idle_mib "$rss_idle" MiB
figure tpr_rss_200conn_mib "$(rss_mib)" MiB "< 60 MiB"
exec 8>&-
wait "${pids[-1]}" 2>/dev/null || true
if grep -q "outbound via intercept" "$work/up.out" "$work/up.err"; then
	say "tpr up reported failures:"
	grep -h "outbound via intercept" "$work/up.out" "$work/up.err" | sort | uniq -c | head -n 20 >&2
fi
