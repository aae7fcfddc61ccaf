{{/* Chart name. */}}
{{- define "vplab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name; short enough for the suffixes used below (-serve, -gateway, -store). */}}
{{- define "vplab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vplab.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "vplab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vplab.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Common labels. Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "vplab.labels" -}}
helm.sh/chart: {{ include "vplab.chart" .ctx }}
{{ include "vplab.selectorLabels" . }}
app.kubernetes.io/part-of: vplab
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end -}}

{{/* Image reference; a digest wins over the tag ("repo:tag@sha256:..."). Call with an image dict. */}}
{{- define "vplab.image" -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" .repository .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "vplab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vplab.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vplab.secretName" -}}
{{- default (printf "%s-secrets" (include "vplab.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "vplab.configMapName" -}}
{{- printf "%s-config" (include "vplab.fullname" .) -}}
{{- end -}}

{{/* The Kubernetes Service in front of Serve's proxies (HTTP 8000 + gRPC 9000), created by KubeRay. */}}
{{- define "vplab.serveServiceName" -}}
{{- printf "%s-serve" (include "vplab.fullname" .) -}}
{{- end -}}

{{- define "vplab.storeName" -}}
{{- printf "%s-store" (include "vplab.fullname" .) -}}
{{- end -}}

{{/* The generated app list (python -m vplab.serving.chart, from vplab.serving.apps). */}}
{{- define "vplab.apps" -}}
{{- .Files.Get "files/apps.json" -}}
{{- end -}}

{{/* S3 endpoint (host:port) the services use: the bundled store or the external one. */}}
{{- define "vplab.s3Endpoint" -}}
{{- if .Values.objectStore.bundled.enabled -}}
{{- printf "%s:%d" (include "vplab.storeName" .) (int .Values.objectStore.bundled.port) -}}
{{- else -}}
{{- required "objectStore.endpoint is required when objectStore.bundled.enabled is false" .Values.objectStore.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "vplab.s3Secure" -}}
{{- if .Values.objectStore.bundled.enabled -}}false{{- else -}}{{ .Values.objectStore.secure }}{{- end -}}
{{- end -}}

{{/* Ray custom resource that pins Serve apps of a role to that worker group. */}}
{{- define "vplab.roleResource" -}}
{{- $name := index .apps.pin_roles.resources .role | default "" -}}
{{- if not $name -}}
{{- fail (printf "ray.workerGroups.%s: no Serve application has role %s" .role .role) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Checksum of configuration so pods roll when it changes. */}}
{{- define "vplab.configChecksum" -}}
{{- $cm := include (print .Template.BasePath "/configmap.yaml") . -}}
{{- $sec := include (print .Template.BasePath "/secret.yaml") . -}}
{{- printf "%s%s" $cm $sec | sha256sum -}}
{{- end -}}

{{/* Pod-level security context shared by all pods (non-root, uid of the Ray images). */}}
{{- define "vplab.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "vplab.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* envFrom: settings ConfigMap + credentials Secret. */}}
{{- define "vplab.envFrom" -}}
- configMapRef:
    name: {{ include "vplab.configMapName" . }}
- secretRef:
    name: {{ include "vplab.secretName" . }}
{{- end -}}
