#!/usr/bin/env bash
# Build bench/.venv-trl112: TRL 1.12.0 (the last release with PPOTrainer) for
# bench/ppo_vs_trl.py.  torch is pinned to the local CPU wheel (2.13.0) first and
# kept there by a constraint, so pip never pulls a CUDA build.
# Usage: bash bench/trl112_venv.sh   (idempotent; PY=python3.11 to pick the interpreter)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-trl112"
PY="${PY:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import trl, sys; sys.exit(trl.__version__ != '1.12.0')" 2>/dev/null; then
  echo "ok: $venv already has trl 1.12.0"; exit 0
fi
"$PY" -m venv "$venv"
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
echo "torch==2.13.0" > "$cons"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==2.13.0"
# trl 1.12 declares its own transformers range; pip resolves it inside the constraint.
"$venv/bin/pip" install -q -c "$cons" "trl==1.12.0" "pyyaml"
"$venv/bin/python" - <<'PY'
import torch, transformers, trl
print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)
assert torch.__version__.startswith("2.13.0"), torch.__version__
try:
    from trl import PPOTrainer  # noqa: F401
except ImportError:
    from trl.experimental.ppo import PPOTrainer  # noqa: F401
print("PPOTrainer from", PPOTrainer.__module__)
PY
