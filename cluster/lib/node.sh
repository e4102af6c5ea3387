# A node (sourced by scripts/cluster): a network namespace linked to the LAN, a mount
# namespace of its own, and containerd, kubelet, flanneld and kube-proxy running in both.

# Paths kubelet, containerd and the CNI plugins use whatever they are told (kubelet's
# device-plugins socket, /var/log/containers, the shims' sockets under /run/containerd/s,
# host-local's leases): each node binds a directory of its own over them, inside its own mount
# namespace, so two nodes never share them and the host's never change.
NODE_BINDS=(/var/lib/kubelet /var/lib/containerd /run/containerd /var/lib/cni /var/log/pods
  /var/log/containers /etc/cni/net.d /run/flannel)

# Every cgroup v1 hierarchy (and the v2 one of the hybrid layout, where runc also writes).
cgroup_hierarchies() {
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts
}

make_node_netns() {
  local n="$1" ns ip
  ns="$(node_ns "$n")"
  ip="$(node_ip "$n")"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$CP_NS" link add "vn$n" type veth peer name eth0 netns "$ns"
  ip -n "$CP_NS" link set "vn$n" master lan0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$CP_IP"
  # A node routes its pods' traffic, and bridged pod traffic must meet the ip-family hooks
  # (kube-proxy's DNAT, sluice's chains). Both settings are per network namespace.
  nsenter --net="/run/netns/$ns" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.bridge.bridge-nf-call-ip6tables=1
}

make_node_mntns() {
  local n="$1" d p
  d="$(node_dir "$n")"
  for p in "${NODE_BINDS[@]}"; do
    mkdir -p "$d/fs$p"
    if [ ! -e "$p" ]; then
      mkdir -p "$p"
      echo "$p" >>"$CLUSTER_ROOT/created-dirs"
    fi
  done
  touch "$d/mnt"
  unshare --mount="$d/mnt" --propagation private true
  # The copy of the host's mount table holds other namespaces' nsfs and bpffs mounts, which
  # would keep those namespaces and pins alive after their owners delete them: drop them.
  # Then a bpffs of the node's own (shared, as mountPropagation: HostToContainer needs), and
  # the node's directories over the fixed paths.
  nsenter --mount="$d/mnt" -- bash -euc '
    findmnt -rn -t nsfs,bpf -o TARGET | sort -r | while read -r t; do umount -l "$t"; done
    mount -t bpf bpffs /sys/fs/bpf
    mount --make-shared /sys/fs/bpf
    d="$1"; shift
    for p in "$@"; do mount --bind "$d/fs$p" "$p"; done
  ' _ "$d" "${NODE_BINDS[@]}"
}

make_node_cgroups() {
  local n="$1" h root
  root="$(node_name "$n")"
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h/$root"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$root/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$root/cpuset.mems"
    fi
  done
}

write_node_configs() {
  local n="$1" d name
  d="$(node_dir "$n")"
  name="$(node_name "$n")"
  cat >"$d/containerd.toml" <<EOF
version = 2
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: without this runc cannot give the sandbox a negative
  # oom_score_adj and every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  # Pod network namespaces under the node's own /run/containerd, not the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
EOF
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine is cgroup v1 (hybrid): kubelet 1.34 refuses it unless told not to.
failCgroupV1: false
cgroupDriver: cgroupfs
# Each node's pods under a cgroup of its own, created in every hierarchy beforehand.
cgroupRoot: /$name
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
tlsCertFile: $PKI/kubelet-$n-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-$n-serving.key
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDomain: cluster.local
# No CAP_SYS_RESOURCE: a negative score cannot be set.
oomScoreAdj: 0
# The pre-imported images must never be collected (there is no registry to pull them again),
# and a busy shared disk must not evict the test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
serializeImagePulls: false
EOF
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: $(cat "$CLUSTER_ROOT/config/proxy-mode")
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $name
clusterCIDR: $POD_CIDR
oomScoreAdj: 0
# Zero leaves the conntrack sysctls as they are: nf_conntrack_max is not per namespace.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
EOF
}

start_containerd() {
  local n="$1"
  daemon "n$n-containerd" "$n" containerd --config "$(node_dir "$n")/containerd.toml"
  wait_for 60 "containerd on $(node_name "$n")" in_node "$n" ctr --address /run/containerd/containerd.sock version
}

start_kubelet() {
  local n="$1"
  daemon "n$n-kubelet" "$n" "$BIN/kubelet" --config "$(node_dir "$n")/kubelet.yaml" \
    --kubeconfig "$PKI/kubelet-$n.kubeconfig" --hostname-override "$(node_name "$n")" \
    --node-ip "$(node_ip "$n")" --v=1
}

start_flanneld() {
  local n="$1"
  daemon "n$n-flanneld" "$n" env NODE_NAME="$(node_name "$n")" "$BIN/flanneld" \
    --kube-subnet-mgr --kubeconfig-file="$PKI/flannel.kubeconfig" --iface=eth0 --ip-masq \
    --net-config-path="$CLUSTER_ROOT/net-conf.json"
}

start_kube_proxy() {
  local n="$1"
  daemon "n$n-kube-proxy" "$n" "$BIN/kube-proxy" --config "$(node_dir "$n")/kube-proxy.yaml" --v=1
}

# What flannel's CNI plugin would hand its delegate, from the subnet.env flanneld wrote:
# a bridge cni0 with host-local addresses from the node's subnet, no masquerade from the
# bridge when flanneld masquerades (FLANNEL_IPMASQ=true), hairpin on, the pod's default route
# via the bridge; then portmap. (The flannel CNI plugin's module is not served here.)
write_cni_conf() {
  local n="$1" env dir
  env="$(in_node "$n" cat /run/flannel/subnet.env)"
  dir="$(node_dir "$n")/fs/etc/cni/net.d"
  # Written aside and renamed: containerd reloads on every write event.
  python3 - "$env" >"$dir/.10-flannel.conflist.tmp" <<'PY'
import ipaddress, json, sys
env = dict(l.split("=", 1) for l in sys.argv[1].split() if "=" in l)
subnet = ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network
conf = {
    "cniVersion": "0.3.1",
    "name": "cbr0",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "isDefaultGateway": True,
            "hairpinMode": True,
            "ipMasq": env.get("FLANNEL_IPMASQ") != "true",
            "mtu": int(env["FLANNEL_MTU"]),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(subnet)}]],
                "routes": [{"dst": env["FLANNEL_NETWORK"]}],
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
json.dump(conf, sys.stdout, indent=2)
print()
PY
  mv "$dir/.10-flannel.conflist.tmp" "$dir/10-flannel.conflist"
}

import_image() { # import_image N ARCHIVE
  in_node "$1" ctr --address /run/containerd/containerd.sock -n k8s.io images import "$2" >/dev/null
}
node_has_image() { # node_has_image N NAME
  in_node "$1" ctr --address /run/containerd/containerd.sock -n k8s.io images ls -q 2>/dev/null | grep -qxF "$2"
}

start_node() {
  local n="$1"
  make_node_netns "$n"
  make_node_mntns "$n"
  make_node_cgroups "$n"
  write_node_configs "$n"
  start_containerd "$n"
  import_image "$n" "$CACHE/images/pause.tar"
  import_image "$n" "$CACHE/images/agnhost.tar"
  start_kubelet "$n"
  start_kube_proxy "$n"
}

has_pod_cidr() { [ -n "$(kc get node "$(node_name "$1")" -o jsonpath='{.spec.podCIDR}' 2>/dev/null)" ]; }

# The pod network of node N: flanneld exits when the node has no podCIDR yet (as a DaemonSet
# pod it would be restarted), so it starts once the controller manager has allocated one; the
# CNI configuration follows from the subnet it writes.
start_node_network() {
  local n="$1"
  wait_for 120 "$(node_name "$n") registered with a podCIDR" has_pod_cidr "$n"
  start_flanneld "$n"
  wait_for 120 "flanneld's subnet on $(node_name "$n")" in_node "$n" test -s /run/flannel/subnet.env
  write_cni_conf "$n"
}

# The pids of every process of node N: in its network or mount namespace (the daemons,
# containerd's shims, hostNetwork containers) or in its cgroups (the pods' containers).
node_pids() {
  local n="$1" netino mntino p h
  netino="$(stat -L -c %i "/run/netns/$(node_ns "$n")" 2>/dev/null || echo none)"
  mntino="$(stat -L -c %i "$(node_dir "$n")/mnt" 2>/dev/null || echo none)"
  {
    for p in /proc/[0-9]*; do
      [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$netino" ] && echo "${p#/proc/}"
      [ "$(stat -L -c %i "$p/ns/mnt" 2>/dev/null)" = "$mntino" ] && echo "${p#/proc/}"
    done
    for h in $(cgroup_hierarchies); do
      [ -d "$h/$(node_name "$n")" ] && find "$h/$(node_name "$n")" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
  } | sort -un | grep -vx "$$" || true
}

kill_pids() { # kill_pids SIGNAL PID...
  local sig="$1"
  shift
  [ $# -gt 0 ] && kill "-$sig" "$@" 2>/dev/null || true
}

stop_node() {
  local n="$1" d name h i pids s
  d="$(node_dir "$n")"
  name="$(node_name "$n")"
  for s in kube-proxy flanneld kubelet containerd; do stop_daemon "n$n-$s" 5; done
  for i in 1 2 3 4 5 6 7 8 9 10; do
    pids="$(node_pids "$n")"
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    if [ "$i" -lt 4 ]; then kill_pids TERM $pids; else kill_pids KILL $pids; fi
    sleep 0.5
  done
  [ -z "$(node_pids "$n")" ] || log "warning: processes of $name still running: $(node_pids "$n" | tr '\n' ' ')"
  # With no process left in it, the mount namespace (and with it the node's bpffs, container
  # rootfs and pod netns mounts) goes when its last reference, this bind, is removed.
  if [ -e "$d/mnt" ]; then
    umount "$d/mnt" 2>/dev/null || true
    rm -f "$d/mnt"
  fi
  ip netns del "$(node_ns "$n")" 2>/dev/null || true
  for h in $(cgroup_hierarchies); do
    [ -d "$h/$name" ] || continue
    for i in 1 2 3 4 5 6 7 8 9 10; do
      find "$h/$name" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$h/$name" ] || break
      sleep 0.5
    done
    [ -d "$h/$name" ] && log "warning: cgroup $h/$name could not be removed"
  done
  return 0
}
