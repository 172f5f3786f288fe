{{/* Chart name, or nameOverride. */}}
{{- define "dlp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every object's name: the release name when it contains the chart name (so
`helm install dlp helm/dlp` gives dlp-scheduler, dlp-executor-cpu, ... as the kustomize
manifests do), else <release>-<chart>; or fullnameOverride.
*/}}
{{- define "dlp.fullname" -}}
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

{{/* Labels that selectors use (pass a dict: root, component). */}}
{{- define "dlp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dlp.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Every object's labels (pass a dict: root, component; component may be empty). */}}
{{- define "dlp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "dlp.selectorLabels" . }}
{{- end -}}

{{/* An image reference (pass a dict: root, image, defaultTag). */}}
{{- define "dlp.image" -}}
{{- $repo := .image.repository -}}
{{- with .root.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (default .defaultTag .image.tag) -}}
{{- end -}}

{{/* Deployment names of the executor pools. */}}
{{- define "dlp.executorName" -}}
{{- printf "%s-executor-%s" (include "dlp.fullname" .root) .pool -}}
{{- end -}}

{{/* Name of the Secret with the Flight SQL users. */}}
{{- define "dlp.authSecretName" -}}
{{- default (printf "%s-auth" (include "dlp.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/*
The `users` file of the chart's Secret: auth.users, else what the Secret already holds
(an upgrade keeps the generated password), else user `dlp` with a random password.
*/}}
{{- define "dlp.authUsers" -}}
{{- if .Values.auth.users -}}
{{- range .Values.auth.users }}{{ printf "%s:%s\n" .name .password }}{{ end -}}
{{- else -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (include "dlp.authSecretName" .) -}}
{{- if and $live $live.data (index $live.data "users") -}}
{{- index $live.data "users" | b64dec -}}
{{- else -}}
{{- printf "dlp:%s\n" (randAlphaNum 32) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a data or model claim (pass a dict: root, volume = data|models). */}}
{{- define "dlp.claimName" -}}
{{- $v := index .root.Values.persistence .volume -}}
{{- default (printf "%s-%s" (include "dlp.fullname" .root) .volume) $v.existingClaim -}}
{{- end -}}

{{/* The plugin's config file, dlp.yaml. */}}
{{- define "dlp.config" -}}
autoscaler:
  enabled: {{ .Values.autoscaling.enabled }}
  namespace: ""
  intervalSeconds: {{ .Values.autoscaling.intervalSeconds }}
  cooldownSeconds: {{ .Values.autoscaling.cooldownSeconds }}
{{- range $pool := list "cpu" "gpu" }}
{{- $p := index $.Values.executors $pool }}
  {{ $pool }}:
    deployment: {{ include "dlp.executorName" (dict "root" $ "pool" $pool) }}
    minReplicas: {{ ternary $p.minReplicas 0 $p.enabled }}
    maxReplicas: {{ ternary $p.maxReplicas 0 $p.enabled }}
    tasksPerExecutor: {{ $p.vcores }}
    idleSeconds: {{ $p.idleSeconds }}
{{- end }}
{{- end -}}

{{/* Pod securityContext shared by the scheduler and the executors. */}}
{{- define "dlp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container securityContext shared by the scheduler and the executors. */}}
{{- define "dlp.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Checks across values that the schema cannot express; fails the render. */}}
{{- define "dlp.validate" -}}
{{- $minimum := 0 -}}
{{- range $pool := list "cpu" "gpu" -}}
{{- $p := index $.Values.executors $pool -}}
{{- if $p.enabled -}}
{{- if gt (int $p.minReplicas) (int $p.maxReplicas) -}}
{{- fail (printf "executors.%s.minReplicas (%d) is above maxReplicas (%d)" $pool (int $p.minReplicas) (int $p.maxReplicas)) -}}
{{- end -}}
{{- $minimum = add $minimum (ternary $p.minReplicas $p.replicas $.Values.autoscaling.enabled) -}}
{{- end -}}
{{- end -}}
{{- if gt (int .Values.scheduler.minReadyExecutors) (int $minimum) -}}
{{- fail (printf "scheduler.minReadyExecutors (%d) is above the executors that always run (%d): the scheduler would never be ready, and clients could not reach it to start work; lower it (0 is fine) or raise a pool's minReplicas" (int .Values.scheduler.minReadyExecutors) (int $minimum)) -}}
{{- end -}}
{{- if and .Values.auth.existingSecret .Values.auth.users -}}
{{- fail "auth.existingSecret and auth.users exclude each other" -}}
{{- end -}}
{{- end -}}
