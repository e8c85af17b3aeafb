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

{{/* The NATS URL: configured, or the official chart's release `nats` in this namespace (the
short name unless clusterDomain is given: no cluster domain is assumed). */}}
{{- define "sse-relay.natsUrl" -}}
{{- $host := printf "nats.%s.svc" .Release.Namespace -}}
{{- if .Values.clusterDomain }}{{ $host = printf "%s.%s" $host .Values.clusterDomain }}{{ end -}}
{{- default (printf "nats://%s:4222" $host) .Values.nats.url -}}
{{- end -}}

{{/* Whether more than one replica runs (a PodDisruptionBudget is rendered only then). */}}
{{- define "sse-relay.multipleReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.minReplicas) 1 }}true{{ end -}}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end -}}
{{- end -}}

{{/* The Secret holding JWT material: an existing one, or the one this chart makes. */}}
{{- define "sse-relay.authSecretName" -}}
{{- default (printf "%s-auth" (include "sse-relay.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}


{{/* Labels of the `helm test` pod. Not the relay's selector labels: with them the Deployment's
ReplicaSet would adopt the pod, the Service would route to it and the relay's NetworkPolicy
would lock it in. */}}
{{- define "sse-relay.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "sse-relay.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end -}}

{{/* The OTLP collector's port: the endpoint's own, else the protocol's (or https') default. */}}
{{- define "sse-relay.otelPort" -}}
{{- $url := urlParse .Values.otel.endpoint -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" -}}
{{- if $port -}}{{ $port }}
{{- else if eq $url.scheme "https" -}}443
{{- else if eq .Values.otel.protocol "grpc" -}}4317
{{- else -}}4318
{{- end -}}
{{- end -}}

{{/* An image reference (repository[:tag] or repository@digest) with global.imageRegistry in
place of its registry (or in front, when it names none): call with (dict "ref" ... "registry" ...). */}}
{{- define "sse-relay.withRegistry" -}}
{{- $ref := .ref -}}
{{- if .registry -}}
{{- $parts := splitList "/" $ref -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $ref = join "/" (rest $parts) -}}
{{- end -}}
{{- $ref = printf "%s/%s" (trimSuffix "/" .registry) $ref -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The relay's image: by digest when one is given, else by tag (the chart's appVersion). */}}
{{- define "sse-relay.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- if .Values.image.digest }}{{ $ref = printf "%s@%s" .Values.image.repository .Values.image.digest }}{{ end -}}
{{- include "sse-relay.withRegistry" (dict "ref" $ref "registry" (.Values.global.imageRegistry | default "")) -}}
{{- end -}}
