"""TFRecord interop with TensorFlow in both directions, integrity checks, and records as inputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess
from shipyard import records, tf_example
from shipyard.records import RecordError


def _arrays(n=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 12, 12, 3)).astype("float32"), np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tensorflow_writes_shipyard_reads(tmp_path, compression):
    import tensorflow as tf

    images, labels = _arrays()
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path), options=tf.io.TFRecordOptions(compression_type=compression)) as writer:
        for img, label in zip(images, labels):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=img.ravel())),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"img{label}".encode()])),
            }))
            writer.write(ex.SerializeToString())
    decoded = [tf_example.decode(r) for r in records.iter_records(path)]
    assert len(decoded) == len(images)
    for d, img, label in zip(decoded, images, labels):
        np.testing.assert_array_equal(d["image"].reshape(img.shape), img)
        assert d["label"].tolist() == [label] and d["name"] == [f"img{label}".encode()]


@pytest.mark.parametrize("compressed", [False, True])
def test_shipyard_writes_tensorflow_reads(tmp_path, compressed):
    import tensorflow as tf

    images, labels = _arrays()
    path = tmp_path / "ours.tfrecord"
    n = records.write_records(path, (tf_example.encode({"image": i, "label": np.array([l]), "raw": b"\x00\x01"})
                                     for i, l in zip(images, labels)), compressed=compressed)
    assert n == len(images)
    spec = {"image": tf.io.FixedLenFeature([12 * 12 * 3], tf.float32), "label": tf.io.FixedLenFeature([1], tf.int64),
            "raw": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(str(path), compression_type="GZIP" if compressed else "")
    got = [tf.io.parse_single_example(r, spec) for r in ds]
    assert len(got) == len(images)
    for g, img, label in zip(got, images, labels):
        np.testing.assert_array_equal(g["image"].numpy().reshape(img.shape), img)
        assert int(g["label"][0]) == label and g["raw"].numpy() == b"\x00\x01"


def test_index_count_and_random_access(tmp_path):
    images, labels = _arrays(20)
    path = tmp_path / "d.tfrecord"
    records.write_records(path, (tf_example.encode({"image": i, "label": np.array([l])}) for i, l in zip(images, labels)))
    assert records.count(path) == (20, "scan")
    records.write_index(path)
    assert records.count(path) == (20, "index")
    assert tf_example.decode(records.read_at(path, 13))["label"].tolist() == [13]
    with pytest.raises(RecordError, match="does not exist"):
        records.read_at(path, 20)


def test_corrupt_and_truncated_files_name_the_record(tmp_path, capsys):
    images, labels = _arrays(4)
    path = tmp_path / "d.tfrecord"
    records.write_records(path, (tf_example.encode({"image": i}) for i in images))
    data = path.read_bytes()
    framed = len(data) // 4
    bad = bytearray(data)
    bad[2 * framed + 100] ^= 0xFF  # inside record 2's payload
    (tmp_path / "bad.tfrecord").write_bytes(bytes(bad))
    with pytest.raises(RecordError, match=f"corrupt record 2 at byte offset {2 * framed}: data checksum"):
        list(records.iter_records(tmp_path / "bad.tfrecord"))
    (tmp_path / "cut.tfrecord").write_bytes(data[: 3 * framed + 50])
    with pytest.raises(RecordError, match=f"truncated record 3 at byte offset {3 * framed}"):
        list(records.iter_records(tmp_path / "cut.tfrecord"))
    records.write_records(tmp_path / "z.tfrecord", (tf_example.encode({"image": i}) for i in images), compressed=True)
    z = (tmp_path / "z.tfrecord").read_bytes()
    (tmp_path / "zcut.tfrecord").write_bytes(z[: len(z) // 2])
    with pytest.raises(RecordError, match="compressed data ends early|truncated record"):
        list(records.iter_records(tmp_path / "zcut.tfrecord"))
    assert_clean_error(cli_inprocess(capsys, "records", "head", tmp_path / "bad.tfrecord"), "corrupt record 2")


def test_cli_and_images_folder(tmp_path, capsys):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = tmp_path / "imgs.tfrecord"
    proc = cli_inprocess(capsys, "records", "write", tmp_path / "imgs", "-o", out, "--gzip", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["records"] == 4
    heads = json.loads(cli_inprocess(capsys, "records", "head", out, "-n", "4", "--json").stdout)
    assert [h["features"]["image/class/label"]["values"] for h in heads] == [[0], [0], [1], [1]]
    assert json.loads(cli_inprocess(capsys, "records", "count", out, "--json").stdout)["records"] == 4
    assert_clean_error(cli_inprocess(capsys, "records", "index", out), "cannot be indexed")


def test_records_feed_a_model(keras_example, tmp_path, capsys):
    _, paths, x, ref = keras_example
    path = tmp_path / "inputs.tfrecord"
    records.write_records(path, (tf_example.encode({"pixels": img}) for img in x))
    out = tmp_path / "y.npz"
    proc = cli_inprocess(capsys, "run", paths["onnx"], "--input", path, "--map", "pixels=image:0", "-o", out)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(out)["Identity:0"], ref, rtol=1e-4, atol=1e-5)
    # one feature for a one-input model feeds it whatever its name (as in calibration data)
    proc = cli_inprocess(capsys, "run", paths["onnx"], "--input", path, "-o", tmp_path / "y1.npz")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y1.npz")["Identity:0"], ref, rtol=1e-4, atol=1e-5)
    two = tmp_path / "two.tfrecord"
    records.write_records(two, (tf_example.encode({"pixels": img, "id": np.array([i])}) for i, img in enumerate(x)))
    assert_clean_error(cli_inprocess(capsys, "run", paths["onnx"], "--input", two), "no feature feeds input",
                       "features: id, pixels", "--map FEATURE=INPUT")


def test_encoded_image_records_are_inputs_and_calibration(keras_example, tmp_path, capsys):
    """``records write --images`` output feeds a model like the image folder it came from: decoded,
    scaled by 1/255 (the image options' default), labelled by class folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from shipyard.quantize import Request, quantize_model

    model, paths, _, _ = keras_example
    digits = load_digits()  # real 8x8 digits, upscaled to the model's 12x12 RGB input
    pixels = []
    for i in range(20):
        img = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8")).resize((12, 12)).convert("RGB")
        (tmp_path / "imgs" / str(digits.target[i])).mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "imgs" / str(digits.target[i]) / f"{i:02d}.png")
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(f), np.float32) / 255 for f in files])
    out = tmp_path / "imgs.tfrecord"
    assert cli_inprocess(capsys, "records", "write", tmp_path / "imgs", "-o", out).returncode == 0
    proc = cli_inprocess(capsys, "run", paths["onnx"], "--input", out, "-o", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["Identity:0"], np.asarray(model(pixels, training=False)),
                               rtol=1e-4, atol=1e-5)
    report = quantize_model(paths["onnx"], tmp_path / "q.onnx", Request("static", str(out), latency_runs=0, layers=False))
    assert report.accuracy is not None  # the class folders became labels
    assert report.outputs[0]["cosine"] > 0.99
    # bytes that are not an image (file names) are not inputs; a model that takes no images says so
    records.write_records(tmp_path / "names.tfrecord", [tf_example.encode({"name": b"abc"})])
    assert_clean_error(cli_inprocess(capsys, "run", paths["onnx"], "--input", tmp_path / "names.tfrecord"),
                       "no numeric or encoded-image")


def test_reading_records_does_not_import_tensorflow(tmp_path):
    path = tmp_path / "d.tfrecord"
    records.write_records(path, [tf_example.encode({"a": np.arange(3)})])
    code = (f"import sys; from shipyard import records, tf_example; "
            f"[tf_example.decode(r) for r in records.iter_records({str(path)!r})]; "
            "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_records_calibrate_quantization(keras_example, tmp_path):
    from shipyard.quantize import Request, quantize_model

    _, paths, x, _ = keras_example
    calib = tmp_path / "calib.tfrecord"
    records.write_records(calib, (tf_example.encode({"pixels": img, "label": np.array([i % 10])})
                                  for i, img in enumerate(np.concatenate([x] * 6))), compressed=True)
    report = quantize_model(paths["onnx"], tmp_path / "q.onnx",
                            Request("static", str(calib), latency_runs=0, layers=False, mapping={"pixels": "image:0"}))
    assert report.calibration and "TFRecord" in str(report.calibration)
    assert report.accuracy is not None and report.outputs[0]["cosine"] > 0.99


def test_records_are_inputs_of_compare_and_bench(keras_paths, tmp_path, capsys):
    path = tmp_path / "x.tfrecord"
    images = np.random.default_rng(2).standard_normal((3, 12, 12, 3)).astype("float32")
    records.write_records(path, (tf_example.encode({"pixels": img}) for img in images))
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], keras_paths["tflite"], "--inputs", path, "--map", "pixels=image:0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["passed"]
    proc = cli_inprocess(capsys, "bench", keras_paths["onnx"], "--inputs", path, "--map", "pixels=image:0", "--runs", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    first = doc[0] if isinstance(doc, list) else doc.get("results", [doc])[0]
    assert first["batch"] == 3  # the three records are one batch
    assert_clean_error(cli_inprocess(capsys, "compare", keras_paths["onnx"], keras_paths["tflite"], "--inputs", path, "--map", "pixels"),
                       "expected FEATURE=INPUT")


def test_a_missing_file_is_a_clean_error(tmp_path, capsys):
    from conftest import cli_inprocess

    for sub in ("count", "head", "index"):
        assert_clean_error(cli_inprocess(capsys, "records", sub, tmp_path / "missing.tfrecord"), "no such TFRecord file")
