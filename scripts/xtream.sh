#!/usr/bin/env bash
# Run the `xtream` CLI from the cached venv, creating it first if needed: scripts/xtream.sh --help
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/bootstrap.sh")"
exec "$venv/bin/xtream" "$@"
