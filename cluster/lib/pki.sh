# The cluster's certificates and kubeconfigs (sourced by scripts/cluster). One CA signs
# everything; every component has its own identity, so the API server's Node and RBAC
# authorizers see what they would see on a kubeadm cluster.

# cert NAME CN ORG EKU [SANS]: a P-256 key and a certificate signed by the cluster CA.
cert() {
  local name="$1" cn="$2" org="$3" eku="$4" sans="${5:-}" subj
  subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig NAME: $PKI/NAME.kubeconfig using the client certificate NAME.
kubeconfig() {
  local name="$1"
  cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sluice
  cluster:
    server: https://$CP_IP:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: sluice
  context: {cluster: sluice, user: $name}
current-context: sluice
EOF
}

make_pki() {
  local nodes="$1" n
  [ -f "$PKI/ca.crt" ] && return 0
  log "certificates"
  mkdir -p "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=sluice-cluster-ca" 2>/dev/null
  # Service account tokens.
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  cert apiserver kube-apiserver "" serverAuth \
    "IP:$CP_IP,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
  cert admin kubernetes-admin system:masters clientAuth
  cert controller-manager system:kube-controller-manager "" clientAuth
  cert scheduler system:kube-scheduler "" clientAuth
  cert kube-proxy system:kube-proxy "" clientAuth
  cert flannel flannel "" clientAuth
  for name in admin controller-manager scheduler kube-proxy flannel; do kubeconfig "$name"; done
  for ((n = 1; n <= nodes; n++)); do
    cert "kubelet-$n" "system:node:$(node_name "$n")" system:nodes clientAuth
    kubeconfig "kubelet-$n"
    cert "kubelet-$n-serving" "$(node_name "$n")" "" serverAuth "IP:$(node_ip "$n"),DNS:$(node_name "$n")"
  done
}
