#!/usr/bin/env bash
# @tensorflow/tfjs from the npm registry, for the test that runs converted TF.js models in
# headless Chromium. Installed into .cache/npm (ignored by git); tests look there.
set -euo pipefail
dest=.cache/npm
if [ -f "$dest/node_modules/@tensorflow/tfjs/dist/tf.min.js" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: npm is missing; the TF.js browser test will be skipped" >&2
  exit 0
fi
mkdir -p "$dest"
npm install --silent --no-audit --no-fund --prefix "$dest" @tensorflow/tfjs@4.22.0 >/dev/null 2>&1
