{{/* Chart name, overridable. */}}
{{- define "deployctl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name when it already contains the
chart name (release "deployctl" gives "deployctl", "deployctl-viewer", ...). */}}
{{- define "deployctl.fullname" -}}
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

{{- define "deployctl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "deployctl.commonLabels" -}}
helm.sh/chart: {{ include "deployctl.chart" . }}
app.kubernetes.io/name: {{ include "deployctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: deployctl
{{- end }}

{{/* Labels on the controller's own objects (its pods, Service, RBAC, ...). */}}
{{- define "deployctl.labels" -}}
{{ include "deployctl.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/* Labels that select the controller pods; never change them in an upgrade (the
Deployment selector is immutable). */}}
{{- define "deployctl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deployctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "deployctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "deployctl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "deployctl.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Refuse combinations that would run two writers or none. */}}
{{- define "deployctl.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile and write" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount, or no node could ever be drained" }}
{{- end }}
{{- end }}

{{/* What every person's role may read. */}}
{{- define "deployctl.viewerRules" -}}
- apiGroups: ["deployctl.dev"]
  resources: ["productionstacks", "productionstacks/status", "stackoperations", "stackoperations/status",
              "stacksnapshots", "stacksnapshots/status"]
  verbs: ["get", "list", "watch"]
# Revision history (`deployctl history`, `deployctl diff`).
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get", "list", "watch"]
# Events the controller records on stacks (`deployctl status`).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* The leader-election Lease: one per release. */}}
{{- define "deployctl.leaseName" -}}
{{- default (printf "%s-controller" (include "deployctl.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}
