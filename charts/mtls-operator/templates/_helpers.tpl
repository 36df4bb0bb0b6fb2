{{- define "mtls-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mtls-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mtls-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mtls-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mtls-operator.labels" -}}
{{ include "mtls-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mtls-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The rules the operator needs wherever it serves identities: one list, used by the ClusterRole or each Role. */}}
{{- define "mtls-operator.identityRules" -}}
# Watch MtlsIdentities (the operator's own list-and-watch).
- apiGroups: ["mtls-operator.io"]
  resources: ["mtlsidentities"]
  verbs: ["list", "watch"]
# Report Ready, the certificate's facts and the renewal time.
- apiGroups: ["mtls-operator.io"]
  resources: ["mtlsidentities/status"]
  verbs: ["patch"]
# Write identity Secrets (create, full replace with resourceVersion), watch the managed ones, read a conflicting one.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update"]
# Publish the trust bundle per namespace (ConfigMap mtls-trust-bundle) and keep it current.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "update"]
# An identity's ServiceAccount must exist before it gets a certificate (get: one that the watch has not shown yet).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch"]
{{- if .Values.restartTargets.enabled }}
# restartTargets: read a workload's pod template and annotate it to roll its pods onto a new certificate.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
# Events for issuance, renewal and every failure.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.podCertificates.enabled }}
# Pod certificates: watch the PodCertificateRequests (the signer's own are picked by a field selector) and answer them
# on the status subresource (which the API server lets through only with `sign` on the signer, below).
- apiGroups: ["certificates.k8s.io"]
  resources: ["podcertificaterequests"]
  verbs: ["get", "list", "watch"]
# ... and answer them: one status write each (issued, or denied with a reason).
- apiGroups: ["certificates.k8s.io"]
  resources: ["podcertificaterequests/status"]
  verbs: ["patch"]
{{- end }}
{{- end -}}
