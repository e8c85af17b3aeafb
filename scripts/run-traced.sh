#!/usr/bin/env bash
# `make run TRACES=jaeger`: the demo with its traces in a local Jaeger (the all-in-one built from
# tools/jaeger: in-memory storage, OTLP on localhost:4317/4318, query API on localhost:16686).
# Ctrl-C stops the demo, its nats-server and Jaeger.
set -euo pipefail
JAEGER_BIN=${JAEGER_BIN:?JAEGER_BIN is set by the Makefile}
QUERY=http://localhost:16686
log=$(mktemp -t sse-relay-jaeger.XXXXXX.log)
# In a session of its own: Ctrl-C reaches the demo, which flushes its last spans to Jaeger,
# and Jaeger is stopped after it.
setsid "$JAEGER_BIN" >"$log" 2>&1 &
jaeger=$!
trap 'kill "$jaeger" 2>/dev/null; wait "$jaeger" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
  curl -fsS "$QUERY/api/v3/services" >/dev/null 2>&1 && break
  kill -0 "$jaeger" 2>/dev/null || { cat "$log"; echo "jaeger did not start (ports 4317, 4318, 16686 in use?)" >&2; exit 1; }
  sleep 0.2
done
cat <<MSG
Jaeger is running (log: $log). The demo's traces, service sse-relay:
  $QUERY/api/v3/traces?query.service_name=sse-relay&query.start_time_min=$(date -u +%Y-%m-%dT%H:%M:%SZ)&query.start_time_max=2100-01-01T00:00:00Z
  $QUERY/search?service=sse-relay   (the UI: a placeholder page in this source build; see README, Tracing)
MSG
export OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 OTEL_SERVICE_NAME=sse-relay
"$@"
