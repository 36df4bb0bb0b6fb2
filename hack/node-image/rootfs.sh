#!/usr/bin/env bash
# Bootstraps the Debian root filesystem of the kind node image into DEST (a directory that must not exist yet).
# Called by build.sh, which caches the result keyed by a hash of this file: change the package list here and the
# rootfs is rebuilt, change anything else and it is reused.
#
# usage: hack/node-image/rootfs.sh DEST
set -euo pipefail

dest="${1:?usage: rootfs.sh DEST}"
suite=bookworm
mirror="${MTLS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${MTLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}/node-image/debs"

# kind's base package list (images/base/Dockerfile), minus the storage e2e extras (nfs-common, open-iscsi) and
# fuse-overlayfs (only for rootless docker), plus what kind otherwise builds from source: Debian's containerd, runc
# and CNI plugins. busybox-static gives the FROM-scratch helper images (CNI installer, tests) a shell.
packages=(
	systemd
	conntrack iptables nftables iproute2 ethtool util-linux mount kmod
	libseccomp2 pigz e2fsprogs
	bash ca-certificates curl jq procps
	containerd runc containernetworking-plugins
	busybox-static
)

[[ $EUID -eq 0 ]] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[[ ! -e "$dest" ]] || { echo "rootfs.sh: $dest already exists" >&2; exit 1; }
mkdir -p "$cache"

# --cache-dir keeps the .debs, so a rebuild after a package-list change downloads only what is new.
debootstrap --variant=minbase --cache-dir="$cache" --include="$(IFS=,; echo "${packages[*]}")" \
	"$suite" "$dest" "$mirror" >&2

# Slim it the way kind's clean-install does; the host's resolv.conf/hostname must not leak into the image.
chroot "$dest" apt-get clean
rm -rf "$dest"/var/lib/apt/lists/* "$dest"/var/cache/debconf/*-old "$dest"/var/log/* "$dest"/tmp/* "$dest"/var/tmp/* \
	"$dest"/usr/share/doc/* "$dest"/usr/share/man/* "$dest"/usr/share/info/* "$dest"/usr/share/locale/*
rm -f "$dest"/etc/resolv.conf "$dest"/etc/hostname
: >"$dest"/etc/machine-id
