#!/usr/bin/env bash
# litert-torch, the direct PyTorch -> TFLite converter behind `shipyard convert ... --to tflite
# --via litert-torch`, in a converter environment of its own: $VENV/envs/litert-torch.
# Why not the main environment: litert-torch 0.10 pulls pydantic 2.11 and typing_extensions 4.12
# (through litert-lm-builder / jax), which would downgrade the main environment's pydantic 2.14 and
# typing_extensions 4.16 that other parts need. shipyard runs the conversion there as a subprocess
# (src/shipyard/convert/litert_torch.py); torch is the same 2.13.0 CPU build on both sides, so a
# torch.export program saved here loads there. Every version is pinned in litert-torch.txt
# (frozen from one resolution: they all come from the registry, nothing else is fetched).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
VENV="${VENV:-.venv}"
ENV_DIR="$VENV/envs/litert-torch"
lock="$here/litert-torch.txt"
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ -x "$ENV_DIR/bin/python" ] && [ "$(cat "$ENV_DIR/.shipyard-lock" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
base=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')
[ -x "$ENV_DIR/bin/python" ] || "$base" -m venv "$ENV_DIR"
# torch==2.13.0 is the local CPU wheel; any other torch spec would pull CUDA builds.
bash "$here/install.bash" "$ENV_DIR/bin/python" -r "$lock"
"$ENV_DIR/bin/python" -c "import litert_torch, torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null
echo "$want" > "$ENV_DIR/.shipyard-lock"
