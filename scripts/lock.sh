# Regenerate requirements.lock: every package of the full environment (the library, every
# extra, dev tools), pinned with hashes, for CPython 3.11 on Linux x86-64, where the
# baselines were made. Run it after adding or changing a dependency in pyproject.toml:
#
#     bash scripts/lock.sh            # needs pip-tools (the dev extra has it)
#
# Extras are read with --all-extras, so a new extra is locked without editing this file.
# torch's exact version and build come from requirements/pins.txt. Its CPU wheel is not
# on PyPI: pip must find it through its own configuration (a local find-links folder), or
# set LORA_CORE_TORCH_INDEX=https://download.pytorch.org/whl/cpu to add PyTorch's CPU index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
extra=()
if [ -n "${LORA_CORE_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$LORA_CORE_TORCH_INDEX"); fi
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$PYTHON" -m piptools compile --quiet "${extra[@]}" \
  --all-extras --generate-hashes --strip-extras --allow-unsafe \
  --constraint requirements/pins.txt \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --output-file requirements.lock \
  pyproject.toml
