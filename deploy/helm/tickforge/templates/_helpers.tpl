{{/* The chart name. */}}
{{- define "tickforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource names: <release>-tickforge unless overridden. */}}
{{- define "tickforge.fullname" -}}
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

{{- define "tickforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "tickforge.selectorLabels" . }}
{{- end }}

{{- define "tickforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tickforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "tickforge.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tickforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "tickforge.redis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "tickforge.redis.selectorLabels" . }}
{{- end }}

{{/* The Secret holding the ticket secret. */}}
{{- define "tickforge.ticketSecretName" -}}
{{- default (printf "%s-ticket" (include "tickforge.fullname" .)) .Values.ticketSecret.existingSecret }}
{{- end }}

{{/*
The bundled Redis' Service (and StatefulSet) name: the first label of
redis.host when one is given, so that host names it; else <fullname>-redis.
*/}}
{{- define "tickforge.redis.serviceName" -}}
{{- if .Values.redis.host }}
{{- $label := first (splitList "." .Values.redis.host) }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $label) }}
{{- fail (printf "redis.enabled with redis.host %q: the bundled Redis Service is named after the host's first label, and %q is not a valid Service name" .Values.redis.host $label) }}
{{- end }}
{{- $label }}
{{- else }}
{{- printf "%s-redis" (include "tickforge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The Redis host tickforge connects to. */}}
{{- define "tickforge.redis.host" -}}
{{- if .Values.redis.host }}
{{- .Values.redis.host }}
{{- else if .Values.redis.enabled }}
{{- printf "%s.%s.svc" (include "tickforge.redis.serviceName" .) .Release.Namespace }}
{{- else }}
{{- fail "storage.backend is redis: set redis.host (an existing Redis) or redis.enabled (a bundled one)" }}
{{- end }}
{{- end }}

{{/* Mount paths. */}}
{{- define "tickforge.configDir" -}}/etc/tickforge{{- end }}
{{- define "tickforge.tlsDir" -}}/etc/tickforge-tls{{- end }}
{{- define "tickforge.dataDir" -}}/var/lib/tickforge{{- end }}

{{/*
tickforge.toml: .Values.config with the keys the chart manages set over it.
Tables of scalars and lists; a nested map becomes a sub-table.
*/}}
{{- define "tickforge.toml" -}}
{{- $backend := .Values.storage.backend }}
{{- if not (has $backend (list "memory" "redis")) }}
{{- fail (printf "storage.backend must be \"memory\" or \"redis\", not %q" $backend) }}
{{- end }}
{{- $net := dict "listen" (printf "0.0.0.0:%d" (int .Values.service.quicPort)) }}
{{- if .Values.tls.secretName }}
{{- $_ := set $net "cert" (printf "%s/tls.crt" (include "tickforge.tlsDir" .)) }}
{{- $_ := set $net "key" (printf "%s/tls.key" (include "tickforge.tlsDir" .)) }}
{{- else }}
{{- $_ := set $net "dev_cert" (printf "%s/dev-cert.der" (include "tickforge.dataDir" .)) }}
{{- $_ := set $net "dev_key" (printf "%s/dev-key.der" (include "tickforge.dataDir" .)) }}
{{- end }}
{{- $managed := dict
      "server" (dict "drain_seconds" (int .Values.drainSeconds))
      "net" $net
      "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.admin.port)))
      "storage" (dict "backend" $backend) }}
{{- $config := mergeOverwrite (deepCopy (.Values.config | default dict)) $managed -}}
# Rendered by the tickforge chart. Secrets and passwords are not here: they
# reach the pod by environment (TICKFORGE_SECRET, REDIS_URL).
{{- range $table, $entries := $config }}
{{- if not (kindIs "map" $entries) }}
{{- fail (printf "config.%s must be a table (a map of keys), e.g. config.engine.tick_hz" $table) }}
{{- end }}

[{{ $table }}]
{{- range $key, $value := $entries }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $key, $value := $entries }}
{{- if kindIs "map" $value }}

[{{ $table }}.{{ $key }}]
{{- range $subkey, $subvalue := $value }}
{{ $subkey }} = {{ toJson $subvalue }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The bundled Redis' redis.conf. */}}
{{- define "tickforge.redis.conf" -}}
# Redis as tickforge's match store (assets/redis/redis.conf explains each
# setting). The password, if any, is passed on stdin at start.
bind * -::*
port {{ (int .Values.redis.port) }}
protected-mode no
dir /data
dbfilename tickforge.rdb
appenddirname appendonlydir
# Durability: AOF fsynced every second plus an RDB snapshot.
appendonly {{ .Values.redis.appendonly }}
appendfsync {{ .Values.redis.appendfsync }}
save {{ .Values.redis.save }}
# Never evict match logs: a full Redis refuses writes instead.
maxmemory-policy noeviction
{{- with .Values.redis.maxmemory }}
maxmemory {{ . }}
{{- end }}
# Large replies for restore reads of long logs.
client-output-buffer-limit normal 0 0 0
{{- end }}
