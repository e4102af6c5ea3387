# Container images without a registry (sourced by scripts/cluster): built with Debian's buildah
# from Containerfiles, saved as docker archives in $CACHE/images, imported into each node's
# containerd with `ctr -n k8s.io images import` under the exact names the pods ask for.

# buildah keeps its storage in the cache (vfs: no mounts left on the host).
bh() { buildah --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/run" --storage-driver vfs "$@"; }

# build_archive NAME IMAGE CONTAINERFILE CONTEXT: $CACHE/images/NAME.tar holding IMAGE.
build_archive() {
  local name="$1" image="$2" file="$3" ctx="$4" out="$CACHE/images/$1.tar"
  mkdir -p "$CACHE/images"
  bh build --quiet --layers=false -f "$file" -t "$image" "$ctx" >/dev/null
  rm -f "$out.new"
  bh push --quiet "$image" "docker-archive:$out.new:$image" >/dev/null
  bh rmi --force "$image" >/dev/null 2>&1 || true
  mv "$out.new" "$out"
}

# The pause and agnhost images, rebuilt only when their binaries change.
build_test_images() {
  local ctx stamp
  ctx="$(mktemp -d)"
  stamp="$(sha256sum "$CLUSTER_SRC/cluster/images/pause.c" "$BIN/agnhost" | sha256sum | cut -c1-16)"
  if [ "$(cat "$CACHE/images/test-images.stamp" 2>/dev/null)" != "$stamp" ] ||
    [ ! -f "$CACHE/images/pause.tar" ] || [ ! -f "$CACHE/images/agnhost.tar" ]; then
    log "images: $PAUSE_IMAGE (cluster/images/pause.c), $AGNHOST_IMAGE"
    gcc -static -Os -Wall -Wextra -o "$ctx/pause" "$CLUSTER_SRC/cluster/images/pause.c"
    build_archive pause "$PAUSE_IMAGE" "$CLUSTER_SRC/cluster/images/pause.Containerfile" "$ctx"
    mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
    chmod 1777 "$ctx/rootfs/tmp"
    cp "$BIN/agnhost" "$ctx/rootfs/agnhost"
    printf 'root:x:0:0:root:/:/agnhost\nnobody:x:65534:65534:nobody:/:/agnhost\n' >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
    build_archive agnhost "$AGNHOST_IMAGE" "$CLUSTER_SRC/cluster/images/agnhost.Containerfile" "$ctx"
    echo "$stamp" >"$CACHE/images/test-images.stamp"
  fi
  rm -rf "$ctx"
}

# The sluice image from the working tree this script runs in (scripts/build-image), its name in
# $CLUSTER_ROOT/config/sluice-image.
build_sluice_image() {
  local image
  image="$("$CLUSTER_SRC/scripts/build-image" --print-name)"
  echo "$image" >"$CLUSTER_ROOT/config/sluice-image"
}
