# scripts/upstream-e2e --cnp (sourced after common.sh): the network-policy-api v0.3.0
# ClusterNetworkPolicy conformance suite, unmodified, against sluice on the real cluster.
#
#   1. the suite's Go test binary: `go test -c ./conformance` in a writable copy of the module
#      directory (scripts/fetch-network-policy-api; dependencies at the exact versions of its
#      go.sum, from the Go module proxy) -> $BIN/cnp-conformance.test, rebuilt when missing;
#   2. its image: the base manifests ask for agnhost:2.45 and run `/bin/bash -c "/agnhost ..."`;
#      cluster/images/agnhost-cnp.Containerfile makes that tag from the cluster's agnhost build
#      plus a static bash, imported into every node's containerd;
#   3. the CRDs of the module's config/crd (see CNP_CHANNEL), waited for until Established;
#   4. TestConformanceProfiles with profile ClusterNetworkPolicy and CNP_FEATURES, its
#      ConformanceReport YAML and a per-test table in $out (and in docs/conformance/ with --record).

# What sluice claims, one feature a line (claimed = implemented). The profile's standard
# feature `ClusterNetworkPolicy` comes with the profile and needs no flag.
CNP_FEATURES=(
  # Named ports in CNP rules: the oracle and compile resolve them on the destination pod.
  ClusterNetworkPolicyNamedPorts
  # Not claimed: ClusterNetworkPolicyEgressNodePeers. `nodes` peers are not implemented (a rule
  # with one fails closed), so its tests are skipped and reported as unsupported.
  # Not a suite feature: `domainNames` peers, also not implemented and never tested by v0.3.0.
)
# The experimental channel is a superset of the standard one and is what carries named ports.
CNP_CHANNEL=experimental
# SCTP: this kernel has no SCTP sockets. The suite has no feature or flag to leave its SCTP
# tests out (and go test's -test.skip would record a skipped test as passed in the report), so
# they run; the SCTP servers idle (cluster/images/agnhost-cnp-shim) and every SCTP probe fails.
# The per-test table marks those results as not meaningful.
CNP_SCTP_NOTE="not meaningful: this kernel has no SCTP sockets (SCTP servers idle, every SCTP probe fails)"
CNP_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.45
GO=/usr/local/go/bin/go

cnp_build_suite() {
  local mod src
  mod="$("$CLUSTER_SRC/scripts/fetch-network-policy-api")"
  if [ -x "$BIN/cnp-conformance.test" ] && [ "$(cat "$BIN/cnp-conformance.test.from" 2>/dev/null)" = "$mod" ]; then
    return
  fi
  src="$CACHE/npapi-build/src"
  log "cnp: go test -c ./conformance in a copy of $mod (unmodified)"
  rm -rf "$src"
  mkdir -p "$CACHE/npapi-build"
  cp -r "$mod" "$src"
  chmod -R u+w "$src"
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=mod "$GO" test -c -o "$BIN/cnp-conformance.test" ./conformance)
  echo "$mod" >"$BIN/cnp-conformance.test.from"
}

cnp_image() {
  local ctx stamp nodes n
  stamp="$(sha256sum "$BIN/agnhost" /bin/bash-static "$CLUSTER_SRC/cluster/images/agnhost-cnp-shim" \
    "$CLUSTER_SRC/cluster/images/agnhost-cnp.Containerfile" | sha256sum | cut -c1-16)"
  if [ "$(cat "$CACHE/images/agnhost-cnp.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -f "$CACHE/images/agnhost-cnp.tar" ]; then
    [ -x /bin/bash-static ] || die "cnp: /bin/bash-static missing (apt-get install bash-static)"
    log "cnp: image $CNP_IMAGE"
    ctx="$(mktemp -d)"
    mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/etc" "$ctx/rootfs/bin"
    chmod 1777 "$ctx/rootfs/tmp"
    cp "$BIN/agnhost" "$ctx/rootfs/agnhost-bin"
    cp "$CLUSTER_SRC/cluster/images/agnhost-cnp-shim" "$ctx/rootfs/agnhost"
    cp /bin/bash-static "$ctx/rootfs/bin/bash"
    ln -s bash "$ctx/rootfs/bin/sh"
    printf 'root:x:0:0:root:/:/bin/bash\nnobody:x:65534:65534:nobody:/:/bin/bash\n' >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
    build_archive agnhost-cnp "$CNP_IMAGE" "$CLUSTER_SRC/cluster/images/agnhost-cnp.Containerfile" "$ctx"
    rm -rf "$ctx"
    echo "$stamp" >"$CACHE/images/agnhost-cnp.stamp"
  fi
  nodes="$(cat "$CLUSTER_ROOT/config/nodes")"
  for ((n = 1; n <= nodes; n++)); do import_image "$n" "$CACHE/images/agnhost-cnp.tar"; done
}

cnp_crds() {
  local mod="$1"
  log "cnp: CRDs from $mod/config/crd/$CNP_CHANNEL"
  kc apply --server-side --force-conflicts -f "$mod/config/crd/$CNP_CHANNEL/policy.networking.k8s.io_clusternetworkpolicies.yaml" >/dev/null
  kc wait --for=condition=Established --timeout=60s crd/clusternetworkpolicies.policy.networking.k8s.io >/dev/null
}

# cnp_run OUT: runs the suite, writes OUT/{test.log,report.yaml,summary.md,counts}.
cnp_run() {
  local out="$1" mod rc features commit url
  mod="$("$CLUSTER_SRC/scripts/fetch-network-policy-api")"
  cnp_build_suite
  cnp_image
  cnp_crds "$mod"
  features="$(IFS=,; echo "${CNP_FEATURES[*]}")"
  commit="$(git -C "$CLUSTER_SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$CLUSTER_SRC" diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
  url="${SLUICE_URL:-$(git -C "$CLUSTER_SRC" remote get-url origin 2>/dev/null || echo "local:sluice")}"
  log "cnp: TestConformanceProfiles --conformance-profiles=ClusterNetworkPolicy --supported-features=$features -> $out"
  set +e
  in_cp env KUBECONFIG="$ADMIN_KUBECONFIG" HOME="$out" "$BIN/cnp-conformance.test" \
    -test.run '^TestConformanceProfiles$' -test.v -test.timeout 3h \
    -conformance-profiles=ClusterNetworkPolicy -supported-features="$features" \
    -organization=sluice -project=sluice -url="$url" -version="$commit" \
    -contact="${SLUICE_CONTACT:-the sluice maintainers}" \
    -additional-info="scripts/upstream-e2e --cnp on the local cluster (docs/cluster.md)" \
    -report-output="$out/report.yaml" >"$out/test.log" 2>&1
  rc=$?
  set -e
  python3 "$CLUSTER_SRC/cluster/lib/cnp-e2e-table.py" "$out" "$CNP_SCTP_NOTE" "$features" "$commit" \
    "$K8S_VERSION" "$CNP_CHANNEL"
  return $rc
}
