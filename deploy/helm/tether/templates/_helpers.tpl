{{/*
Names, labels, the five services, each service's configuration file, and a
small TOML writer (Helm's own toToml writes every number as a float, which
the services' integer keys refuse).
*/}}

{{- define "tether.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tether.fullname" -}}
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

{{/* The services: values key → name (the SPIFFE path, the image, the
binary without its `tether-` prefix). Whether a service keeps state
(and so needs PostgreSQL for more than one replica). */}}
{{- define "tether.services" -}}
identityExchange: {name: identity-exchange, stateful: true}
policyDecision: {name: policy-decision, stateful: false}
credentialIssuer: {name: credential-issuer, stateful: true}
cibaOrchestrator: {name: ciba-orchestrator, stateful: true}
agentFacade: {name: agent-facade, stateful: true}
{{- end -}}

{{- define "tether.chartLabel" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Labels of one service's objects. Argument: dict root, name. */}}
{{- define "tether.labels" -}}
helm.sh/chart: {{ include "tether.chartLabel" .root }}
{{ include "tether.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tether
{{- end -}}

{{- define "tether.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* A NetworkPolicy peer that selects one service's pods. */}}
{{- define "tether.peer" -}}
- podSelector:
    matchLabels:
      {{- include "tether.selectorLabels" . | nindent 6 }}
{{- end -}}

{{- define "tether.image" -}}
{{- $img := .root.Values.image -}}
{{- $repo := printf "%s/%s" $img.repositoryPrefix .name -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $repo }}{{ end -}}
{{- if $img.digest -}}
{{ $repo }}@{{ $img.digest }}
{{- else -}}
{{ $repo }}:{{ default .root.Chart.AppVersion $img.tag }}
{{- end -}}
{{- end -}}

{{/* The replica count the service is told (server.replicas): the
Deployment's, or the autoscaler's maximum. */}}
{{- define "tether.replicas" -}}
{{- $svc := index .root.Values.services .key -}}
{{- if $svc.autoscaling.enabled -}}
{{ max (int $svc.replicas) (int $svc.autoscaling.maxReplicas) }}
{{- else -}}
{{ int $svc.replicas }}
{{- end -}}
{{- end -}}

{{/* Whether the data volume is a PersistentVolumeClaim: one replica
that keeps something on it, the SQLite store or a key generated at first
start (the identity exchange's signing keys, the audit log's key) that
must outlive the pod. */}}
{{- define "tether.usesPvc" -}}
{{- $v := .root.Values -}}
{{- $svc := index $v.services .key -}}
{{- $info := index (include "tether.services" .root | fromYaml) .key -}}
{{- $generatedKey := or (and (eq .key "identityExchange") (not $svc.signingKeys.existingSecret)) (and (eq .key "agentFacade") (not $svc.audit.keySecret)) -}}
{{- if and $info.stateful $svc.persistence.enabled (eq (include "tether.replicas" .) "1") (or (not $v.postgres.enabled) $generatedKey) -}}
true
{{- end -}}
{{- end -}}

{{- define "tether.tlsSecret" -}}
{{- if .root.Values.tls.certManager.enabled -}}
{{ include "tether.fullname" .root }}-{{ .name }}-tls
{{- else -}}
{{ index .root.Values.tls.existingSecrets .key }}
{{- end -}}
{{- end -}}

{{- define "tether.url" -}}
https://{{ include "tether.fullname" .root }}-{{ .name }}:{{ (index .root.Values.services .key).port }}
{{- end -}}

{{/* ---------------------------------------------------------------
Each service's configuration (as YAML, before the operator's `config`
is merged over it).
--------------------------------------------------------------- */}}

{{- define "tether.config.server" -}}
{{- $v := .root.Values -}}
{{- if and (gt (int $v.shutdown.shutdownDelaySeconds) 0) (ge (int $v.shutdown.shutdownDelaySeconds) (int $v.shutdown.drainTimeoutSeconds)) -}}
{{- fail "shutdown.shutdownDelaySeconds must be less than shutdown.drainTimeoutSeconds: the delay is part of the drain deadline" -}}
{{- end -}}
server:
  listen: {{ printf "0.0.0.0:%d" (int (index $v.services .key).port) | quote }}
  ops_listen: {{ printf "0.0.0.0:%d" (int $v.ops.port) | quote }}
  shutdown_delay_secs: {{ int $v.shutdown.shutdownDelaySeconds }}
  drain_timeout_secs: {{ int $v.shutdown.drainTimeoutSeconds }}
  tls:
    cert_file: /var/run/tether/tls/tls.crt
    key_file: /var/run/tether/tls/tls.key
    ca_file: /var/run/tether/tls/ca.crt
    trust_domain: {{ $v.trustDomain | quote }}
    reload_interval_ms: {{ int $v.tls.reloadIntervalMs }}
{{- end -}}

{{- define "tether.config.sessions" -}}
sessions:
  token_issuer: {{ .root.Values.issuer | quote }}
  audience: {{ .root.Values.facadeAudience | quote }}
  jwks_url: {{ printf "%s/.well-known/jwks.json" (include "tether.url" (dict "root" .root "key" "identityExchange" "name" "identity-exchange")) | quote }}
  identity_exchange: {{ include "tether.url" (dict "root" .root "key" "identityExchange" "name" "identity-exchange") | quote }}
{{- end -}}

{{- define "tether.config.identityExchange" -}}
{{- $v := .root.Values -}}
{{- $svc := $v.services.identityExchange -}}
issuer: {{ $v.issuer | quote }}
{{- if not $v.postgres.enabled }}
store:
  url: "sqlite:///var/lib/tether/identity-exchange.db?mode=rwc"
{{- end }}
tokens:
  {{- if $svc.signingKeys.existingSecret }}
  keys_dir: /etc/tether/signing-keys
  rotate_after_secs: 0
  {{- else }}
  keys_dir: /var/lib/tether/keys
  {{- end }}
{{- end -}}

{{- define "tether.config.policyDecision" -}}
policy:
  dir: /etc/tether/policies
  watch: true
{{- end -}}

{{- define "tether.config.credentialIssuer" -}}
{{- $v := .root.Values -}}
vault:
  address: {{ $v.vault.address | quote }}
  request_timeout_ms: {{ int $v.vault.requestTimeoutMs }}
  {{- if $v.vault.caConfigMap }}
  ca_cert_file: /etc/tether/vault-ca/ca.crt
  {{- end }}
  auth:
    {{- if eq $v.vault.auth.method "kubernetes" }}
    method: kubernetes
    mount: {{ $v.vault.auth.kubernetes.mount | quote }}
    role: {{ $v.vault.auth.kubernetes.role | quote }}
    jwt_path: /var/run/secrets/tether/vault/token
    {{- else }}
    method: approle
    mount: {{ $v.vault.auth.approle.mount | quote }}
    role_id: {{ $v.vault.auth.approle.roleId | quote }}
    secret_id_file: {{ printf "/etc/tether/vault-approle/%s" $v.vault.auth.approle.key | quote }}
    {{- end }}
store:
  data_dir: /var/lib/tether
{{ include "tether.config.sessions" . }}
{{- end -}}

{{- define "tether.config.cibaOrchestrator" -}}
{{- $v := .root.Values -}}
{{- $svc := $v.services.cibaOrchestrator -}}
ciba:
  issuer: {{ $v.idp.issuer | quote }}
  client_id: {{ $svc.clientId | quote }}
  {{- if $svc.ping.enabled }}
  delivery_mode: ping
  notification_endpoint: {{ $svc.ping.notificationEndpoint | quote }}
  {{- else }}
  delivery_mode: poll
  {{- end }}
  client_auth:
    method: {{ $svc.clientAuth.method }}
    {{- if eq $svc.clientAuth.method "private_key_jwt" }}
    key_file: {{ printf "/etc/tether/ciba-client/%s" $svc.clientAuth.key | quote }}
    {{- else }}
    secret_file: {{ printf "/etc/tether/ciba-client/%s" $svc.clientAuth.key | quote }}
    {{- end }}
{{- if $svc.ping.enabled }}
ping:
  listen: {{ printf "0.0.0.0:%d" (int $svc.ping.port) | quote }}
{{- end }}
store:
  data_dir: /var/lib/tether
{{ include "tether.config.sessions" . }}
{{- end -}}

{{- define "tether.config.agentFacade" -}}
{{- $v := .root.Values -}}
{{- $svc := $v.services.agentFacade -}}
upstreams:
  identity_exchange: {{ include "tether.url" (dict "root" .root "key" "identityExchange" "name" "identity-exchange") | quote }}
  policy_decision: {{ include "tether.url" (dict "root" .root "key" "policyDecision" "name" "policy-decision") | quote }}
  credential_issuer: {{ include "tether.url" (dict "root" .root "key" "credentialIssuer" "name" "credential-issuer") | quote }}
  ciba_orchestrator: {{ include "tether.url" (dict "root" .root "key" "cibaOrchestrator" "name" "ciba-orchestrator") | quote }}
policy:
  entities_file: /etc/tether/entities/entities.json
audit:
  data_dir: /var/lib/tether
  {{- if $svc.audit.keySecret }}
  key_file: {{ printf "/etc/tether/audit-key/%s" $svc.audit.key | quote }}
  {{- end }}
monitoring:
  enabled: true
  data_dir: /var/lib/tether
{{ include "tether.config.sessions" . }}
{{- end -}}

{{/* The whole configuration of one service as a map: the chart's part,
then the operator's `config` merged over it. */}}
{{- define "tether.config" -}}
{{- $base := include "tether.config.server" . | fromYaml -}}
{{- $own := include (printf "tether.config.%s" .key) . | fromYaml -}}
{{- $user := deepCopy (index .root.Values.services .key).config | default dict -}}
{{- $merged := mergeOverwrite $base $own $user -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* ---------------------------------------------------------------
TOML writer. Maps become tables, lists of maps arrays of tables, and
anything inside an array of tables is written inline. Whole numbers are
written as integers; null values are left out.
--------------------------------------------------------------- */}}

{{- define "tether.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "tether.toml.value" -}}
{{- if kindIs "string" . -}}
{{ toJson . }}
{{- else if kindIs "bool" . -}}
{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ printf "%v" . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
{{ printf "%d" . }}
{{- else if kindIs "slice" . -}}
{{- $items := list -}}
{{- range . -}}{{- if not (kindIs "invalid" .) -}}{{- $items = append $items (include "tether.toml.value" .) -}}{{- end -}}{{- end -}}
[{{ join ", " $items }}]
{{- else if kindIs "map" . -}}
{{- $items := list -}}
{{- range $k := keys . | sortAlpha -}}{{- $x := index $ $k -}}{{- if not (kindIs "invalid" $x) -}}{{- $items = append $items (printf "%s = %s" (include "tether.toml.key" $k) (include "tether.toml.value" $x)) -}}{{- end -}}{{- end -}}
{{- if $items }}{ {{ join ", " $items }} }{{ else }}{}{{ end -}}
{{- else -}}
{{- fail (printf "cannot write %v (%s) as TOML" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{- define "tether.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) (kindIs "map" (first .)) -}}true{{- end -}}
{{- end -}}

{{/* Argument: dict path (list of keys), table (map). */}}
{{- define "tether.toml.table" -}}
{{- $path := .path -}}
{{- $t := .table -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $x := index $t $k -}}
{{- if and (not (kindIs "invalid" $x)) (not (kindIs "map" $x)) (not (include "tether.toml.isTableArray" $x)) }}
{{ include "tether.toml.key" $k }} = {{ include "tether.toml.value" $x }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $x := index $t $k -}}
{{- $keys := list -}}
{{- range (append $path $k) -}}{{- $keys = append $keys (include "tether.toml.key" .) -}}{{- end -}}
{{- if kindIs "map" $x }}

[{{ join "." $keys }}]
{{- include "tether.toml.table" (dict "path" (append $path $k) "table" $x) -}}
{{- else if include "tether.toml.isTableArray" $x -}}
{{- range $el := $x }}

[[{{ join "." $keys }}]]
{{- range $ek := keys $el | sortAlpha -}}
{{- $ev := index $el $ek -}}
{{- if not (kindIs "invalid" $ev) }}
{{ include "tether.toml.key" $ek }} = {{ include "tether.toml.value" $ev }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tether.toml" -}}
{{- include "tether.toml.table" (dict "path" list "table" .) | trim -}}
{{- end -}}
