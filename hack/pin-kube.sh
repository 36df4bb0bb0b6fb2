#!/usr/bin/env bash
# Writes (or rewrites) a consumer module that builds Kubernetes commands from k8s.io/kubernetes at one release.
# k8s.io/kubernetes points its staging modules (k8s.io/api, client-go, ...) at folders inside its own tree; a
# consumer has to point each of them at the published v0.X.Y tag of the same release instead. This script reads
# that list from the release's own go.mod, so a new release never needs a hand-kept list.
#
# usage: hack/pin-kube.sh DIR VERSION CMD...   e.g. hack/pin-kube.sh hack/kube v1.37.2 kube-apiserver kubelet
set -euo pipefail
dir="$1" version="$2"
shift 2
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "VERSION must look like v1.37.2" >&2; exit 2; }
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
mkdir -p "$dir"
export GOFLAGS=-mod=mod
upstream_mod="$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
go_line="$(grep -E '^go [0-9.]+$' "$upstream_mod")"
{
	echo "// Consumer module that builds Kubernetes $version commands from k8s.io/kubernetes; written by hack/pin-kube.sh."
	echo "// Every staging module is replaced by its published $staging_version tag, as the release's own go.mod lists them."
	echo "module mtls-operator.io/hack/$(basename "$dir")"
	echo
	echo "$go_line"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	echo "replace ("
	grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream_mod" | awk -v v="$staging_version" '{ printf "\t%s => %s %s\n", $1, $1, v }'
	echo ")"
} >"$dir/go.mod"
{
	echo "//go:build tools"
	echo
	echo "// Package tools names the commands this module builds, so \`go mod tidy\` keeps their dependencies."
	echo "package tools"
	echo
	echo "import ("
	for cmd in "$@"; do echo "	_ \"k8s.io/kubernetes/cmd/$cmd\""; done
	echo ")"
} >"$dir/tools.go"
rm -f "$dir/go.sum"
(cd "$dir" && go mod tidy)
echo "pinned $dir to Kubernetes $version ($*)"
