#!/usr/bin/env bash
# onnx2tf, the ONNX -> TFLite / SavedModel converter behind `shipyard convert x.onnx --to tflite`.
# It pins tensorflow==2.19, protobuf==4.25, onnx==1.19, onnxruntime==1.23 exactly, yet its code
# runs under this environment's TF 2.21 / protobuf 7 / onnx 1.23 (measured and tested:
# docs/convert.md, tests/test_onnx_to_tf.py), so it goes in --no-deps with the few small
# packages it imports, each pinned here. onnx-graphsurgeon 0.6.1, not the 0.5.8 it pins: 0.5.8
# calls onnx.helper.float32_to_bfloat16, which onnx 1.23 removed. tf-keras matches TF 2.21.
set -euo pipefail
PY="${VENV:-.venv}/bin/python"
pins=("onnx2tf==1.29.24" "onnx-graphsurgeon==0.6.1" "sng4onnx==2.0.1" "sne4onnx==2.0.1" "tf-keras==2.21.0")
bash "$(dirname "$0")/pip-no-deps.bash" "${pins[@]}"
# Its unpinned imports that the rest of the stack may not bring (requests and h5py come with TF).
"$PY" -c "import psutil" 2>/dev/null || bash "$(dirname "$0")/install.bash" "$PY" "psutil>=5.9"
