"""A converted TF.js graph model, loaded by the real @tensorflow/tfjs in headless Chromium."""
from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from shipyard.convert.api import convert_model

ROOT = Path(__file__).resolve().parents[1]
TFJS = ROOT / ".cache/npm/node_modules/@tensorflow/tfjs/dist/tf.min.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html><html><body><pre id="out">pending</pre>
<script src="tf.min.js"></script>
<script>
(async () => {
  const out = document.getElementById('out');
  try {
    await tf.setBackend('cpu');
    const model = await tf.loadGraphModel('model/model.json');
    const inp = await (await fetch('input.json')).json();
    const x = tf.tensor(inp.data, inp.shape, 'float32');
    const name = model.inputs[0].name;
    const y = model.execute({[name]: x});
    const t = Array.isArray(y) ? y[0] : y;
    out.textContent = JSON.stringify({ok: true, shape: t.shape, data: Array.from(await t.data()), backend: tf.getBackend()});
  } catch (e) {
    out.textContent = JSON.stringify({ok: false, error: String(e)});
  }
})();
</script></body></html>"""


@pytest.fixture
def served(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _run_page(url: str, profile: Path) -> dict:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
         "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r'<pre id="out">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(html.unescape(match.group(1)))


# scripts/setup installs both; in CI their absence is a failure, not a skip.
@pytest.mark.skipif((CHROMIUM is None or not TFJS.is_file()) and not os.environ.get("CI"),
                    reason="needs Chromium and @tensorflow/tfjs (run scripts/setup)")
def test_converted_model_runs_in_chromium_like_keras(keras_example, served, tmp_path_factory):
    _, paths, x, ref = keras_example
    site, base = served
    convert_model(str(paths["keras"]), "tfjs", site / "model")
    shutil.copy(TFJS, site / "tf.min.js")
    (site / "index.html").write_text(PAGE)
    (site / "input.json").write_text(json.dumps({"shape": list(x.shape), "data": x.ravel().tolist()}))
    result = _run_page(f"{base}/index.html", tmp_path_factory.mktemp("chromium-profile"))
    assert result["ok"], result
    assert result["backend"] == "cpu"
    got = np.array(result["data"], dtype=np.float32).reshape(result["shape"])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
