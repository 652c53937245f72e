{{/* Names and labels. */}}

{{- define "peerserver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-peerserver", or the release's name alone when it already says peerserver. */}}
{{- define "peerserver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "peerserver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peerserver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "peerserver.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "peerserver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The workers' pods, and nothing else (the migrate job's and coturn's pods have other components). */}}
{{- define "peerserver.workerSelectorLabels" -}}
{{ include "peerserver.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "peerserver.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret that holds DJANGO_SECRET_KEY, PEERJS_TURN_SECRET and PEERJS_METRICS_TOKEN. */}}
{{- define "peerserver.secretName" -}}
{{ .Values.secrets.existingSecret | default (include "peerserver.fullname" .) }}
{{- end }}

{{/*
The longest a worker's drain takes after SIGTERM, in seconds: DRAIN_TIMEOUT in
signaling/services.py (tests/test_helm_chart.py checks that they agree).
*/}}
{{- define "peerserver.drainSeconds" -}}10{{- end }}

{{/* How long nginx waits after the worker's preStop before it stops: the worker's sockets close through it first. */}}
{{- define "peerserver.nginxPreStopSeconds" -}}
{{ add .Values.worker.preStopSleepSeconds (include "peerserver.drainSeconds" .) 2 }}
{{- end }}

{{/* The ICE server URLs handed out: turn.urls, or the chart's coturn's. */}}
{{- define "peerserver.turnUrls" -}}
{{- if .Values.turn.urls }}
{{- join "," .Values.turn.urls }}
{{- else if .Values.coturn.enabled }}
{{- $at := printf "%s:%d" (required "coturn.host: the name browsers reach the TURN nodes at" .Values.coturn.host) (int .Values.coturn.port) }}
{{- printf "stun:%s,turn:%s?transport=udp,turn:%s?transport=tcp" $at $at $at }}
{{- end }}
{{- end }}

{{/*
The environment of the workers and the migrate job (one list, so that the job
migrates the database the workers use). Plain settings as values; secrets
only by reference to a Secret.
*/}}
{{- define "peerserver.env" -}}
{{- range $name := list "DJANGO_SECRET_KEY" "PEERJS_TURN_SECRET" "PEERJS_METRICS_TOKEN" "PEERJS_TOKEN_SECRET" "DATABASE_URL" "REDIS_URL" }}
{{- if hasKey $.Values.env $name }}
{{- fail (printf "env.%s is a secret, and env values end up in the pod spec in plain text: put it in a Secret (secrets.existingSecret, database.existingSecret, redis.existingSecret or extraEnvFrom)" $name) }}
{{- end }}
{{- end }}
{{- $plain := dict
  "DJANGO_DEBUG" "0"
  "DJANGO_HTTPS" (ternary "1" "0" .Values.django.https)
  "DJANGO_ALLOWED_HOSTS" (prepend .Values.django.extraAllowedHosts .Values.host | uniq | join ",")
  "ASGI_SERVER" .Values.worker.server
  "ASGI_HOST" .Values.worker.host
  "ASGI_PORT" .Values.worker.port
  "PEERJS_METRICS_ALLOW" (join "," .Values.metrics.allow)
}}
{{- if .Values.nginx.enabled }}
{{- /* nginx in the pod is the one proxy, at the pod's loopback. */}}
{{- $_ := set $plain "PEERJS_PROXIED" "1" }}
{{- $_ := set $plain "PEERJS_TRUSTED_PROXIES" "127.0.0.1,::1" }}
{{- else if .Values.ingress.enabled }}
{{- $_ := set $plain "PEERJS_PROXIED" "1" }}
{{- $_ := set $plain "PEERJS_TRUSTED_PROXIES" (join "," (required "ingress.trustedProxies: the Ingress controller's pod networks" .Values.ingress.trustedProxies)) }}
{{- end }}
{{- with include "peerserver.turnUrls" . }}
{{- $_ := set $plain "PEERJS_TURN_URLS" . }}
{{- end }}
{{- if .Values.redis.cluster }}
{{- $_ := set $plain "REDIS_CLUSTER" "1" }}
{{- end }}
{{- if .Values.redis.sentinel.enabled }}
{{- /* The workers' Sentinel settings (docs/cluster.md): the sentinels, the master set, whether they take the password, and TLS. */}}
{{- $_ := set $plain "PEERJS_REDIS_SENTINELS" (join "," (required "redis.sentinel.hosts: each sentinel as host:port" .Values.redis.sentinel.hosts)) }}
{{- $_ := set $plain "PEERJS_REDIS_SENTINEL_MASTER" (required "redis.sentinel.masterSet" .Values.redis.sentinel.masterSet) }}
{{- if .Values.redis.sentinel.auth }}
{{- $_ := set $plain "PEERJS_REDIS_SENTINEL_AUTH" "1" }}
{{- end }}
{{- if .Values.redis.sentinel.tls }}
{{- $_ := set $plain "PEERJS_REDIS_SENTINEL_TLS" "1" }}
{{- end }}
{{- end }}
{{- range $name, $value := merge (dict) .Values.env $plain }}
{{- /* Numbers from values files arrive as floats: 67108864 would print as 6.7108864e+07. */}}
{{- $text := toString $value }}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $text = int64 $value | toString }}
{{- end }}
- name: {{ $name }}
  value: {{ $text | quote }}
{{- end }}
{{- range $name := list "DJANGO_SECRET_KEY" "PEERJS_TURN_SECRET" "PEERJS_METRICS_TOKEN" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "peerserver.secretName" $ }}
      key: {{ $name }}
{{- end }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default (include "peerserver.fullname" .) }}
      key: {{ ternary .Values.database.existingSecretKey "DATABASE_URL" (ne .Values.database.existingSecret "") }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default (include "peerserver.fullname" .) }}
      key: {{ ternary .Values.redis.existingSecretKey "REDIS_URL" (ne .Values.redis.existingSecret "") }}
{{- end }}

{{/* Values that cannot work together, refused with what to change. */}}
{{- define "peerserver.validate" -}}
{{- if and .Values.nginx.enabled .Values.ingress.enabled }}
{{- fail "nginx.enabled puts the project's nginx at the edge (a LoadBalancer Service): set ingress.enabled=false. Behind an Ingress, nginx would tell the workers the Ingress's scheme, not the browser's." }}
{{- end }}
{{- $drain := int (include "peerserver.drainSeconds" .) }}
{{- $needed := add .Values.worker.preStopSleepSeconds $drain }}
{{- if .Values.nginx.enabled }}
{{- $needed = add (include "peerserver.nginxPreStopSeconds" .) .Values.nginx.shutdownTimeoutSeconds }}
{{- end }}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "worker.terminationGracePeriodSeconds=%v must be more than %d s: the preStop sleep (%v s), the worker's drain (up to %d s)%s" .Values.worker.terminationGracePeriodSeconds $needed .Values.worker.preStopSleepSeconds $drain (ternary " and nginx's wait after it" "" .Values.nginx.enabled)) }}
{{- end }}
{{- if and (not .Values.redis.url) (not .Values.redis.existingSecret) }}
{{- fail "redis.url or redis.existingSecret: the workers reach each other's peers through Redis" }}
{{- end }}
{{- if and (not .Values.database.url) (not .Values.database.existingSecret) }}
{{- fail "database.url or database.existingSecret: the workers share one PostgreSQL registry" }}
{{- end }}
{{- if and .Values.redis.cluster .Values.redis.sentinel.enabled }}
{{- fail "redis.cluster and redis.sentinel.enabled: a Redis Cluster has no sentinels; choose one" }}
{{- end }}
{{- end }}
