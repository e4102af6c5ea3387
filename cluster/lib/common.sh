# Shared names, paths and helpers of scripts/cluster (sourced, not run).
#
# The whole cluster lives in network namespaces of its own, so the host namespace's firewall,
# routes and sysctls are never touched:
#   slk-cp    the control plane (etcd, kube-apiserver, controller manager, scheduler) and the
#             "LAN": a bridge lan0 at 172.30.0.1/24 that links everything below
#   slk-nN    node N: containerd, kubelet, flanneld, kube-proxy (and through them the pods and
#             sluice); eth0 at 172.30.0.1N on the LAN
#   slk-ext   a client outside the cluster (172.30.0.100), for the NodePort tests
# Each node also has a mount namespace of its own (see node.sh): kubelet's fixed paths, the CNI
# state and a bpffs instance per node stay out of the host's mount table.

CLUSTER_ROOT="${SLUICE_CLUSTER_ROOT:-/var/lib/sluice-cluster}"
CACHE="${SLUICE_CACHE:-/var/cache/sluice}"
BIN="$CACHE/bin"
K8S_VERSION="${SLUICE_K8S_VERSION:-v1.34.4}"
FLANNEL_VERSION="${SLUICE_FLANNEL_VERSION:-v0.28.4}"

PREFIX=slk
CP_NS="$PREFIX-cp"
EXT_NS="$PREFIX-ext"
LAN_NET=172.30.0
CP_IP="$LAN_NET.1"
EXT_IP="$LAN_NET.100"
POD_CIDR=10.244.0.0/16
# deploy/daemonset.yaml's --service-cidr default: the cluster uses the same range.
SERVICE_CIDR=10.96.0.0/12
KUBERNETES_SVC_IP=10.96.0.1
API_PORT=6443
# The exact names and tags test/utils/image/manifest.go of $K8S_VERSION asks for.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.56

PKI="$CLUSTER_ROOT/pki"
LOGS="$CLUSTER_ROOT/logs"
PIDS="$CLUSTER_ROOT/pids"
ADMIN_KUBECONFIG="$PKI/admin.kubeconfig"

node_name() { echo "$PREFIX-n$1"; }
node_ns() { echo "$PREFIX-n$1"; }
node_ip() { echo "$LAN_NET.1$1"; }
node_dir() { echo "$CLUSTER_ROOT/n$1"; }

log() { echo "cluster: $*" >&2; }
die() {
  echo "cluster: error: $*" >&2
  exit 1
}

# The nsenter prefix for WHERE: cp (the control plane's network namespace) or a node number
# (its network and mount namespaces).
ns_prefix() {
  if [ "$1" = cp ]; then
    echo "nsenter --net=/run/netns/$CP_NS --"
  else
    echo "nsenter --net=/run/netns/$(node_ns "$1") --mount=$(node_dir "$1")/mnt --"
  fi
}
# Runs a command in the control plane's network namespace (where kubectl reaches the API).
in_cp() { $(ns_prefix cp) "$@"; }
# Runs a command inside node N: its network and mount namespaces.
in_node() {
  local n="$1"
  shift
  $(ns_prefix "$n") "$@"
}
kc() { in_cp "$BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# daemon NAME WHERE CMD...: starts CMD detached in WHERE (see ns_prefix), its output in
# $LOGS/NAME.log, its pid in $PIDS/NAME (nsenter execs CMD, so the pid is CMD's).
daemon() {
  local name="$1" where="$2"
  shift 2
  mkdir -p "$LOGS" "$PIDS"
  # shellcheck disable=SC2046
  setsid $(ns_prefix "$where") "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name"
}
daemon_alive() {
  local pid
  pid="$(cat "$PIDS/$1" 2>/dev/null)" || return 1
  kill -0 "$pid" 2>/dev/null
}
# Stops a daemon started by `daemon`: TERM, then KILL after $2 seconds (default 10).
stop_daemon() {
  local name="$1" grace="${2:-10}" pid i
  pid="$(cat "$PIDS/$name" 2>/dev/null)" || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name"
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local secs="$1" what="$2" i
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "timed out after ${secs}s waiting for $what"
}

# The number of nodes of the running cluster (0: none).
running_nodes() { cat "$CLUSTER_ROOT/config/nodes" 2>/dev/null || echo 0; }
