# The control plane (sourced by scripts/cluster): etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler in the network namespace $CP_NS, which also holds the LAN bridge.

make_lan() {
  ip netns add "$CP_NS"
  ip -n "$CP_NS" link set lo up
  ip -n "$CP_NS" link add lan0 type bridge
  ip -n "$CP_NS" addr add "$CP_IP/24" dev lan0
  ip -n "$CP_NS" link set lan0 up
  # The client outside the cluster (NodePort tests): on the LAN, no route to pods.
  ip netns add "$EXT_NS"
  ip -n "$EXT_NS" link set lo up
  ip -n "$CP_NS" link add vext type veth peer name eth0 netns "$EXT_NS"
  ip -n "$CP_NS" link set vext master lan0 up
  ip -n "$EXT_NS" addr add "$EXT_IP/24" dev eth0
  ip -n "$EXT_NS" link set eth0 up
}

start_control_plane() {
  local d="$CLUSTER_ROOT/cp"
  mkdir -p "$d/etcd"
  log "etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
  # fsync off: a throwaway cluster on a shared two-core machine, where etcd's fsync latency
  # otherwise shows up as API timeouts under load.
  daemon etcd cp "$BIN/etcd" --name cp --data-dir "$d/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster cp=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
  daemon kube-apiserver cp "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port="$API_PORT" --advertise-address="$CP_IP" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_for 120 "kube-apiserver" kc get --raw /readyz
  daemon kube-controller-manager cp "$BIN/kube-controller-manager" \
    --kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true --v=1
  daemon kube-scheduler cp "$BIN/kube-scheduler" \
    --kubeconfig="$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
    --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --v=1
  # flanneld runs on each node as a host process (like a systemd unit) with its own identity;
  # these are the permissions flannel's own manifest grants it.
  kc apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: flannel}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [nodes/status]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: flannel}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: flannel}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: flannel}
EOF
}
