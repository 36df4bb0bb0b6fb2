#!/usr/bin/env bash
# Proves a cluster made by hack/kind.sh does what the operator's workloads need: a locally built image loaded with
# `kind load`, a Secret mounted into a pod, cluster DNS, pod-to-pod traffic over the CNI, and a Service (kube-proxy).
#
# usage: hack/node-image/smoke-test.sh   (env: KIND_CLUSTER, KIND_KUBECONFIG as for hack/kind.sh)
# Runs on a cluster made with our node image: the test image's busybox comes from its cached Debian rootfs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
kubeconfig="${KIND_KUBECONFIG:-.cache/kind/kubeconfig}"
[[ "$kubeconfig" == /* ]] || kubeconfig="$root/$kubeconfig"
cache="${MTLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}/node-image"
bin_dir="$("$root/hack/bin-dir.sh")"
image=mtls-operator.local/smoke:v1
ns=smoke

log() { echo "smoke-test: $*" >&2; }
die() { echo "smoke-test: FAIL: $*" >&2; exit 1; }
kubectl() { "$bin_dir/node/kubectl" --kubeconfig "$kubeconfig" "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# the test image: busybox on scratch, from the node image's Debian rootfs
busybox="$(find "$cache" -maxdepth 4 -path "$cache/rootfs-*/usr/bin/busybox" -print -quit 2>/dev/null)"
[[ -n "$busybox" ]] || die "no cached rootfs with busybox under $cache (run hack/node-image/build.sh)"
cp "$busybox" "$work/"
printf '%s\n' 'FROM scratch' 'COPY busybox /bin/busybox' 'RUN ["/bin/busybox", "--install", "-s", "/bin"]' \
	'ENV PATH=/bin' >"$work/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$work" >/dev/null
start=$SECONDS
"$root/hack/kind.sh" load "$image"
log "kind load: $((SECONDS - start)) s"

kubectl delete namespace "$ns" --ignore-not-found --wait >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl -n "$ns" create secret generic smoke --from-literal=token=s3cr3t-value >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: httpd
      image: $image
      imagePullPolicy: Never
      command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
      ports: [{containerPort: 8080}]
      readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: $image
      imagePullPolicy: Never
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 3600 & wait; done']
      volumeMounts: [{name: secret, mountPath: /secret, readOnly: true}]
  volumes:
    - name: secret
      secret: {secretName: smoke}
EOF
start=$SECONDS
kubectl -n "$ns" wait --for=condition=Ready pod/server pod/client --timeout=120s >/dev/null ||
	{ kubectl -n "$ns" describe pods >&2; die "pods did not become Ready"; }
log "pods Ready: $((SECONDS - start)) s"

in_client() { kubectl -n "$ns" exec client -- "$@"; }
http_get() { # http_get HOST PORT -> the body's last line, fetched from the client pod (busybox wget segfaults, nc works)
	in_client sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | nc -w 5 "$1" "$2" | tail -n1' - "$1" "$2"
}

[[ "$(in_client cat /secret/token)" == s3cr3t-value ]] || die "the Secret is not mounted in the pod"
log "ok: Secret mounted at /secret"

service_ip="$(kubectl get service kubernetes -o 'jsonpath={.spec.clusterIP}')"
out="$(in_client nslookup kubernetes.default.svc.cluster.local)" || die "DNS lookup failed: $out"
grep -q "Address:[[:space:]]*$service_ip\$" <<<"$out" || die "kubernetes.default.svc.cluster.local did not resolve to $service_ip: $out"
log "ok: kubernetes.default.svc.cluster.local -> $service_ip via cluster DNS ($(awk '/^Server:/ { print $2 }' <<<"$out"))"

server_ip="$(kubectl -n "$ns" get pod server -o 'jsonpath={.status.podIP}')"
client_ip="$(kubectl -n "$ns" get pod client -o 'jsonpath={.status.podIP}')"
[[ "$(http_get "$server_ip" 8080)" == server ]] || die "client cannot reach the server pod at $server_ip"
log "ok: pod $client_ip -> pod $server_ip:8080 over the CNI"

[[ "$(http_get "server.$ns.svc.cluster.local" 80)" == server ]] || die "the Service does not answer"
log "ok: Service server.$ns.svc.cluster.local (kube-proxy) answers"

kubectl delete namespace "$ns" --wait=false >/dev/null
log "all checks passed"
