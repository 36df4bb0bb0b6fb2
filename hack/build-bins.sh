#!/usr/bin/env bash
# Builds every binary the project runs from the pinned Go modules under hack/: there is no download of release
# binaries on these machines; the Go module proxy is the one way in, so we compile.
#
#   kube       kube-apiserver, kube-controller-manager, kubectl of the default release (hack/kube)
#   kube-1.35  the same three of the oldest supported minor (hack/kube-1.35), into BIN/kube-1.35/
#   etcd, helm the local control plane's store; the chart tool
#   kind       the kind command line (hack/kind)
#   promtool   Prometheus' rule checker and tester (hack/promtool), for the chart's alert tests
#   node       what the offline kind node image holds, into BIN/node/: kubelet, kubeadm, kube-proxy,
#              kube-scheduler (hack/kube), coredns (hack/coredns), pause (hack/pause)
#
# Binaries land in a per-user cache outside the checkout (so every clone and CI on one machine share them).
# Each tool carries a stamp: the hash of its modules, this script and the Go version. A tool is rebuilt only
# when its stamp changes.
#
# usage: hack/build-bins.sh [kube|kube-1.35|etcd|helm|kind|node|promtool ...]
#        (default: kube kube-1.35 etcd helm promtool)
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

stamp_of() { # stamp_of MODULE_DIR... -> hash of everything that decides a tool's binaries
	local d
	{ for d in "$@"; do cat "$hack/$d"/go.mod "$hack/$d"/*.go; [[ ! -f "$hack/$d/go.sum" ]] || cat "$hack/$d/go.sum"; done
		cat "$hack/build-bins.sh"; echo "$go_version"; } | sha256sum | cut -c1-16
}

progress() { # counts the packages `go build -v` reports, so a cold build shows it is alive
	awk -v tool="$1" '{ n++; if (n % 100 == 0) { printf "  %s: %d packages compiled\n", tool, n; fflush() } }
		END { printf "  %s: %d packages compiled\n", tool, n }'
}

up_to_date() { # up_to_date TOOL MODULE_DIR... -> true when the tool's stamp matches (sets $stamp)
	local tool="$1"
	shift
	stamp="$(stamp_of "$@")"
	if [[ -f "$bin_dir/.$tool.stamp" && "$(cat "$bin_dir/.$tool.stamp")" == "$stamp" ]]; then
		echo "$tool: up to date in $bin_dir"
		return 0
	fi
	return 1
}

compile() { # compile TOOL MODULE_DIR DEST LDFLAGS PACKAGE...   ($rename="from:to" renames one output binary)
	local tool="$1" module="$2" dest="$3" ldflags="$4"
	shift 4
	echo "$tool: building $* (this takes minutes on a cold cache)"
	local start=$SECONDS out
	mkdir -p "$dest"
	out="$(mktemp -d "$bin_dir/.build-$tool.XXXXXX")"
	(cd "$hack/$module" && go build -v -trimpath -ldflags "-s -w $ldflags" -o "$out/" "$@") 2>&1 | progress "$tool"
	[[ ${PIPESTATUS[0]} -eq 0 ]] || { rm -rf "$out"; echo "$tool: build failed" >&2; exit 1; }
	[[ -z "${rename:-}" ]] || mv "$out/${rename%%:*}" "$out/${rename#*:}"
	mv -f "$out"/* "$dest/"
	rmdir "$out"
	echo "$tool: built in $((SECONDS - start)) s"
}

build() { # build TOOL LDFLAGS PACKAGE...: one module (hack/TOOL) into the bin dir, unless its stamp is current
	local tool="$1" stamp
	up_to_date "$tool" "$tool" && return
	compile "$tool" "$tool" "$bin_dir" "$2" "${@:3}"
	echo "$stamp" >"$bin_dir/.$tool.stamp"
}

kube_ldflags() { # kube_ldflags MODULE_DIR -> -X flags for both places Kubernetes reads its version from
	local v major minor commit date ld="" pkg
	v="$(module_version "$hack/$1" k8s.io/kubernetes)"
	major="${v#v}"; major="${major%%.*}"
	minor="${v#v*.}"; minor="${minor%%.*}"
	commit="$(module_info "$hack/$1" k8s.io/kubernetes Origin.Hash)"
	date="$(module_info "$hack/$1" k8s.io/kubernetes Time)"
	# Without them /version, kubectl and kubeadm say v0.0.0-master (kubeadm then refuses to pick images).
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
	done
	echo "$ld"
}

control_plane=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kubectl)

build_kube() {
	build kube "$(kube_ldflags kube)" "${control_plane[@]}"
}

build_kube_135() { # the oldest supported minor, for the integration suite's second run; in its own folder
	local stamp
	up_to_date kube-1.35 kube-1.35 && return
	compile kube-1.35 kube-1.35 "$bin_dir/kube-1.35" "$(kube_ldflags kube-1.35)" "${control_plane[@]}"
	echo "$stamp" >"$bin_dir/.kube-1.35.stamp"
}

build_kind() {
	local v
	v="$(module_version "$hack/kind" sigs.k8s.io/kind)"
	build kind "-X sigs.k8s.io/kind/pkg/cmd/kind/version.gitCommit=$(module_info "$hack/kind" sigs.k8s.io/kind Origin.Hash)" \
		sigs.k8s.io/kind
}

build_node() { # the node image's binaries: same release as the control plane, plus the DNS and sandbox images
	local stamp
	up_to_date node kube coredns pause && return
	local dest="$bin_dir/node" v
	compile node kube "$dest" "$(kube_ldflags kube)" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm \
		k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
	v="$(module_version "$hack/coredns" github.com/coredns/coredns)"
	compile coredns coredns "$dest" "-X github.com/coredns/coredns/coremain.GitCommit=$v" .
	compile pause pause "$dest" "" .
	echo "$stamp" >"$bin_dir/.node.stamp"
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

build_promtool() {
	local v minor patch release commit date pkg=github.com/prometheus/common/version
	v="$(module_version "$hack/promtool" github.com/prometheus/prometheus)"
	# Prometheus 3.x publishes its Go module as v0.3XX.Y for release 3.XX.Y.
	minor="${v#v0.}"; patch="${minor#*.}"; minor="${minor%%.*}"
	release="3.$((minor - 300)).$patch"
	commit="$(module_info "$hack/promtool" github.com/prometheus/prometheus Origin.Hash)"
	date="$(module_info "$hack/promtool" github.com/prometheus/prometheus Time)"
	# remove_all_sd leaves out the service-discovery plugins (cloud SDKs: most of Prometheus' dependency tree), which
	# checking and unit-testing rules never use; `promtool check service-discovery` then knows file, http, kubernetes.
	GOFLAGS="$GOFLAGS -tags=remove_all_sd" build promtool \
		"-X $pkg.Version=$release -X $pkg.Revision=$commit -X $pkg.Branch=v$release -X $pkg.BuildDate=$date" \
		github.com/prometheus/prometheus/cmd/promtool
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(etcd helm kube kube-1.35 promtool)
for tool in "${tools[@]}"; do
	case "$tool" in
	kube | etcd | helm | kind | node | promtool) "build_$tool" ;;
	kube-1.35) build_kube_135 ;;
	*) echo "unknown tool: $tool (kube, kube-1.35, etcd, helm, kind, node, promtool)" >&2; exit 2 ;;
	esac
done
