{{/* Names and labels shared by every template. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "etcdconfig.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (or just the release name when it already contains the chart
name), at most 63 characters; fullnameOverride replaces it. Object names derive from it
with a short suffix, so it is cut to 50 characters to leave room. */}}
{{- define "etcdconfig.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "etcdconfig.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "etcdconfig.labels" -}}
helm.sh/chart: {{ include "etcdconfig.chart" . }}
app.kubernetes.io/name: {{ include "etcdconfig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: etcdconfig
{{- end }}

{{/* Selector labels of the operator pods (never change them: selectors are immutable). */}}
{{- define "etcdconfig.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcdconfig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector labels of the bundled etcd members. */}}
{{- define "etcdconfig.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "etcdconfig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end }}

{{- define "etcdconfig.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "etcdconfig.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Fail with "msg" when a value the user must set is missing: at install, upgrade and
template time. `helm lint` renders the chart with its own defaults, which on purpose lack
these site-specific values; failing there only printed an INFO "funcMap fail" line. */}}
{{- define "etcdconfig.require" -}}
{{- if or .ctx.Release.IsInstall .ctx.Release.IsUpgrade }}
{{- fail .msg }}
{{- end }}
{{- end }}

{{- define "etcdconfig.image" -}}
{{- if not .Values.image.repository }}
{{- include "etcdconfig.require" (dict "ctx" . "msg" "set image.repository: no etcdconfig image is published; build one from the repository's Dockerfile, push it to a registry the cluster pulls from, and pass --set image.repository=<registry>/etcdconfig (see docs/install.md)") }}
{{- end }}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The bundled etcd: StatefulSet name, headless Service (peers) and client Service. */}}
{{- define "etcdconfig.etcdName" -}}
{{- printf "%s-etcd" (include "etcdconfig.fullname" .) }}
{{- end }}

{{- define "etcdconfig.etcdPeerService" -}}
{{- printf "%s-etcd-peers" (include "etcdconfig.fullname" .) }}
{{- end }}

{{/* Comma-separated etcd endpoints the operator connects to. */}}
{{- define "etcdconfig.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled }}
{{- printf "http://%s.%s.svc:2379" (include "etcdconfig.etcdName" .) .Release.Namespace }}
{{- else }}
{{- $given := .Values.etcd.endpoints }}
{{- if kindIs "string" $given }}
{{- $given = splitList "," $given }}
{{- end }}
{{- $endpoints := list }}
{{- range $given }}
{{- if trim . }}
{{- $endpoints = append $endpoints (trim .) }}
{{- end }}
{{- end }}
{{- if not $endpoints }}
{{- include "etcdconfig.require" (dict "ctx" . "msg" "set etcd.endpoints (your etcd's client URLs) or etcd.bundled.enabled=true") }}
{{- end }}
{{- join "," $endpoints }}
{{- end }}
{{- end }}

{{/* The bundled etcd's --initial-cluster: every member's peer URL. */}}
{{- define "etcdconfig.etcdInitialCluster" -}}
{{- $name := include "etcdconfig.etcdName" . }}
{{- $peers := include "etcdconfig.etcdPeerService" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $members = append $members (printf "%s-%d=http://%s-%d.%s.%s.svc.%s:2380" $name $i $name $i $peers $.Release.Namespace $.Values.etcd.bundled.clusterDomain) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/* Name of the webhook's serving-certificate Secret. */}}
{{- define "etcdconfig.webhookSecretName" -}}
{{- if .Values.webhook.certificate.secretName }}
{{- .Values.webhook.certificate.secretName }}
{{- else if ne .Values.webhook.certificate.source "secret" }}
{{- printf "%s-webhook-tls" (include "etcdconfig.fullname" .) }}
{{- else }}
{{- fail "webhook.certificate.secretName is required with webhook.certificate.source=secret" }}
{{- end }}
{{- end }}

{{/* The history API: its Service, and the name of its serving-certificate Secret. */}}
{{- define "etcdconfig.historyApiService" -}}
{{- printf "%s-history-api" (include "etcdconfig.fullname" .) }}
{{- end }}

{{- define "etcdconfig.historyApiSecretName" -}}
{{- if .Values.historyApi.certificate.secretName }}
{{- .Values.historyApi.certificate.secretName }}
{{- else if ne .Values.historyApi.certificate.source "secret" }}
{{- printf "%s-history-api-tls" (include "etcdconfig.fullname" .) }}
{{- else }}
{{- fail "historyApi.certificate.secretName is required with historyApi.certificate.source=secret" }}
{{- end }}
{{- end }}

{{/* The ClusterRole users bind to read history (not prefixed with the release). */}}
{{- define "etcdconfig.historyReaderRole" -}}
{{- .Values.historyApi.readerRoleName | default "etcdconfig-history-reader" }}
{{- end }}
