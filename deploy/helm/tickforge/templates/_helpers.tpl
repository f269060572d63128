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
{{- if .Values.fleet.enabled }}
{{- /* node_id and public_addr come from each pod's environment. */}}
{{- $_ := set $managed "fleet" (dict "lease_ttl_ms" (int .Values.fleet.leaseTtlMs) "max_matches" (int .Values.fleet.maxMatches)) }}
{{- end }}
{{- $config := mergeOverwrite (deepCopy (.Values.config | default dict)) $managed -}}
# Rendered by the tickforge chart. Secrets and passwords are not here: they
# reach the pod by environment (TICKFORGE_SECRET, REDIS_URL), and so do a
# fleet node's id and public address (TICKFORGE_NODE_ID, TICKFORGE_PUBLIC_ADDR).
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

{{/*
Checks the node and fleet values; renders nothing. Without a fleet one node
owns every match of its store, so more replicas would fight over them.
*/}}
{{- define "tickforge.checkNodes" -}}
{{- $fleet := .Values.fleet }}
{{- if hasKey (.Values.config | default dict) "fleet" }}
{{- fail "config.fleet: the chart writes [fleet] itself; set fleet.enabled, fleet.leaseTtlMs and fleet.maxMatches instead (node ids and public addresses come from each pod)" }}
{{- end }}
{{- if $fleet.enabled }}
{{- if ne .Values.storage.backend "redis" }}
{{- fail (printf "fleet.enabled needs storage.backend: redis (the nodes of a fleet share one Redis: leases, the node directory, the match logs), not %q" .Values.storage.backend) }}
{{- end }}
{{- $ttl := int $fleet.leaseTtlMs }}
{{- if or (lt $ttl 500) (gt $ttl 600000) }}
{{- fail (printf "fleet.leaseTtlMs must be 500 to 600000, not %v" $fleet.leaseTtlMs) }}
{{- end }}
{{- if lt (int $fleet.maxMatches) 1 }}
{{- fail (printf "fleet.maxMatches must be at least 1, not %v" $fleet.maxMatches) }}
{{- end }}
{{- $mode := $fleet.publicAddress.mode }}
{{- if eq $mode "perPodService" }}
{{- $perPod := $fleet.publicAddress.perPodService }}
{{- if not (has $perPod.type (list "LoadBalancer" "NodePort")) }}
{{- fail (printf "fleet.publicAddress.perPodService.type must be LoadBalancer or NodePort, not %q" $perPod.type) }}
{{- end }}
{{- if not (contains "{pod}" ($perPod.address | default "")) }}
{{- fail (printf "fleet.publicAddress.perPodService.address must be the host:port players reach each pod at, with {pod} for the pod name (e.g. \"{pod}.games.example.net:4433\"), not %q" ($perPod.address | default "")) }}
{{- end }}
{{- $port := $perPod.port | default .Values.service.quicPort | int }}
{{- if and (eq $perPod.type "LoadBalancer") (not (hasSuffix (printf ":%d" $port) $perPod.address)) }}
{{- fail (printf "fleet.publicAddress.perPodService.address %q must end with the per-pod Services' port :%d (perPodService.port, default service.quicPort)" $perPod.address $port) }}
{{- end }}
{{- else if eq $mode "hostPort" }}
{{- $host := $fleet.publicAddress.hostPort.host | default "" }}
{{- if not (or (contains "{hostIP}" $host) (contains "{nodeName}" $host)) }}
{{- fail (printf "fleet.publicAddress.hostPort.host must contain {hostIP} or {nodeName}, so each node advertises its own host, not %q" $host) }}
{{- end }}
{{- else }}
{{- fail (printf "fleet.publicAddress.mode must be hostPort or perPodService, not %q" $mode) }}
{{- end }}
{{- else if gt (int .Values.replicas) 1 }}
{{- fail (printf "replicas: %v needs fleet.enabled: true (and Redis). A node outside a fleet owns every match of its store: several would each restore every match (on Redis) or split players between separate stores (memory)" .Values.replicas) }}
{{- end }}
{{- end }}

{{/* The QUIC port on the Kubernetes node (fleet hostPort mode). */}}
{{- define "tickforge.fleet.hostPort" -}}
{{- .Values.fleet.publicAddress.hostPort.port | default .Values.service.quicPort | int }}
{{- end }}

{{/*
TICKFORGE_PUBLIC_ADDR of a fleet pod, with the downward API variables
Kubernetes expands in it: $(TICKFORGE_NODE_ID), $(POD_HOST_IP),
$(POD_NODE_NAME).
*/}}
{{- define "tickforge.fleet.publicAddr" -}}
{{- $address := .Values.fleet.publicAddress }}
{{- if eq $address.mode "hostPort" }}
{{- $host := $address.hostPort.host | replace "{hostIP}" "$(POD_HOST_IP)" | replace "{nodeName}" "$(POD_NODE_NAME)" }}
{{- printf "%s:%s" $host (include "tickforge.fleet.hostPort" .) }}
{{- else }}
{{- $address.perPodService.address | replace "{pod}" "$(TICKFORGE_NODE_ID)" }}
{{- end }}
{{- end }}
