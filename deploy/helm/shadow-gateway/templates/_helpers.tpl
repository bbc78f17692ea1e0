{{/* The chart's name, or nameOverride. */}}
{{- define "shadow-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The gateway's objects' name. A release named shadow-gateway (the documented install) gets the
kustomize base's names: shadow-gateway, shadow-gateway-student, shadow-gateway-migrate.
*/}}
{{- define "shadow-gateway.fullname" -}}
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

{{- define "shadow-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shadow-gateway.studentName" -}}
{{- printf "%s-student" (include "shadow-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shadow-gateway.migrateName" -}}
{{- printf "%s-migrate" (include "shadow-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shadow-gateway.configName" -}}
{{- printf "%s-config" (include "shadow-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; pass (dict "context" $ "component" "gateway"). Never change on upgrade. */}}
{{- define "shadow-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadow-gateway.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every object's labels: the standard set, plus the selector labels. */}}
{{- define "shadow-gateway.labels" -}}
helm.sh/chart: {{ include "shadow-gateway.chart" .context }}
{{ include "shadow-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: shadow-gateway
{{- end }}

{{- define "shadow-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "shadow-gateway.studentImage" -}}
{{- printf "%s:%s" .Values.student.image.repository (default .Chart.AppVersion .Values.student.image.tag) }}
{{- end }}

{{/* The config file: values `config`, with templates in its strings expanded (tpl). */}}
{{- define "shadow-gateway.configYaml" -}}
{{- tpl (toYaml .Values.config) . }}
{{- end }}

{{/* The env vars read from existingSecret; pass (dict "context" $ "names" list). */}}
{{- define "shadow-gateway.secretEnv" -}}
{{- range .names }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $.context.Values.existingSecret }}
      key: {{ . }}
{{- end }}
{{- end }}

{{/* The gateway's and the migrations' pod securityContext: the image's user, never root. */}}
{{- define "shadow-gateway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
