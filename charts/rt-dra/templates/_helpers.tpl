{{/* The one image of every component: repository:tag (the tag defaults to the chart's appVersion). */}}
{{- define "rt-dra.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
