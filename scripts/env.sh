# Sourced by the other scripts: create or reuse the project's virtual environment.
#
# The environment lives in .venv at the repository root and is installed from
# requirements.lock, the exact, hashed set of packages the baselines were made with, then
# the project itself without dependencies. It is reinstalled whenever pyproject.toml or
# the lock changes, so `git pull` followed by either script is always enough.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORA_CORE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# The lock holds torch's CPU build, which PyPI does not carry; it is looked for on
# PyTorch's CPU index when pip's own configuration does not find it.
TORCH_INDEX="${LORA_CORE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating the virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.lora_core-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing the locked environment (requirements.lock) into $VENV"
  lock=(python -m pip install --quiet --require-hashes -r "$ROOT/requirements.lock")
  if ! "${lock[@]}"; then
    echo "Retrying with PyTorch's CPU index ($TORCH_INDEX) for torch's CPU build"
    "${lock[@]}" --extra-index-url "$TORCH_INDEX"
  fi
  python -m pip install --quiet --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi
cd "$ROOT"
