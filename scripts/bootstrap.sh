#!/usr/bin/env bash
# Create (once) and reuse a virtualenv kept outside the clone, keyed on the dependency spec,
# so that repeated runs and CI do not download torch again. Prints the venv path on stdout.
#
#   XTREAM_CACHE   where venvs and Kafka jars are cached (default ~/.cache/xtream)
#   PYTHON         interpreter to build the venv with (default python3.11, else python3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${XTREAM_CACHE:-$HOME/.cache/xtream}"
py="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
if [ -z "$py" ]; then
  echo "bootstrap: Python 3.11+ is required (install python3.11)" >&2; exit 2
fi
"$py" - <<'PY' >&2 || { echo "bootstrap: Python >= 3.11 is required, found $("$py" --version)" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
# The key covers what pip would install: runtime + dev dependencies and the interpreter version.
key="$("$py" - "$root/pyproject.toml" <<'PY'
import hashlib, sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
spec = "\n".join(sorted(p["dependencies"]) + sorted(p.get("optional-dependencies", {}).get("dev", [])))
spec += "\n" + sys.version.split()[0]
print(hashlib.sha256(spec.encode()).hexdigest()[:12])
PY
)"
venv="$cache/venv-$key"
wheels="$root/../shared/wheels"
if [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: creating $venv (first run downloads ~1 GB of wheels; 3-8 min)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  findlinks=()
  [ -d "$wheels" ] && findlinks=(--find-links "$wheels")
  # Runtime and dev dependencies only; the project itself is installed editable below.
  "$venv/bin/python" - "$root/pyproject.toml" > "$cache/requirements-$key.txt" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p.get("optional-dependencies", {}).get("dev", [])))
PY
  "$venv/bin/python" -m pip install --progress-bar off "${findlinks[@]}" -r "$cache/requirements-$key.txt" >&2
  touch "$venv/.complete"
fi
# (Re)point the editable install at this clone: cheap, and CI clones live in other folders.
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" >&2
ln -sfn "$venv" "$root/.venv"
echo "$venv"
