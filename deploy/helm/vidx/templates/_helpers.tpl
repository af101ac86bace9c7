{{/* The chart's name, or nameOverride. */}}
{{- define "vidx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name every object starts with (<=63 characters). */}}
{{- define "vidx.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (default .Chart.Name .Values.nameOverride) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (default .Chart.Name .Values.nameOverride) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "vidx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vidx.labels" -}}
helm.sh/chart: {{ include "vidx.chart" . }}
{{ include "vidx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vidx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vidx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret the pods load as environment variables. */}}
{{- define "vidx.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "vidx.fullname" . }}-secrets
{{- end }}
{{- end }}

{{- define "vidx.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Environment of every vidx container: the values Kubernetes objects must agree on (ports, the
Kafka topic and group KEDA watches) override the config file as VIDX__SECTION__KEY.
*/}}
{{- define "vidx.env" -}}
- name: VIDX__SERVER__LISTEN
  value: "0.0.0.0:{{ .Values.ports.grpc }}"
- name: VIDX__SERVER__METRICS_LISTEN
  value: "0.0.0.0:{{ .Values.ports.metrics }}"
- name: VIDX__KAFKA__BROKERS
  value: {{ .Values.kafka.brokers | quote }}
- name: VIDX__KAFKA__TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: VIDX__KAFKA__GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
- name: HF_HOME
  value: /var/cache/huggingface
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
{{- end }}
{{- end }}

{{/* Pod annotations: roll the pods when the config changes; Prometheus scraping. */}}
{{- define "vidx.podAnnotations" -}}
checksum/config: {{ .Values.config | sha256sum }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* The config file, the data dir and /tmp: the root filesystem is read-only. */}}
{{- define "vidx.volumeMounts" -}}
- name: config
  mountPath: /etc/vidx
  readOnly: true
- name: data
  mountPath: /var/lib/vidx
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "vidx.configVolume" -}}
- name: config
  configMap:
    name: {{ include "vidx.fullname" . }}-config
    items:
      - key: vidx.toml
        path: vidx.toml
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "vidx.sharedClaimName" -}}
{{- if .Values.sharedVolume.existingClaim }}
{{- .Values.sharedVolume.existingClaim }}
{{- else }}
{{- include "vidx.fullname" . }}-shared
{{- end }}
{{- end }}

{{- define "vidx.modelCacheVolume" -}}
- name: model-cache
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end }}
{{- end }}
