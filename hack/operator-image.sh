#!/usr/bin/env bash
# Builds the operator image (default tag mtls-operator:dev) from the repository's Dockerfile, also on machines that
# can pull no image and whose build containers reach no package index.
#
#   base image   python:3.11-slim when it is present or can be pulled; otherwise a local Debian bookworm image
#                (debootstrap minbase + python3, python3-venv, ca-certificates), tagged
#                mtls-operator.local/python-base:bookworm-<stamp>. Its rootfs tarball is cached per user under
#                ~/.cache/mtls-operator/python-base/; the stamp is the hash of the function that builds it, so it is
#                rebuilt only when that recipe changes.
#   wheels       offline, .cache/wheelhouse/ is filled on the host by `pip wheel` from pyproject.toml (the project's
#                dependencies and its build-system requirements: no second list), with a Python 3.11 like the image's,
#                and the Dockerfile installs only from it (OFFLINE=1). Rebuilt when pyproject.toml changes.
#
# usage: hack/operator-image.sh [TAG | -t TAG] [--base auto|default|local] [--no-smoke]
#   MTLS_PYTHON       the host interpreter that builds the wheelhouse (default: python3.11, else python3 if 3.11)
#   MTLS_DEBIAN_MIRROR the mirror debootstrap uses (default http://deb.debian.org/debian)
# debootstrap needs root.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator/python-base"
tag="mtls-operator:dev"
base_mode="${MTLS_IMAGE_BASE:-auto}"
default_base="python:3.11-slim"
smoke=1
mirror="${MTLS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

while (($#)); do
	case "$1" in
	-t | --tag) tag="$2"; shift 2 ;;
	--base) base_mode="$2"; shift 2 ;;
	--no-smoke) smoke=0; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
	*) tag="$1"; shift ;;
	esac
done
case "$base_mode" in auto | default | local) ;; *) echo "--base must be auto, default or local" >&2; exit 2 ;; esac

t0=$SECONDS
say() { printf '[%4ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { say "error: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 ||
	die "no Docker engine answers (as root on these machines: dockerd >/tmp/dockerd.log 2>&1 &)"

# ---- the local base image ----

build_base_rootfs() { # build_base_rootfs DIR MIRROR: the recipe of the local base (its hash is the base's stamp)
	local dir="$1" mirror="$2"
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$dir" "$mirror" >"$dir.log"
	# PEP 668 would stop pip in the image; the image has no other package manager users.
	rm -f "$dir"/usr/lib/python3*/EXTERNALLY-MANAGED
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
		"$dir"/usr/share/info/* "$dir"/var/log/*.log "$dir"/var/cache/debconf/*-old
}

base_stamp() {
	{ declare -f build_base_rootfs; echo bookworm; } | sha256sum | cut -c1-12
}

local_base() { # prints the tag of the local base image, building or importing it when it is missing
	local stamp image tarball work
	stamp="$(base_stamp)"
	image="mtls-operator.local/python-base:bookworm-$stamp"
	if docker image inspect "$image" >/dev/null 2>&1; then
		say "base image $image: present" >&2
		echo "$image"
		return
	fi
	mkdir -p "$cache"
	tarball="$cache/bookworm-$stamp.tar"
	if [[ ! -f "$tarball" ]]; then
		command -v debootstrap >/dev/null || die "debootstrap is needed for the local base (apt-get install debootstrap)"
		((EUID == 0)) || die "debootstrap needs root"
		work="$(mktemp -d "$cache/rootfs.XXXXXX")"
		trap 'rm -rf "$work"' EXIT
		say "building the base rootfs with debootstrap ($mirror; log $work/rootfs.log) ..." >&2
		local t=$SECONDS
		build_base_rootfs "$work/rootfs" "$mirror" || { tail -20 "$work/rootfs.log" >&2; die "debootstrap failed"; }
		tar --numeric-owner -C "$work/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
			-cf "$tarball.tmp" .
		mv "$tarball.tmp" "$tarball"
		rm -rf "$work"
		trap - EXIT
		say "base rootfs built in $((SECONDS - t))s: $tarball ($(du -h "$tarball" | cut -f1))" >&2
		# Older stamps are of no further use.
		find "$cache" -maxdepth 1 -name 'bookworm-*.tar' ! -name "bookworm-$stamp.tar" -delete
	fi
	local t=$SECONDS
	docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$image" >/dev/null
	say "base image $image imported in $((SECONDS - t))s" >&2
	echo "$image"
}

# ---- the wheelhouse ----

host_python() {
	local py
	for py in "${MTLS_PYTHON:-}" python3.11 python3; do
		[[ -n "$py" ]] && command -v "$py" >/dev/null || continue
		if [[ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" == 3.11 ]]; then
			echo "$py"
			return
		fi
	done
	die "the wheelhouse must be built by a Python 3.11 (the image's); set MTLS_PYTHON"
}

wheelhouse() { # fills .cache/wheelhouse from pyproject.toml, unless it is already built from the same one
	local dir="$repo/.cache/wheelhouse" py stamp requires
	py="$(host_python)"
	stamp="$({ cat "$repo/pyproject.toml"; "$py" -c 'import platform, sys; print(sys.version, platform.machine())'; } |
		sha256sum | cut -c1-16)"
	if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then
		say "wheelhouse: up to date ($(find "$dir" -name '*.whl' | wc -l) wheels)"
		return
	fi
	rm -rf "$dir"
	mkdir -p "$dir"
	# The build backend comes from [build-system].requires: the image builds the project from source.
	mapfile -t requires < <("$py" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$repo/pyproject.toml")
	say "wheelhouse: pip wheel with $py ..."
	local t=$SECONDS
	(cd "$repo" && "$py" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" . "${requires[@]}")
	rm -f "$dir"/mtls_operator-*.whl # the project itself is built from the context, never from a stale wheel
	echo "$stamp" >"$dir/.stamp"
	say "wheelhouse: $(find "$dir" -name '*.whl' | wc -l) wheels in $((SECONDS - t))s"
}

# ---- the image ----

base=""
if [[ "$base_mode" != local ]]; then
	if docker image inspect "$default_base" >/dev/null 2>&1; then
		base="$default_base"
	elif timeout 60 docker pull --quiet "$default_base" >/dev/null 2>&1; then
		base="$default_base"
	elif [[ "$base_mode" == default ]]; then
		die "$default_base can be neither found nor pulled"
	else
		say "$default_base cannot be pulled: using a local Debian bookworm base"
	fi
fi

args=()
if [[ -z "$base" ]]; then
	base="$(local_base)"
	wheelhouse
	args=(--build-arg OFFLINE=1)
	# The classic builder uses local images as they are; BuildKit would ask a registry about the base.
	export DOCKER_BUILDKIT=0
fi

say "building $tag on $base ..."
t=$SECONDS
build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
docker build --build-arg BASE_IMAGE="$base" "${args[@]}" -t "$tag" "$repo" >"$build_log" 2>&1 ||
	{ tail -40 "$build_log" >&2; die "docker build failed"; }
size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}')"
say "image $tag built in $((SECONDS - t))s ($size)"

if ((smoke)); then
	# As the chart runs it: uid 65532, read-only root filesystem, a writable /tmp.
	docker run --rm --read-only --tmpfs /tmp --user 65532:65532 "$tag" version >/dev/null ||
		die "the image does not start as uid 65532 on a read-only root filesystem"
	say "smoke test passed: $tag starts as uid 65532 on a read-only root filesystem"
fi
