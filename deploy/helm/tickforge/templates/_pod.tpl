{{/*
The tickforge pod template, shared by the single node's Deployment and the
fleet's StatefulSet. Rendered at indent 0; include it with nindent.
*/}}
{{- define "tickforge.podTemplate" -}}
{{- $redis := eq .Values.storage.backend "redis" }}
{{- $credentials := .Values.redis.credentials | default dict }}
{{- $fleet := .Values.fleet.enabled -}}
metadata:
  labels:
    {{- include "tickforge.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.admin.port | quote }}
    prometheus.io/path: /metrics
    checksum/config: {{ include "tickforge.toml" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  # SIGTERM starts the drain; Kubernetes kills the pod only after the
  # drain deadline plus a margin.
  terminationGracePeriodSeconds: {{ add (int .Values.drainSeconds) (int .Values.terminationMarginSeconds) }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: tickforge
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve", "--config", "{{ include "tickforge.configDir" . }}/tickforge.toml"]
      env:
        {{- if $fleet }}
        {{- $publicAddr := include "tickforge.fleet.publicAddr" . }}
        # The node id of the fleet: the pod's stable name.
        - name: TICKFORGE_NODE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if contains "$(POD_HOST_IP)" $publicAddr }}
        - name: POD_HOST_IP
          valueFrom:
            fieldRef:
              fieldPath: status.hostIP
        {{- end }}
        {{- if contains "$(POD_NODE_NAME)" $publicAddr }}
        - name: POD_NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        {{- end }}
        # Where players reach this node; redirects name it. Kubernetes
        # expands $(...) from the variables above.
        - name: TICKFORGE_PUBLIC_ADDR
          value: {{ $publicAddr | quote }}
        {{- end }}
        - name: TICKFORGE_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "tickforge.ticketSecretName" . }}
              key: {{ .Values.ticketSecret.key }}
        {{- if $redis }}
        {{- $url := printf "%s:%d" (include "tickforge.redis.host" .) (int .Values.redis.port) }}
        {{- $scheme := ternary "rediss" "redis" (.Values.redis.tls | default false) }}
        {{- if $credentials.secretName }}
        - name: REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $credentials.secretName }}
              key: {{ $credentials.passwordKey | default "password" }}
        # Kubernetes expands $(REDIS_PASSWORD) from the variable above.
        - name: REDIS_URL
          value: "{{ $scheme }}://:$(REDIS_PASSWORD)@{{ $url }}"
        {{- else }}
        - name: REDIS_URL
          value: "{{ $scheme }}://{{ $url }}"
        {{- end }}
        {{- end }}
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: quic
          containerPort: {{ .Values.service.quicPort }}
          protocol: UDP
          {{- if and $fleet (eq .Values.fleet.publicAddress.mode "hostPort") }}
          # Also this port of the Kubernetes node: one fleet node per
          # Kubernetes node (the scheduler places no two on one).
          hostPort: {{ include "tickforge.fleet.hostPort" . }}
          {{- end }}
        - name: admin
          containerPort: {{ .Values.admin.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: ["ALL"]
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: {{ include "tickforge.configDir" . }}
          readOnly: true
        - name: data
          mountPath: {{ include "tickforge.dataDir" . }}
        {{- if .Values.tls.secretName }}
        - name: tls
          mountPath: {{ include "tickforge.tlsDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "tickforge.fullname" . }}
    # The development certificate, when no tls.secretName is given.
    - name: data
      emptyDir: {}
    {{- if .Values.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
