#!/usr/bin/env bash
# A kind cluster for mtls-operator, on a normal laptop or on a host with no registry access.
#
#   hack/kind.sh up      create the cluster (or reuse a healthy one), wait for the node and CoreDNS, print timings
#   hack/kind.sh down    delete it
#   hack/kind.sh image   print the node image `up` would use (building it when that is our own)
#   hack/kind.sh load IMAGE...   `kind load docker-image` into the cluster (through the docker wrapper where needed)
#
# Environment:
#   KIND_CLUSTER      cluster name (default mtls-operator)
#   KIND_KUBECONFIG   kubeconfig to write (default .cache/kind/kubeconfig; relative paths are from the repo root)
#   KIND_NODE_IMAGE   node image to use as is
#   KIND_OFFLINE=1    do not look for kindest/node: build our own image (hack/node-image/build.sh)
#   KIND_RETAIN=1     keep the node container when `kind create` fails, for debugging
#
# The node image: KIND_NODE_IMAGE; else kindest/node:<pinned release> if docker has it or can pull it; else our own.
# The cluster config is kind-config.yaml plus, only on hosts that need them:
#   - kubelet failCgroupV1: false        when the host is on cgroup v1 (Kubernetes >= 1.35 refuses it otherwise)
#   - hack/node-image/docker on PATH     when `docker run --privileged` fails here, or /lib/modules is missing
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cluster="${KIND_CLUSTER:-mtls-operator}"
kubeconfig="${KIND_KUBECONFIG:-.cache/kind/kubeconfig}"
[[ "$kubeconfig" == /* ]] || kubeconfig="$root/$kubeconfig"
cache="${MTLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}/kind"
node="$cluster-control-plane"

log() { echo "kind.sh: $*" >&2; }
die() { echo "kind.sh: error: $*" >&2; exit 1; }

kube_version() {
	awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 } $1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' \
		"$root/hack/kube/go.mod" | head -n1
}

need_docker() {
	command -v docker >/dev/null || die "needs docker (the client) on PATH and a running Docker engine"
	local err
	err="$(docker info 2>&1 >/dev/null)" || die "needs a running Docker engine; \`docker info\` says: ${err:-nothing}"
}

kind_bin() { # the pinned kind CLI, built from hack/kind (cached)
	"$root/hack/build-bins.sh" kind >&2
	kind="$("$root/hack/bin-dir.sh")/kind"
}

choose_image() {
	if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
		echo "$KIND_NODE_IMAGE"
		return
	fi
	local upstream
	upstream="kindest/node:$(kube_version)"
	if [[ "${KIND_OFFLINE:-}" != 1 ]]; then
		if docker image inspect "$upstream" >/dev/null 2>&1; then
			echo "$upstream"
			return
		fi
		log "pulling $upstream (up to 60 s; KIND_OFFLINE=1 skips this)"
		if timeout 60 docker pull -q "$upstream" >/dev/null 2>&1; then
			echo "$upstream"
			return
		fi
		log "$upstream cannot be pulled here: using our own node image (hack/node-image/build.sh)"
	fi
	"$root/hack/node-image/build.sh"
}

in_node() { docker exec "$node" kubectl --kubeconfig=/etc/kubernetes/admin.conf "$@"; }

node_ready() {
	[[ "$(in_node get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

coredns_ready() { # every CoreDNS pod Ready (and there is at least one)
	local ready
	ready="$(in_node -n kube-system get pods -l k8s-app=kube-dns \
		-o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null)" || return 1
	[[ -n "$ready" ]] && ! grep -qv '^True$' <<<"$ready"
}

wait_for() { # wait_for SECONDS WHAT CHECK...: polls CHECK until it succeeds, or fails after SECONDS
	local timeout="$1" what="$2"
	local deadline=$((SECONDS + timeout))
	shift 2
	until "$@"; do
		[[ $SECONDS -lt $deadline ]] || die "timed out after $timeout s waiting for $what"
		sleep 1
	done
}

cluster_exists() { "$kind" get clusters 2>/dev/null | grep -qxF "$cluster"; }

healthy() { docker exec "$node" true >/dev/null 2>&1 && in_node get --raw /readyz >/dev/null 2>&1 && node_ready; }

reuse() { # an existing cluster: start stopped nodes, and use it if it becomes healthy
	local state
	state="$(docker inspect -f '{{.State.Status}}' "$node" 2>/dev/null || true)"
	if [[ "$state" != running ]]; then
		log "node container $node is ${state:-missing}: starting it"
		docker start "$node" >/dev/null || die "cannot start $node; delete the cluster with: hack/kind.sh down"
	fi
	local deadline=$((SECONDS + 120))
	until healthy; do
		[[ $SECONDS -lt $deadline ]] || die "cluster $cluster exists but is not healthy; recreate it: hack/kind.sh down && hack/kind.sh up"
		sleep 1
	done
	wait_for 120 "CoreDNS" coredns_ready
	local image
	image="$(docker inspect -f '{{.Config.Image}}' "$node")"
	local -a fixes=()
	host_fixes "$image" 2>/dev/null
	env "${fixes[@]}" "$kind" export kubeconfig --name "$cluster" --kubeconfig "$kubeconfig" >&2
	log "reusing healthy cluster $cluster (node image $image); kubeconfig: $kubeconfig"
	if [[ -z "${KIND_NODE_IMAGE:-}" && "$image" == mtls-operator.local/* && "$image" != "$("$root/hack/node-image/build.sh" --tag)" ]]; then
		log "note: the pins changed since it was created; \`hack/kind.sh down && hack/kind.sh up\` moves it to them"
	fi
}

host_fixes() { # host_fixes IMAGE: sets $fixes, the environment kind needs on this host (empty on a normal one)
	fixes=()
	if ! privileged_works "$1"; then
		log "privileged containers fail on this host: kind runs through hack/node-image/docker (explicit capabilities)"
		fixes+=(MTLS_DOCKER_UNPRIVILEGED=1)
	fi
	if [[ ! -d /lib/modules ]]; then
		log "host has no /lib/modules: the node gets an empty one from $cache/lib-modules"
		mkdir -p "$cache/lib-modules"
		fixes+=("MTLS_DOCKER_LIB_MODULES=$cache/lib-modules")
	fi
	if [[ ${#fixes[@]} -gt 0 ]]; then
		fixes+=("MTLS_REAL_DOCKER=$(command -v docker)" "PATH=$root/hack/node-image:$PATH")
	fi
}

privileged_works() { # the probe: can this host run a --privileged container at all?
	docker run --rm --privileged --entrypoint true "$1" >/dev/null 2>&1
}

write_config() { # write_config FILE: kind-config.yaml plus the patches this host needs
	local out="$1" patches=""
	if [[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]]; then
		log "host is on cgroup v1: kubelet failCgroupV1: false"
		patches+=$'- |\n  kind: KubeletConfiguration\n  failCgroupV1: false\n'
	fi
	cp "$root/kind-config.yaml" "$out"
	[[ -n "$patches" ]] || return 0
	if grep -q '^kubeadmConfigPatches:' "$out"; then
		# add ours as the first items, indented like the list that is already there
		local indent
		indent="$(awk '/^kubeadmConfigPatches:/ { f = 1; next } f && /^[[:space:]]*-/ { match($0, /^[[:space:]]*/); print substr($0, 1, RLENGTH); exit }' "$out")"
		ADD="$(sed "s/^/$indent/" <<<"${patches%$'\n'}")" awk '{ print } /^kubeadmConfigPatches:/ { print ENVIRON["ADD"] }' \
			"$out" >"$out.tmp"
		mv "$out.tmp" "$out"
	else
		printf '%s\n%s' "kubeadmConfigPatches:" "$patches" >>"$out"
	fi
}

up() {
	need_docker
	kind_bin
	mkdir -p "$(dirname "$kubeconfig")" "$cache"
	if cluster_exists; then
		reuse
		return
	fi

	local start=$SECONDS image config
	local -a fixes=()
	image="$(choose_image)"
	log "node image: $image"

	host_fixes "$image"

	config="$(dirname "$kubeconfig")/$cluster-config.yaml"
	write_config "$config"

	local t=$SECONDS
	local -a retain=()
	[[ "${KIND_RETAIN:-}" != 1 ]] || retain=(--retain)
	env "${fixes[@]}" "$kind" create cluster --name "$cluster" --config "$config" --image "$image" \
		--kubeconfig "$kubeconfig" "${retain[@]}" >&2 ||
		die "kind create cluster failed (KIND_RETAIN=1 keeps the node for \`docker logs $node\`)"
	local t_create=$((SECONDS - t))
	t=$SECONDS
	wait_for 300 "node $node to be Ready" node_ready
	local t_ready=$((SECONDS - t))
	t=$SECONDS
	wait_for 300 "CoreDNS to be Ready" coredns_ready
	local t_dns=$((SECONDS - t))
	log "cluster $cluster is up: kind create ${t_create} s, node Ready +${t_ready} s, CoreDNS Ready +${t_dns} s," \
		"total $((SECONDS - start)) s"
	log "kubeconfig: $kubeconfig"
}

load() { # load IMAGE...: kind load docker-image, through the docker wrapper where the cluster was made with it
	[[ $# -gt 0 ]] || die "usage: hack/kind.sh load IMAGE..."
	need_docker
	kind_bin
	cluster_exists || die "no cluster named $cluster: hack/kind.sh up"
	local -a fixes=()
	host_fixes "$(docker inspect -f '{{.Config.Image}}' "$node")" 2>/dev/null
	env "${fixes[@]}" "$kind" load docker-image --name "$cluster" "$@" >&2
}

down() {
	need_docker
	kind_bin
	if cluster_exists; then
		"$kind" delete cluster --name "$cluster" --kubeconfig "$kubeconfig" >&2
	else
		log "no cluster named $cluster"
	fi
	rm -f "$(dirname "$kubeconfig")/$cluster-config.yaml"
}

case "${1:-}" in
up) up ;;
down) down ;;
image) need_docker; choose_image ;;
load) shift; load "$@" ;;
*) echo "usage: hack/kind.sh up|down|image|load IMAGE..." >&2; exit 2 ;;
esac
