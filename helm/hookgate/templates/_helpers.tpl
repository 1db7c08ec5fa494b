{{/* Names and labels. */}}
{{- define "hookgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hookgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "hookgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "hookgate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hookgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hookgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "hookgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "hookgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hookgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the pod finds what the chart mounts. The TOML refers to these paths. */}}
{{- define "hookgate.paths" -}}
config: /etc/hookgate/config/hookgate.toml
tls: /etc/hookgate/tls
clientCA: /etc/hookgate/client-ca
spoolKey: /etc/hookgate/spool-key
secrets: /etc/hookgate/secrets
data: /var/lib/hookgate
dataDir: /var/lib/hookgate/data
{{- end -}}

{{- define "hookgate.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "hookgate.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}
{{- define "hookgate.clientCASecretName" -}}
{{- default (printf "%s-client-ca" (include "hookgate.fullname" .)) .Values.tls.clientCA.existingSecret -}}
{{- end -}}
{{- define "hookgate.spoolKeySecretName" -}}
{{- default (printf "%s-spool-key" (include "hookgate.fullname" .)) .Values.spoolKey.existingSecret -}}
{{- end -}}
{{- define "hookgate.providerSecretName" -}}
{{- default (printf "%s-providers" (include "hookgate.fullname" .)) .Values.providerSecrets.existingSecret -}}
{{- end -}}
{{- define "hookgate.brokerSecretName" -}}
{{- default (printf "%s-broker" (include "hookgate.fullname" .)) .Values.broker.existingSecret -}}
{{- end -}}

{{- define "hookgate.sharedSecretName" -}}
{{- default (printf "%s-shared" (include "hookgate.fullname" .)) .Values.sharedStore.existingSecret -}}
{{- end -}}

{{/*
A duration of the gateway's config ("250ms", "20s", "5m", "1h") in whole seconds, rounded up. Fails on
anything else, naming the value.
*/}}
{{- define "hookgate.seconds" -}}
{{- $d := toString . -}}
{{- if regexMatch "^[0-9]+ms$" $d -}}{{- div (add (trimSuffix "ms" $d | atoi) 999) 1000 -}}
{{- else if regexMatch "^[0-9]+s$" $d -}}{{- trimSuffix "s" $d | atoi -}}
{{- else if regexMatch "^[0-9]+m$" $d -}}{{- mul (trimSuffix "m" $d | atoi) 60 -}}
{{- else if regexMatch "^[0-9]+h$" $d -}}{{- mul (trimSuffix "h" $d | atoi) 3600 -}}
{{- else -}}{{- fail (printf "hookgate: cannot read the duration %q (use e.g. \"20s\", \"5m\")" $d) -}}
{{- end -}}
{{- end -}}

{{/* Checks across values, rendered by every manifest that depends on them (the StatefulSet and the ConfigMap). */}}
{{- define "hookgate.validate" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if and (gt $replicas 1) (not .Values.sharedStore.enabled) -}}
{{- fail (printf "hookgate: replicaCount is %d but sharedStore.enabled is false. Each replica would keep its own dedup index and order state, so a provider retry answered by another replica would be published a second time and out-of-order events would go unnoticed. Set sharedStore.enabled=true and sharedStore.url=redis://... (one Redis every replica reaches), or replicaCount=1." $replicas) -}}
{{- end -}}
{{- if and .Values.sharedStore.enabled (not .Values.sharedStore.existingSecret) (not (regexMatch "^rediss?://" (toString .Values.sharedStore.url))) -}}
{{- fail "hookgate: sharedStore.enabled is true but sharedStore.url is not a redis:// or rediss:// URL (or give sharedStore.existingSecret)" -}}
{{- end -}}
{{- if and .Values.sharedStore.url .Values.sharedStore.existingSecret -}}
{{- fail "hookgate: give either sharedStore.url or sharedStore.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.broker.url .Values.broker.existingSecret -}}
{{- fail "hookgate: give either broker.url or broker.existingSecret, not both" -}}
{{- end -}}
{{- if and (not .Values.broker.url) (not .Values.broker.existingSecret) -}}
{{- fail "hookgate: set broker.url (amqp://user:pass@host:5672/vhost, kept in a Secret) or broker.existingSecret" -}}
{{- end -}}
{{- range $form := list "url" "url_env" "url_file" "urls" "urls_env" "urls_file" -}}
{{- if dig "broker" $form "" $.Values.config -}}
{{- fail (printf "hookgate: set the broker with broker.url or broker.existingSecret (kept in a Secret), not config.broker.%s: config.broker.urls would put the broker's credentials into the ConfigMap. For a RabbitMQ cluster give its nodes in broker.url separated by commas (tried in order, and in turn on reconnect), or point it at the cluster's client Service." $form) -}}
{{- end -}}
{{- end -}}
{{- if empty .Values.config.sources -}}
{{- fail "hookgate: config.sources is empty; add at least one source (see values.yaml)" -}}
{{- end -}}
{{- $drain := include "hookgate.seconds" (dig "server" "drain_timeout" "20s" .Values.config) | int -}}
{{- $needed := add $drain .Values.preStopSleepSeconds 7 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "hookgate: terminationGracePeriodSeconds (%d) must be at least config.server.drain_timeout (%ds) + preStopSleepSeconds (%d) + 7s (the process's own bound: drain_timeout + 5s, then 1s for blocking tasks), or Kubernetes kills the gateway before it has answered what is in flight" (int .Values.terminationGracePeriodSeconds) $drain (int .Values.preStopSleepSeconds)) -}}
{{- end -}}
{{- end -}}

{{/*
The gateway's TOML (SPEC §5): .Values.config as written, plus the keys the chart owns (listen addresses,
mounted file paths, data_dir, the shared store, the broker URLs' variable).
*/}}
{{- define "hookgate.config" -}}
{{- $p := include "hookgate.paths" . | fromYaml -}}
{{- $c := deepCopy .Values.config -}}
{{- $server := default dict $c.server -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.ports.https)) -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert" (printf "%s/tls.crt" $p.tls) "key" (printf "%s/tls.key" $p.tls) -}}
{{- if .Values.tls.clientCA.enabled -}}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" $p.clientCA) -}}
{{- if .Values.tls.clientCA.crlKeys -}}
{{- $crls := list -}}
{{- range .Values.tls.clientCA.crlKeys }}{{ $crls = append $crls (printf "%s/%s" $p.clientCA .) }}{{ end -}}
{{- $_ := set $tls "crls" $crls -}}
{{- end -}}
{{- end -}}
{{- $_ := set $server "tls" $tls -}}
{{- else -}}
{{- $_ := unset $server "tls" -}}
{{- end -}}
{{- $_ := set $c "server" $server -}}
{{- $_ := set $c "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin))) -}}
{{- $broker := default dict $c.broker -}}
{{- $_ := unset $broker "url" -}}
{{- /* urls_env: the Secret holds one URL, or a cluster's nodes separated by commas. */ -}}
{{- $_ := set $broker "urls_env" "HOOKGATE_BROKER_URL" -}}
{{- $_ := set $c "broker" $broker -}}
{{- $storage := default dict $c.storage -}}
{{- /* A directory of its own on the volume: the gateway makes it 0700 (the volume root belongs to root). */ -}}
{{- $_ := set $storage "data_dir" $p.dataDir -}}
{{- $_ := unset $storage "spool_key_env" -}}
{{- if .Values.spoolKey.enabled -}}
{{- $_ := set $storage "spool_key_file" (printf "%s/%s" $p.spoolKey .Values.spoolKey.key) -}}
{{- else -}}
{{- $_ := unset $storage "spool_key_file" -}}
{{- end -}}
{{- if .Values.sharedStore.enabled -}}
{{- $_ := unset $storage "shared" -}}
{{- $_ := set $storage "shared_env" "HOOKGATE_SHARED_URL" -}}
{{- $_ := set $storage "shared_prefix" (default (include "hookgate.fullname" .) .Values.sharedStore.prefix) -}}
{{- else -}}
{{- $_ := unset $storage "shared" -}}
{{- end -}}
{{- $_ := set $c "storage" $storage -}}
# Rendered by the hookgate Helm chart from .Values.config (plus the keys the chart owns). Do not edit in place.
{{ include "hookgate.toml.table" (dict "path" list "table" $c) }}
{{- end -}}

{{/* A minimal TOML writer: tables as [a.b] sections, lists and maps inside them inline; numbers stay integers. */}}
{{- define "hookgate.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end -}}

{{- define "hookgate.toml.value" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (floor .) }}{{ printf "%d" (int64 .) }}{{ else }}{{ . }}{{ end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "hookgate.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" . -}}
{ {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "hookgate.toml.key" $k }} = {{ include "hookgate.toml.value" (get $ $k) }}{{ end }} }
{{- else -}}
{{- fail (printf "hookgate: config value of kind %s cannot be written as TOML" (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{- define "hookgate.toml.table" -}}
{{- $path := .path -}}
{{- $t := .table -}}
{{- if $path }}
[{{ join "." $path }}]
{{- end }}
{{- range $k, $v := $t }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "hookgate.toml.key" $k }} = {{ include "hookgate.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $t }}
{{- if kindIs "map" $v }}
{{ include "hookgate.toml.table" (dict "path" (append $path (include "hookgate.toml.key" $k)) "table" $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A generated secret value that stays the same across upgrades: the value already in the live Secret (lookup),
else a new random one. `helm template` (no cluster) always generates.
*/}}
{{- define "hookgate.keptRandom" -}}
{{- $live := lookup "v1" "Secret" .namespace .secret -}}
{{- if and $live $live.data (hasKey $live.data .key) -}}
{{- index $live.data .key | b64dec -}}
{{- else -}}
{{- printf "%s%s" (default "" .prefix) (randBytes 32) -}}
{{- end -}}
{{- end -}}
