{{- define "sse-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sse-relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sse-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sse-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sse-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sse-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: relay
{{- end -}}

{{- define "sse-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sse-relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The NATS URL: configured, or the official chart's release `nats` in this namespace. */}}
{{- define "sse-relay.natsUrl" -}}
{{- default (printf "nats://nats.%s.svc.cluster.local:4222" .Release.Namespace) .Values.nats.url -}}
{{- end -}}

{{/* The Secret holding JWT material: an existing one, or the one this chart makes. */}}
{{- define "sse-relay.authSecretName" -}}
{{- default (printf "%s-auth" (include "sse-relay.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

