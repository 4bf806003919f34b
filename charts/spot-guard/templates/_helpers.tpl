{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "spot-guard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; the release name alone when it already holds the chart's. */}}
{{- define "spot-guard.fullname" -}}
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

{{- define "spot-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spot-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spot-guard.labels" -}}
{{ include "spot-guard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.customLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "spot-guard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "spot-guard.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "spot-guard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Values that cannot work here stop the install with the reason. */}}
{{- define "spot-guard.checkValues" -}}
{{- if .Values.enableSqsTerminationDraining -}}
{{- fail "enableSqsTerminationDraining: true turns on NTH's queue-processor mode; this chart runs IMDS mode only (one agent per spot node, reading its own instance metadata). Set it to false, or keep NTH's chart for queue-processor mode." -}}
{{- end -}}
{{- end -}}

{{/* Non-empty when the DaemonSet is wanted: NTH creates its Linux DaemonSet when
targetNodeOs names linux; unset or empty means linux here. */}}
{{- define "spot-guard.onLinux" -}}
{{- $os := lower (toString (.Values.targetNodeOs | default "linux")) -}}
{{- if contains "linux" $os }}true{{ end -}}
{{- end -}}

{{/* The Go Spot Guard fork's spotGuard keys whose meaning is the same here, by the key
they stand for. */}}
{{- define "spot-guard.forkAliases" -}}
spotAsgName: spotASGName
onDemandAsgName: onDemandASGName
scaleBack.minWait: minimumWaitDuration
scaleBack.stabilityPeriod: spotStabilityDuration
scaleBack.utilizationCeiling: maxClusterUtilization
scaleBack.preScale.enabled: enablePreScale
scaleBack.preScale.timeout: preScaleTimeout
scaleBack.preScale.targetUtilization: preScaleTargetUtilization
scaleBack.preScale.safetyBuffer: preScaleSafetyBuffer
scaleBack.preScale.fallbackThreshold: preScaleFallbackThreshold
{{- end -}}

{{/* The fork's keys with no equivalent here, with the reason each has no effect. */}}
{{- define "spot-guard.forkIgnored" -}}
podEvictionTimeout: every drain here, scale-back's too, is bounded by nodeTerminationGracePeriod
cleanupInterval: the fork's chart never passed it to its agent; nothing here needs cleaning up
maxEventAge: the fork's chart never passed it to its agent; nothing here needs cleaning up
podMigrationBuffer: Cluster Autoscaler protection of a bought node lasts spotGuard.newNodeProtection here
preScaleFailureFallback: after spotGuard.scaleBack.preScale.timeout the ceiling becomes preScale.fallbackThreshold, as the fork's increase_threshold does
preScaleRetryBackoff: pre-scale buys once per fallback, recorded on the Node
{{- end -}}

{{/* (list .Values.spotGuard "key.path"): the fork's alias of the key when given (it is
not in values.yaml, so only a user's file sets it), else the key's own value. */}}
{{- define "spot-guard.spotGuardValue" -}}
{{- $sg := index . 0 -}}
{{- $key := index . 1 -}}
{{- $fork := index $sg (index (include "spot-guard.forkAliases" . | fromYaml) $key) -}}
{{- if and (not (kindIs "invalid" $fork)) (ne (toString $fork) "") -}}
{{- $fork -}}
{{- else -}}
{{- $ours := $sg -}}
{{- range splitList "." $key }}{{ $ours = index $ours . }}{{ end -}}
{{- $ours -}}
{{- end -}}
{{- end -}}

{{/* NTH's values that have no effect in this chart, with NTH's defaults, by reason. */}}
{{- define "spot-guard.nthIgnored" -}}
"queue-processor mode only (this chart runs IMDS mode)":
  replicas: 1
  strategy: {}
  podDisruptionBudget: {}
  priorityClassName: system-cluster-critical
  topologySpreadConstraints: []
  queueURL: ""
  workers: 10
  checkASGTagBeforeDraining: true
  checkTagBeforeDraining: true
  managedAsgTag: aws-node-termination-handler/managed
  managedTag: aws-node-termination-handler/managed
  useProviderId: false
  completeLifecycleActionDelaySeconds: -1
  deleteSqsMsgIfNodeNotFound: false
  heartbeatInterval: -1
  heartbeatUntil: -1
  sqsMsgVisibilityTimeoutSec: 20
"Windows nodes only (this agent is Linux-only)":
  windowsPodLabels: {}
  windowsPodAnnotations: {}
  windowsDnsPolicy: ClusterFirst
  windowsNodeSelector: {}
  windowsAffinity: {}
  windowsTolerations: []
"PodSecurityPolicy is gone since Kubernetes 1.25 (this chart needs 1.25 or later)":
  rbac.pspEnabled: true
"test credentials are not passed to the agent (it uses IRSA or Pod Identity; put AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in extraEnv for a test endpoint)":
  awsAccessKeyID: null
  awsSecretAccessKey: null
{{- end -}}

{{/* (list .Values "a.b"): the value at a dotted path as JSON; null when missing. */}}
{{- define "spot-guard.valueAt" -}}
{{- $value := index . 0 -}}
{{- $found := true -}}
{{- range splitList "." (index . 1) -}}
{{- if and $found (kindIs "map" $value) (hasKey $value .) }}{{ $value = index $value . }}{{ else }}{{ $found = false }}{{ end -}}
{{- end -}}
{{- if $found }}{{ toJson $value }}{{ else }}null{{ end -}}
{{- end -}}
