# Shared settings for tests/cluster/* scripts. Sourced, not run.
# shellcheck shell=bash

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CLUSTER_DIR/../.." && pwd)

STATE=/var/lib/tpr-cluster          # everything `down` removes
CACHE=/var/cache/tpr-cluster        # build outputs kept across runs
BIN=$CACHE/bin
IMAGES=$CACHE/images
LOGS=$STATE/logs
PIDS=$STATE/pids
PKI=$STATE/pki
KUBECONFIG_PATH=$STATE/kubeconfig

# Go caches live under /var/cache so a second run on this machine is warm.
export GOCACHE=${GOCACHE:-$CACHE/gocache}
export GOMODCACHE=${GOMODCACHE:-$CACHE/gomod}
# No VCS stamping: builds must not depend on how the repository was cloned.
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export CGO_ENABLED=0

# Addresses that exist only inside this VM (see README).
NODE_NAME=tpr-node
BRIDGE=tpr0
POD_CIDR=10.244.0.0/16
NODE_IP=10.244.0.1                  # the bridge's own address = the pods' gateway
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local

CONTAINERD_SOCK=$STATE/containerd/containerd.sock

# The ingress controller: Traefik (built by `build`, deployed by `up` in
# namespace ingress, hostNetwork on the node's ports 80 and 443) and its
# TLS material, made once per cluster by `up`: a CA and a wildcard
# certificate for *.$INGRESS_DOMAIN signed by it. Tests make a TLS Secret
# from INGRESS_CERT/INGRESS_KEY and trust INGRESS_CA.
TRAEFIK_VERSION=v3.6.12
INGRESS_DOMAIN=tpr.test
INGRESS_DIR=$STATE/ingress
INGRESS_CA=$INGRESS_DIR/ca.crt
INGRESS_CERT=$INGRESS_DIR/tls.crt
INGRESS_KEY=$INGRESS_DIR/tls.key

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml" | head -n1)

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

k() { "$BIN/k8s" kubectl --kubeconfig "$KUBECONFIG_PATH" --request-timeout=10s "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" "$@"; }

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: polls COMMAND every
# second, printing progress, until it succeeds or the timeout passes.
wait_for() {
	local what=$1 timeout=$2 start=$SECONDS
	shift 2
	printf '[cluster] waiting for %s ' "$what" >&2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS - start >= timeout)); then
			printf ' timed out after %ss\n' "$timeout" >&2
			return 1
		fi
		printf '.' >&2
		sleep 1
	done
	printf ' ok (%ss)\n' "$((SECONDS - start))" >&2
}

# start NAME COMMAND...: runs COMMAND in its own session in the background,
# logging to $LOGS/NAME.log, and records its pid in $PIDS/NAME.
start() {
	local name=$1
	shift
	# 9>&-: the component must not inherit (and so hold forever) the lock.
	setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
	echo $! >"$PIDS/$name"
}

running() { [[ -f $PIDS/$1 ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

# lock: one up/down at a time on this machine (helpers and CI may share it).
# A script run by one that holds the lock (up -> down) does not wait again.
lock() {
	[[ -n ${TPR_CLUSTER_LOCKED:-} ]] && return 0
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock"
	if ! flock -n 9; then
		say "another tests/cluster/up or down is running; waiting for it"
		flock 9
	fi
	export TPR_CLUSTER_LOCKED=1
}
