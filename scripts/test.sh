#!/usr/bin/env bash
# Set everything up (cached venv, cached Kafka jars), check lint, types and doctests, and run the
# whole test suite.
# The suite starts its own Apache Kafka broker on 127.0.0.1 (tests/conftest.py).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k kafka -x`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "test: '$tool' not found: install Java 17 (openjdk-17-jdk-headless) and Maven (maven)" >&2; exit 2; }
done
# promtool, prometheus and Alertmanager (Debian's packages) for the alert-rule, live-Prometheus and
# alert-delivery tests.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
   || ! { command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing Debian's prometheus and prometheus-alertmanager packages" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager) >&2 \
      || echo "test: could not install prometheus/prometheus-alertmanager; those tests will skip" >&2
  else
    echo "test: promtool/prometheus/alertmanager missing (apt-get install prometheus prometheus-alertmanager); those tests will skip" >&2
  fi
fi
venv="$(scripts/bootstrap.sh)"
# Resolve Kafka's jars before pytest starts, so a first run shows Maven's progress, not a silent wait.
"$venv/bin/python" -c "from xtream.stream.kafka_broker import resolve_kafka_classpath as r; print('kafka jars:', r())"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Lint, types and the docstring examples first; each failure stops the command (set -e).
echo "test: ruff check (lint, import order)" >&2
"$venv/bin/ruff" check .
echo "test: mypy (strict on xtream.model and xtream.stream, see pyproject.toml)" >&2
"$venv/bin/mypy" -p xtream.errors -p xtream.model -p xtream.stream -p xtream.consumers
echo "test: doctests of the packages" >&2
"$venv/bin/python" -m pytest -p no:cacheprovider -q --doctest-modules xtream/errors.py xtream/model xtream/stream \
  xtream/consumers
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
