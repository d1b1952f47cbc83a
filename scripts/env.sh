# Sourced by the other scripts: create or reuse the project's virtual environment.
#
# The environment lives in .venv at the repository root. It is (re)installed whenever
# pyproject.toml changes, so `git pull` followed by either script is always enough.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORA_CORE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating the virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.lora_core-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing lora_core and its dependencies into $VENV"
  python -m pip install --quiet --upgrade pip
  # torch is pinned exactly in pyproject.toml: a looser pin pulls a multi-GB CUDA build.
  python -m pip install --quiet -e "$ROOT[dev,peers,dask]"
  echo "$want" > "$stamp"
fi
cd "$ROOT"
