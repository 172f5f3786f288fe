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

{{/* A label selector of every executor pool's pods, enabled or not. */}}
{{- define "dlp.executorPods" -}}
matchLabels:
  {{- include "dlp.selectorLabels" (dict "root" . "component" "") | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: ["executor-cpu", "executor-gpu"]
{{- end -}}

{{/* Name of the Secret with the Flight SQL users. */}}
{{- define "dlp.authSecretName" -}}
{{- default (printf "%s-auth" (include "dlp.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/*
The data of the chart's users Secret. `users`: user:bcrypt-hash lines, from auth.users;
else the user `dlp` with a generated password, which `password` holds for you to read
(the scheduler mounts only `users`). An upgrade keeps the generated password (lookup),
also one that an earlier chart version kept in plain text in `users`.
*/}}
{{- define "dlp.authData" -}}
{{- if .Values.auth.users -}}
{{- $users := "" -}}
{{- range .Values.auth.users -}}
{{- $users = printf "%s%s:%s\n" $users .name .passwordHash -}}
{{- end -}}
users: {{ $users | b64enc | quote }}
{{- else -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace (include "dlp.authSecretName" .) -}}
{{- $data := dict -}}
{{- if and $live $live.data -}}
{{- $data = $live.data -}}
{{- end -}}
{{- $users := index $data "users" | default "" | b64dec -}}
{{- $password := index $data "password" | default "" | b64dec -}}
{{- if and $password (regexMatch "^dlp:\\$2[aby]\\$" $users) -}}
{{- /* kept as it is */ -}}
{{- else if regexMatch "^dlp:[A-Za-z0-9]{32}\n?$" $users -}}
{{- $password = trimPrefix "dlp:" $users | trim -}}
{{- $users = printf "%s\n" (htpasswd "dlp" $password) -}}
{{- else -}}
{{- $password = randAlphaNum 32 -}}
{{- $users = printf "%s\n" (htpasswd "dlp" $password) -}}
{{- end -}}
users: {{ $users | b64enc | quote }}
password: {{ $password | b64enc | quote }}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with the cluster secret (key `secret`). */}}
{{- define "dlp.clusterSecretName" -}}
{{- default (printf "%s-cluster" (include "dlp.fullname" .)) .Values.clusterSecret.existingSecret -}}
{{- end -}}

{{/* Name of a data, model or scheduler state claim (pass a dict: root, volume = data|models|state). */}}
{{- define "dlp.claimName" -}}
{{- $v := index .root.Values.persistence .volume -}}
{{- default (printf "%s-%s" (include "dlp.fullname" .root) .volume) $v.existingClaim -}}
{{- end -}}

{{/* The plugin's config file, dlp.yaml. */}}
{{/* --data-root and --model-dir of the scheduler and the executors. */}}
{{- define "dlp.dataArgs" -}}
{{- $o := .Values.storage.objectStore -}}
- --model-dir={{ ternary $o.modelDir "/models" (and $o.enabled (ne $o.modelDir "")) }}
{{- if $o.enabled }}
{{- range $o.dataRoots }}
- --data-root={{ . }}
{{- end }}
{{- else }}
- --data-root=/data
{{- end }}
{{- range .Values.storage.writableRoots }}
- --writable-root={{ . }}
{{- end }}
{{- end -}}

{{/* Environment of the scheduler and the executors: the work directory, and in
object-storage mode the standard AWS variables. */}}
{{- define "dlp.storageEnv" -}}
{{- $o := .Values.storage.objectStore -}}
- name: DLP_WORK_DIR
  value: {{ ternary $o.workDir "/data/.dlp-work" $o.enabled }}
{{- if $o.enabled }}
{{- with $o.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $o.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $o.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- end -}}

{{/* Whether the models come from the models volume. */}}
{{- define "dlp.modelsVolume" -}}
{{- if not (and .Values.storage.objectStore.enabled .Values.storage.objectStore.modelDir) }}true{{ end -}}
{{- end -}}

{{- define "dlp.config" -}}
{{- $o := .Values.storage.objectStore -}}
{{- if and $o.enabled $o.settings -}}
storage:
  {{- toYaml $o.settings | nindent 2 }}
{{ end -}}
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
{{- if and .Values.auth.admins .Values.auth.allowAnonymous -}}
{{- fail "auth.admins needs authentication: auth.allowAnonymous is true" -}}
{{- end -}}
{{- if .Values.auth.users -}}
{{- $names := list -}}
{{- range .Values.auth.users }}{{ $names = append $names .name }}{{ end -}}
{{- range .Values.auth.admins -}}
{{- if not (has . $names) -}}
{{- fail (printf "auth.admins: %s is not one of auth.users (%s)" . (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $o := .Values.storage.objectStore -}}
{{- range .Values.storage.writableRoots -}}
{{- if $o.enabled -}}
{{- if not (regexMatch "^(s3|s3a|gs|az|abfss)://[^/]+" .) -}}
{{- fail (printf "storage.writableRoots: %s is not a bucket URL; with storage.objectStore.enabled there is no shared volume, and outputs go to object storage (e.g. s3://dlp-out/)" .) -}}
{{- end -}}
{{- else if not (or (eq . "/data") (hasPrefix "/data/" .)) -}}
{{- fail (printf "storage.writableRoots: %s is not under /data (the only shared, writable volume)" .) -}}
{{- end -}}
{{- end -}}
{{- if $o.enabled -}}
{{- if not $o.workDir -}}
{{- fail "storage.objectStore.workDir is required with storage.objectStore.enabled: the logistic regression's parts must be where every executor reads them (e.g. s3://dlp-work/cluster)" -}}
{{- end -}}
{{- if not $o.dataRoots -}}
{{- fail "storage.objectStore.dataRoots is empty: name the URL prefixes clients may read (e.g. s3://images/)" -}}
{{- end -}}
{{- end -}}
{{- with .Values.persistence.state -}}
{{- if and .enabled .existingClaim (has .existingClaim (list (include "dlp.claimName" (dict "root" $ "volume" "data")) (include "dlp.claimName" (dict "root" $ "volume" "models")))) -}}
{{- fail (printf "persistence.state.existingClaim: %s is the data or model claim, which every pod mounts and users read with SQL; the scheduler's state (job records of every user) needs a claim of its own" .existingClaim) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.auth.allowAnonymous) (not .Values.metrics.basicAuthSecret) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.basicAuthSecret while authentication is on: /api/metrics answers only an admin user (auth.admins); name a Secret with the keys username and password of one" -}}
{{- end -}}
{{- end -}}
