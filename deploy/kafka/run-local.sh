#!/usr/bin/env bash
# Start a single-node Apache Kafka (KRaft) on 127.0.0.1:${PORT:-9092} in the foreground.
# Jars are resolved from Maven Central on first use (needs Java 17+ and Maven), then cached.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$("$root/scripts/bootstrap.sh")"
exec "$venv/bin/python" -m xtream.stream.kafka_broker --port "${PORT:-9092}" ${DATA_DIR:+--data-dir "$DATA_DIR"} "$@"
