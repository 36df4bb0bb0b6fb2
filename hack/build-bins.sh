#!/usr/bin/env bash
# Builds the real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and helm from the
# pinned Go modules under hack/. There is no container engine and no download of release binaries on these
# machines; the Go module proxy is the one way in, so we compile.
#
# Binaries land in a per-user cache outside the checkout (so every clone and CI on one machine share them).
# Each tool carries a stamp: the hash of its go.mod, go.sum, this script and the Go version. A tool is rebuilt
# only when its stamp changes.
#
# usage: hack/build-bins.sh [kube|etcd|helm ...]   (default: all)
set -euo pipefail

hack="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="$("$hack/bin-dir.sh")"
mkdir -p "$bin_dir"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
go_version="$(go env GOVERSION)"

module_version() { # module_version DIR MODULE -> the version pinned in DIR/go.mod
	(cd "$1" && go list -m -f '{{.Version}}' "$2")
}

module_info() { # module_info DIR MODULE FIELD -> a field of the module's proxy record (Time, Origin.Hash)
	(cd "$1" && go mod download -json "$2@$(module_version "$1" "$2")") |
		python3 -c 'import json,sys; d=json.load(sys.stdin); v=d; [v:=v.get(k, {}) for k in sys.argv[1].split(".")]; print(v or "")' "$3"
}

stamp_of() { # stamp_of TOOL -> hash of everything that decides the tool's binaries
	cat "$hack/$1/go.mod" "$hack/$1/go.sum" "$hack/build-bins.sh" <(echo "$go_version") | sha256sum | cut -c1-16
}

progress() { # counts the packages `go build -v` reports, so a cold build shows it is alive
	awk -v tool="$1" '{ n++; if (n % 100 == 0) { printf "  %s: %d packages compiled\n", tool, n; fflush() } }
		END { printf "  %s: %d packages compiled\n", tool, n }'
}

build() { # build TOOL LDFLAGS PACKAGE...   ($rename="from:to" renames one output binary)
	local tool="$1" ldflags="$2"
	shift 2
	local stamp_file="$bin_dir/.$tool.stamp" stamp
	stamp="$(stamp_of "$tool")"
	if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
		echo "$tool: up to date in $bin_dir"
		return
	fi
	echo "$tool: building $* (this takes minutes on a cold cache)"
	local start=$SECONDS out
	out="$(mktemp -d "$bin_dir/.build-$tool.XXXXXX")"
	(cd "$hack/$tool" && go build -v -trimpath -ldflags "-s -w $ldflags" -o "$out/" "$@") 2>&1 | progress "$tool"
	[[ ${PIPESTATUS[0]} -eq 0 ]] || { rm -rf "$out"; echo "$tool: build failed" >&2; exit 1; }
	[[ -z "${rename:-}" ]] || mv "$out/${rename%%:*}" "$out/${rename#*:}"
	mv -f "$out"/* "$bin_dir/"
	rmdir "$out"
	echo "$stamp" >"$stamp_file"
	echo "$tool: built in $((SECONDS - start)) s"
}

build_kube() {
	local v major minor commit date ld="" pkg
	v="$(module_version "$hack/kube" k8s.io/kubernetes)"
	major="${v#v}"; major="${major%%.*}"
	minor="${v#v*.}"; minor="${minor%%.*}"
	commit="$(module_info "$hack/kube" k8s.io/kubernetes Origin.Hash)"
	date="$(module_info "$hack/kube" k8s.io/kubernetes Time)"
	# Both places Kubernetes reads its version from; without them /version and kubectl say v0.0.0-master.
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
	done
	build kube "$ld" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
	local commit
	commit="$(module_info "$hack/etcd" go.etcd.io/etcd/server/v3 Origin.Hash)"
	# `go build` names the binary after the module path ("server"); the world calls it etcd.
	rename=server:etcd build etcd "-X go.etcd.io/etcd/api/v3/version.GitSHA=${commit:0:8}" go.etcd.io/etcd/server/v3
}

build_helm() {
	local v commit client minor ld pkg
	v="$(module_version "$hack/helm" helm.sh/helm/v3)"
	commit="$(module_info "$hack/helm" helm.sh/helm/v3 Origin.Hash)"
	ld="-X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitCommit=$commit"
	ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	# The Kubernetes version helm assumes offline (`helm template`, `helm lint`): client-go v0.X.Y is Kubernetes 1.X,
	# as helm's own Makefile derives it. Without this it assumes v1.20 and rejects charts that need newer.
	client="$(module_version "$hack/helm" k8s.io/client-go)"
	minor="${client#v0.}"; minor="${minor%%.*}"
	for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
		ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
	done
	build helm "$ld" helm.sh/helm/v3/cmd/helm
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(etcd helm kube)
for tool in "${tools[@]}"; do
	case "$tool" in
	kube | etcd | helm) "build_$tool" ;;
	*) echo "unknown tool: $tool (kube, etcd, helm)" >&2; exit 2 ;;
	esac
done
