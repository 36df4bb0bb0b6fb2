#!/usr/bin/env bash
# Builds the kind node image offline, from what this machine can build itself: no registry is contacted.
#
#   mtls-operator.local/kind-node:<kubernetes version>-<stamp>
#
# The stamp hashes the pins (hack/kube, hack/coredns, hack/pause, hack/etcd, hack/kind) and what goes into the image
# from this folder (build.sh, rootfs.sh, files/, manifests/; not the docker wrapper or the smoke test). An image with
# that tag in docker means there is nothing to do. Otherwise, with a timed line per step:
#   binaries    hack/build-bins.sh kube node etcd (cached there)
#   rootfs      debootstrap bookworm with kind's base packages + Debian's containerd/runc/CNI plugins (rootfs.sh),
#               cached under $MTLS_CACHE_DIR/node-image (default ~/.cache/mtls-operator/node-image), keyed by rootfs.sh
#   node-base   kind's images/base files and systemd setup, our entrypoint wrapper, the Kubernetes binaries in /usr/bin
#   images      every image `kubeadm config images list` names, under exactly that name, FROM scratch; plus the CNI image
#   preload     the images imported into the node's containerd (one archive each, pinned), then committed
#
# stdout is only the image name (for callers); progress goes to stderr. Needs root (debootstrap) and a docker engine.
#
# usage: hack/node-image/build.sh [--tag]   (--tag: print the image name that the current pins give, build nothing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hack="$(dirname "$here")"
cache="${MTLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}/node-image"
repo=mtls-operator.local

log() { echo "node-image: $*" >&2; }
die() { echo "node-image: error: $*" >&2; exit 1; }

step() { # step NAME COMMAND...: runs a build step and reports its duration
	local name="$1" start=$SECONDS
	shift
	log "==> $name"
	"$@"
	log "<== $name: $((SECONDS - start)) s"
}

kube_version() { # the k8s.io/kubernetes version pinned in hack/kube/go.mod
	awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 } $1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' \
		"$hack/kube/go.mod" | head -n1
}

stamp() { # hash of every input that decides the image's content (not the docker wrapper or the smoke test)
	local f
	for f in "$hack"/kube/go.mod "$hack"/coredns/go.mod "$hack"/coredns/main.go "$hack"/pause/* "$hack"/etcd/go.mod \
		"$hack"/kind/go.mod $(cd "$here" && find build.sh rootfs.sh files manifests -type f | LC_ALL=C sort); do
		[[ "$f" == /* ]] || f="$here/$f"
		echo "== ${f#"$hack"/}"
		cat "$f"
	done | sha256sum | cut -c1-12
}

kver="$(kube_version)"
[[ -n "$kver" ]] || die "cannot read the k8s.io/kubernetes version from $hack/kube/go.mod"
image="$repo/kind-node:$kver-$(stamp)"

if [[ "${1:-}" == "--tag" ]]; then
	echo "$image"
	exit 0
fi
[[ $# -eq 0 ]] || die "usage: build.sh [--tag]"

docker info >/dev/null 2>&1 || die "no running docker engine (docker info failed); start dockerd first"
if [[ -n "$(docker images -q "$image")" ]]; then
	log "$image is up to date"
	echo "$image"
	exit 0
fi
[[ $EUID -eq 0 ]] || die "building the node image needs root (debootstrap); or set KIND_NODE_IMAGE to an existing image"

total_start=$SECONDS
log "building $image"
mkdir -p "$cache"
work="$(mktemp -d "$cache/work.XXXXXX")"
container=""
cleanup() {
	[[ -z "$container" ]] || docker rm -f "$container" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# ---- binaries -------------------------------------------------------------------------------------------------------
bin_dir="$("$hack/bin-dir.sh")"
binaries() {
	"$hack/build-bins.sh" kube node etcd >&2
	local b v
	for b in kube-apiserver kube-controller-manager etcd node/kubelet node/kubeadm node/kube-proxy node/kube-scheduler \
		node/kubectl node/coredns node/pause; do
		[[ -x "$bin_dir/$b" ]] || die "missing $bin_dir/$b after hack/build-bins.sh"
	done
	# kube-apiserver/-controller-manager ("kube") and the node binaries ("node") are separate stamps: they must agree
	for b in kube-apiserver node/kubelet; do
		v="$("$bin_dir/$b" --version | awk '{ print $2 }')"
		[[ "$v" == "$kver" ]] || die "$bin_dir/$b is $v, hack/kube pins $kver: run hack/build-bins.sh kube node"
	done
}
step binaries binaries

# ---- rootfs ---------------------------------------------------------------------------------------------------------
rootfs_key="$(sha256sum "$here/rootfs.sh" | cut -c1-12)"
rootfs="$cache/rootfs-$rootfs_key"
rootfs_image="$repo/kind-node-rootfs:$rootfs_key"
build_rootfs() {
	if [[ -d "$rootfs" ]]; then
		log "debootstrap: cached in $rootfs"
	else
		rm -rf "$rootfs.tmp"
		local start=$SECONDS
		"$here/rootfs.sh" "$rootfs.tmp"
		mv "$rootfs.tmp" "$rootfs"
		log "debootstrap: $((SECONDS - start)) s"
		# rootfs trees of older package lists are dead weight now
		find "$cache" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$rootfs_key" -exec rm -rf {} +
	fi
	if [[ -z "$(docker images -q "$rootfs_image")" ]]; then
		tar -C "$rootfs" --numeric-owner -cf - . | docker import - "$rootfs_image" >/dev/null
	fi
}
step rootfs build_rootfs

# ---- component images -----------------------------------------------------------------------------------------------
mapfile -t kubeadm_images < <("$bin_dir/node/kubeadm" config images list --kubernetes-version "$kver")
[[ ${#kubeadm_images[@]} -gt 0 ]] || die "kubeadm config images list printed nothing"
pause_image=""
for i in "${kubeadm_images[@]}"; do [[ "$i" != */pause:* ]] || pause_image="$i"; done
[[ -n "$pause_image" ]] || die "kubeadm lists no pause image: ${kubeadm_images[*]}"
busybox_version="$(dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Version}' busybox-static)"
busybox_version="$(sed -e 's/^[0-9]*://' <<<"$busybox_version" | tr -c 'A-Za-z0-9_.\n-' '-')" # an image tag: no epoch, no +
cni_image="$repo/busybox:$busybox_version"
static_base="$repo/kind-static-base:$rootfs_key"

docker_build() { # docker_build TAG CONTEXT: the classic builder works offline (BuildKit wants to resolve FROM scratch)
	local out="$work/docker-build.log"
	DOCKER_BUILDKIT=0 docker build -t "$1" "$2" >"$out" 2>&1 || { cat "$out" >&2; die "docker build of $1 failed"; }
}

package_closure() { # package_closure PKG... -> the packages and everything they depend on, from the rootfs's dpkg db
	local -A seen=()
	local queue=("$@") p deps d
	while [[ ${#queue[@]} -gt 0 ]]; do
		p="${queue[0]}"
		queue=("${queue[@]:1}")
		[[ -z "${seen[$p]:-}" ]] || continue
		seen[$p]=1
		echo "$p"
		deps="$(dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Pre-Depends},${Depends}' "$p")"
		# "a (>= 1) | b, c:any" -> a c  (the first alternative is the one installed in our rootfs)
		for d in $(tr ',' '\n' <<<"$deps" | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/[[:space:]]//g'); do
			[[ -n "$d" ]] && queue+=("$d")
		done
	done
}

proxy_rootfs() { # proxy_rootfs DEST: a trimmed copy of the rootfs with iptables/nft/conntrack, for kube-proxy
	local dest="$1" p list files="$work/proxy-files"
	mkdir -p "$dest/usr/bin" "$dest/usr/sbin" "$dest/usr/lib" "$dest/usr/lib64" "$dest/usr/local/bin"
	# keep Debian's merged-/usr layout, so files listed under /lib and /usr/lib land in one place
	cp -a "$rootfs/bin" "$rootfs/sbin" "$rootfs/lib" "$rootfs/lib64" "$dest/"
	: >"$files"
	for p in $(package_closure iptables nftables conntrack); do
		list="$rootfs/var/lib/dpkg/info/$p.list"
		[[ -f "$list" ]] || list="$rootfs/var/lib/dpkg/info/$p:amd64.list"
		[[ -f "$list" ]] || die "no dpkg file list for $p in $rootfs"
		grep -v -E '^/usr/share/(doc|man|info|lintian|locale|bug)(/|$)' "$list" >>"$files" || true
	done
	# regular files and symlinks only (tar creates the parents); directories would pull in their whole trees
	(cd "$rootfs" && while read -r f; do
		if [[ -L ".$f" ]] || [[ -e ".$f" && ! -d ".$f" ]]; then echo ".$f"; fi
	done <"$files") | sort -u >"$files.existing"
	tar -C "$rootfs" --no-recursion -cf - -T "$files.existing" | tar -C "$dest" --keep-directory-symlink -xf -
	# a shell and the few tools the iptables wrapper needs
	cp "$rootfs/usr/bin/busybox" "$dest/usr/bin/busybox"
	for p in sh grep ln mv; do [[ -e "$dest/usr/bin/$p" ]] || ln -s busybox "$dest/usr/bin/$p"; done
	install -m 0755 "$here/files/iptables-wrapper" "$dest/usr/sbin/iptables-wrapper"
	for p in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sf iptables-wrapper "$dest/usr/sbin/$p"
	done
}

component_images() {
	local ctx="$work/images" i name dockerfile
	mkdir -p "$ctx/base/rootfs/etc/ssl/certs" "$ctx/base/rootfs/tmp" "$work/archives"
	# the small shared layer: users, name service, CA bundle, a sticky /tmp
	cat >"$ctx/base/rootfs/etc/passwd" <<-EOF
		root:x:0:0:root:/root:/sbin/nologin
		nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
		nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
	EOF
	cat >"$ctx/base/rootfs/etc/group" <<-EOF
		root:x:0:
		nogroup:x:65534:
		nonroot:x:65532:
	EOF
	echo "hosts: files dns" >"$ctx/base/rootfs/etc/nsswitch.conf"
	cp -L "$rootfs/etc/ssl/certs/ca-certificates.crt" "$ctx/base/rootfs/etc/ssl/certs/"
	chmod 1777 "$ctx/base/rootfs/tmp"
	printf 'FROM scratch\nCOPY rootfs/ /\n' >"$ctx/base/Dockerfile"
	docker_build "$static_base" "$ctx/base"

	for i in "${kubeadm_images[@]}" "$cni_image"; do
		name="${i##*/}"
		name="${name%%:*}"
		mkdir -p "$ctx/$name"
		dockerfile="FROM $static_base"$'\n'
		case "$name" in
		kube-apiserver | kube-controller-manager | etcd)
			cp "$bin_dir/$name" "$ctx/$name/" ;;
		kube-scheduler)
			cp "$bin_dir/node/$name" "$ctx/$name/" ;;
		kube-proxy) # kubeadm's DaemonSet runs /usr/local/bin/kube-proxy, which runs iptables by name
			proxy_rootfs "$ctx/$name/rootfs"
			cp "$bin_dir/node/kube-proxy" "$ctx/$name/rootfs/usr/local/bin/"
			dockerfile="FROM scratch"$'\n'"COPY rootfs/ /"$'\n'
			dockerfile+="COPY --from=$static_base /etc/passwd /etc/group /etc/nsswitch.conf /etc/"$'\n' ;;
		coredns | pause) # their manifests run the image's entrypoint
			cp "$bin_dir/node/$name" "$ctx/$name/"
			dockerfile+="COPY $name /$name"$'\n'"ENTRYPOINT [\"/$name\"]"$'\n' ;;
		busybox)
			cp "$rootfs/usr/bin/busybox" "$ctx/$name/"
			dockerfile+="COPY busybox /bin/busybox"$'\n'"RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]"$'\n' ;;
		*)
			die "kubeadm wants an image this script does not know how to build: $i" ;;
		esac
		case "$name" in # kubeadm's static pods run the binaries by name
		kube-apiserver | kube-controller-manager | kube-scheduler | etcd)
			dockerfile+="COPY $name /usr/local/bin/$name"$'\n' ;;
		esac
		dockerfile+="ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"$'\n'
		printf '%s' "$dockerfile" >"$ctx/$name/Dockerfile"
		docker_build "$i" "$ctx/$name"
		# one archive per image: ctr import of a multi-image archive loses names
		docker save -o "$work/archives/$name.tar" "$i"
		log "  $i ($(du -m "$work/archives/$name.tar" | cut -f1) MB)"
	done
}
step images component_images

# ---- node image -----------------------------------------------------------------------------------------------------
node_pre="$repo/kind-node-pre:$kver-$(stamp)"
node_base() {
	local ctx="$work/node" kind_base f
	kind_base="$(cd "$hack/kind" && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)/images/base/files"
	[[ -d "$kind_base" ]] || die "kind's base image files not found at $kind_base (go mod download in hack/kind)"
	mkdir -p "$ctx/kind" "$ctx/bin" "$ctx/kind/kind/manifests"
	# kind's images/base/files, laid out as in the image: 0755 scripts, 0644 the rest (as kind's Dockerfile does)
	cp -r "$kind_base"/. "$ctx/kind/"
	chmod -R u+w "$ctx/kind"
	find "$ctx/kind" -type d -exec chmod 0755 {} +
	find "$ctx/kind" -type f -exec chmod 0644 {} +
	chmod 0755 "$ctx/kind/usr/local/bin/"* "$ctx/kind/kind/bin/"*
	install -m 0755 "$here/files/mtls-node-entrypoint" "$ctx/kind/usr/local/bin/mtls-node-entrypoint"
	# containerd 1.6 (Debian) reads kind's version-2 config; the sandbox image is the pause kubeadm names
	sed -i "s#^\([[:space:]]*sandbox_image = \).*#\1\"$pause_image\"#" "$ctx/kind/etc/containerd/config.toml"
	grep -q "sandbox_image = \"$pause_image\"" "$ctx/kind/etc/containerd/config.toml" ||
		die "could not set sandbox_image in kind's containerd config"
	sed "s#@CNI_IMAGE@#$cni_image#" "$here/manifests/default-cni.yaml" >"$ctx/kind/kind/manifests/default-cni.yaml"
	cp "$here/manifests/default-storage.yaml" "$ctx/kind/kind/manifests/"
	chmod 0644 "$ctx/kind/kind/manifests/"*
	echo "$kver" >"$ctx/kind/kind/version"
	chmod 0644 "$ctx/kind/kind/version"
	for f in kubelet kubeadm kubectl kube-proxy kube-scheduler; do cp "$bin_dir/node/$f" "$ctx/bin/"; done
	cat >"$ctx/Dockerfile" <<-EOF
		FROM $rootfs_image
		COPY kind/ /
		# kind's base setup (images/base/Dockerfile): no services but ours, systemd as init, kubelet/containerd enabled.
		# Debian puts containerd in /usr/bin and the CNI plugins in /usr/lib/cni; kind expects /usr/local/bin, /opt/cni/bin.
		RUN set -eux; \\
		    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete; \\
		    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
		        /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
		        /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \\
		    echo "ReadKMsg=no" >> /etc/systemd/journald.conf; \\
		    ln -sf /usr/lib/systemd/systemd /sbin/init; \\
		    sed -i 's#/usr/local/bin/containerd#/usr/bin/containerd#' /etc/systemd/system/containerd.service; \\
		    systemctl enable kubelet.service containerd.service undo-mount-hacks.service; \\
		    systemctl mask systemd-binfmt.service; \\
		    mkdir -p /etc/kubernetes/manifests /opt/cni/bin; \\
		    ln -sf /usr/lib/cni/* /opt/cni/bin/; \\
		    ctr oci spec \\
		      | jq '.hooks.createContainer[.hooks.createContainer|length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
		      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json; \\
		    containerd --version; runc --version
		COPY bin/ /usr/bin/
		LABEL io.mtls-operator.node-image.stamp="$(stamp)"
		ENV container=docker
		STOPSIGNAL SIGRTMIN+3
		ENTRYPOINT ["/usr/local/bin/mtls-node-entrypoint", "/usr/local/bin/entrypoint", "/sbin/init"]
	EOF
	docker_build "$node_pre" "$ctx"
}
step node-base node_base

preload() {
	local deadline i name start
	# containerd runs as the container's PID 1 here, unprivileged: it only needs its content store (--no-unpack), the
	# snapshotters and CRI may fail to load, that is fine. The archives are bind-mounted, so they stay out of the image.
	container="$(docker run -d --tmpfs /run -v "$work/archives:/archives:ro" --entrypoint /usr/bin/containerd "$node_pre")"
	deadline=$((SECONDS + 60))
	until docker exec "$container" ctr version >/dev/null 2>&1; do
		[[ $SECONDS -lt $deadline ]] || { docker logs "$container" >&2; die "containerd did not start in the build container"; }
		sleep 0.5
	done
	for i in "${kubeadm_images[@]}" "$cni_image"; do
		name="${i##*/}"
		name="${name%%:*}"
		docker exec "$container" ctr -n k8s.io images import --no-unpack --digests "/archives/$name.tar" >/dev/null
		# pinned: the kubelet's image GC must never delete what cannot be pulled again
		docker exec "$container" ctr -n k8s.io images label "$i" io.cri-containerd.pinned=pinned >/dev/null
	done
	local have
	have="$(docker exec "$container" ctr -n k8s.io images ls -q)"
	for i in "${kubeadm_images[@]}" "$cni_image"; do
		grep -qxF "$i" <<<"$have" || die "$i missing from the node's containerd after import; it has: $have"
	done
	docker kill -s TERM "$container" >/dev/null
	start=$SECONDS
	timeout 60 docker wait "$container" >/dev/null || die "containerd did not stop in the build container"
	docker commit --change 'ENTRYPOINT ["/usr/local/bin/mtls-node-entrypoint", "/usr/local/bin/entrypoint", "/sbin/init"]' \
		--change 'CMD []' "$container" "$image" >/dev/null
	docker rm "$container" >/dev/null
	container=""
	docker rmi "$node_pre" >/dev/null
	[[ "$(docker inspect -f '{{.Config.StopSignal}}' "$image")" == "SIGRTMIN+3" ]] || die "$image lost its STOPSIGNAL"
}
step preload preload

prune() { # prune REPO KEEP: removes our older images of REPO (one still used by a container stays)
	local tag
	for tag in $(docker images --format '{{.Repository}}:{{.Tag}}' "$1"); do
		[[ "$tag" == "$2" ]] || docker rmi "$tag" >/dev/null 2>&1 || true
	done
}
prune "$repo/kind-node" "$image"
prune "$repo/kind-node-rootfs" "$rootfs_image"
prune "$repo/kind-static-base" "$static_base"
prune "$repo/busybox" "$cni_image"

log "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%d MB", $1 / 1e6 }')) in $((SECONDS - total_start)) s"
echo "$image"
