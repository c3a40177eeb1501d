"""One grammar across commands (docs/cli.md): the same word means the same thing everywhere, old
spellings still work for one release with one deprecation line, misspellings get "did you mean",
and figures print in one style. The CLI runs in-process (``shipyard.cli.run``) on small real
ONNX models built here with onnx.helper and run by onnxruntime."""
from __future__ import annotations

import argparse
import io
import json
import re

import numpy as np
import pytest

from conftest import cli_inprocess
from shipyard.cli import build_parser, run

TOP_USAGE = "usage: shipyard [-h] [--version] COMMAND"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """x[N,4] -> MatMul -> Relu -> y[N,3]: node names 'mm' and 'act', a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="act")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("grammar")
    path = folder / "mlp.onnx"
    onnx.save(model, path)
    np.save(folder / "x.npy", np.ones((2, 4), np.float32))
    return path


def _fails(capsys, *argv) -> str:
    """stderr of a command argparse refuses (exit 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run([str(a) for a in argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def _deprecations(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated" in line]


# -- did you mean ----------------------------------------------------------------------------


def test_unknown_command_suggests_the_close_one(capsys):
    err = _fails(capsys, "inspct", "model.onnx")
    assert "unknown command 'inspct'; did you mean 'inspect'?" in err


def test_unknown_option_is_reported_by_its_command_with_a_suggestion(capsys, mlp):
    err = _fails(capsys, "inspect", mlp, "--jsn")
    assert "shipyard inspect: error: unknown option --jsn; did you mean '--json'?" in err
    assert TOP_USAGE not in err  # the command's own usage, not the top-level one
    err = _fails(capsys, "records", "count", "f.tfrecord", "--jsn")
    assert "shipyard records count: error" in err and "'--json'" in err


def test_invalid_choice_suggests(capsys):
    err = _fails(capsys, "quantize", "m.onnx", "--mode", "weight", "-o", "q.onnx")
    assert "invalid choice 'weight'; did you mean 'weights'?" in err


def test_unknown_transform_backend_target_suggest(capsys, mlp, tmp_path):
    proc = cli_inprocess(capsys, "transform", mlp, "-t", "fold_batch_norm", "-o", tmp_path / "t.onnx")
    assert proc.returncode == 2 and "unknown transform 'fold_batch_norm'; did you mean 'fold_batch_norms'" in proc.stderr
    proc = cli_inprocess(capsys, "run", mlp, "--backend", "onnxrntime")
    assert proc.returncode == 2 and "did you mean 'onnxruntime'" in proc.stderr
    proc = cli_inprocess(capsys, "convert", mlp, "--to", "tfilte", "-o", tmp_path / "m.tflite")
    assert proc.returncode == 2 and "did you mean 'tflite'" in proc.stderr
    assert not (tmp_path / "m.tflite").exists()


def test_convert_help_and_errors_name_formats_alike(capsys, mlp, tmp_path):
    from shipyard.convert.planner import TARGET_NAMES

    help_text = next(a.help for a in build_parser()._subparsers._group_actions[0].choices["convert"]._actions
                     if "--to" in a.option_strings)
    proc = cli_inprocess(capsys, "convert", mlp, "--to", "nothing", "-o", tmp_path / "x")
    hint = proc.stderr.split("hint: targets: ")[1].strip()
    assert hint == help_text == ", ".join(TARGET_NAMES)


def test_mismatched_output_extension_warns(capsys, mlp, tmp_path):
    proc = cli_inprocess(capsys, "convert", mlp, "--to", "onnx", "-o", tmp_path / "f.pb")
    assert "shipyard: warning: " in proc.stderr and "writing an ONNX model into a .pb file name; name it f.onnx" \
        in proc.stderr
    proc = cli_inprocess(capsys, "convert", mlp, "--to", "onnx", "-o", tmp_path / "f.onnx")
    assert "warning" not in proc.stderr


# -- one grammar, old spellings deprecated -----------------------------------------------------


def test_transform_node_names_are_input_nodes_and_the_old_spelling_warns_once(capsys, mlp, tmp_path):
    new = cli_inprocess(capsys, "transform", mlp, "-t", "fold_constants", "-o", tmp_path / "new.onnx",
                        "--input-nodes", "x", "--output-nodes", "y", "--json")
    assert new.returncode == 0, new.stderr
    assert not _deprecations(new.stderr)
    old = cli_inprocess(capsys, "transform", mlp, "-t", "fold_constants", "-o", tmp_path / "old.onnx",
                        "--inputs", "x", "--inputs", "x", "--outputs", "y", "--json")
    assert old.returncode == 0, old.stderr
    assert _deprecations(old.stderr) == ["shipyard: --inputs in transform is deprecated; use --input-nodes",
                                         "shipyard: --outputs in transform is deprecated; use --output-nodes"]
    assert (tmp_path / "new.onnx").read_bytes() == (tmp_path / "old.onnx").read_bytes()


def test_run_data_is_inputs_and_random_takes_n(capsys, mlp):
    x = mlp.parent / "x.npy"
    for flag in ("--inputs", "--input", "-i"):
        proc = cli_inprocess(capsys, "run", mlp, flag, f"x={x}", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["outputs"]["y"]["shape"] == [2, 3] and not proc.stderr
    proc = cli_inprocess(capsys, "run", mlp, "--random", "5", "--json")
    assert json.loads(proc.stdout)["outputs"]["y"]["shape"] == [5, 3] and not proc.stderr
    proc = cli_inprocess(capsys, "run", mlp, "--random", "--json")
    assert json.loads(proc.stdout)["outputs"]["y"]["shape"] == [1, 3]
    proc = cli_inprocess(capsys, "run", mlp, "--batch", "4", "--json")
    assert json.loads(proc.stdout)["outputs"]["y"]["shape"] == [4, 3]
    assert _deprecations(proc.stderr) == ["shipyard: --batch in run is deprecated; use --random N"]
    proc = cli_inprocess(capsys, "run", mlp, "--inputs", f"x={x}", "--random", "2")
    assert proc.returncode == 2 and "either --inputs or --random" in proc.stderr


def test_dump_and_compare_take_random_n(capsys, mlp, tmp_path):
    proc = cli_inprocess(capsys, "dump", mlp, "--random", "3", "--tensors", "y", "-o", tmp_path / "d.npz")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "d.npz")["y"].shape == (3, 3)
    assert "1 tensor written" in proc.stdout  # one tensor, one noun
    proc = cli_inprocess(capsys, "compare", mlp, mlp, "--random", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"]["x"][0] == 1


def test_lists_are_comma_separated(capsys, mlp, tmp_path):
    x = mlp.parent / "x.npy"
    proc = cli_inprocess(capsys, "transform", mlp, "-t", "fold_constants", "-o", tmp_path / "t.onnx",
                         "--output-nodes", "y,y")
    assert proc.returncode == 0, proc.stderr
    proc = cli_inprocess(capsys, "dump", mlp, "--inputs", f"x={x}", "--tensors", "h,y", "-o", tmp_path / "d.npz")
    assert proc.returncode == 0, proc.stderr
    assert set(np.load(tmp_path / "d.npz").files) == {"h", "y"}
    from shipyard.feeds import parse_mapping

    assert parse_mapping(["image=x,label=y", "id=z"]) == {"image": "x", "label": "y", "id": "z"}


def test_keygen_writes_with_o_and_the_positional_is_deprecated(capsys, tmp_path):
    proc = cli_inprocess(capsys, "keygen", "-o", tmp_path / "a.key")
    assert proc.returncode == 0 and (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600 and not proc.stderr
    proc = cli_inprocess(capsys, "keygen", tmp_path / "b.key")
    assert proc.returncode == 0 and (tmp_path / "b.key").exists()
    assert _deprecations(proc.stderr) == ["shipyard: keygen KEY is deprecated; use keygen -o KEY"]


def test_key_file_only_where_a_model_is_read(capsys, tmp_path):
    sub = build_parser()._subparsers._group_actions[0].choices
    for name in ("keygen", "demo", "records", "view"):
        assert "--key-file" not in sub[name].format_help(), name
    for name in ("inspect", "run", "convert", "encrypt", "serve"):
        assert "--key-file" in sub[name].format_help(), name
    proc = cli_inprocess(capsys, "keygen", "-o", tmp_path / "c.key", "--key-file", tmp_path / "other")
    assert proc.returncode == 0
    assert _deprecations(proc.stderr) == [("shipyard: --key-file in keygen is deprecated: it means nothing there "
                                           "and is ignored")]


def test_records_write_reads_data_first_and_writes_with_o(capsys, tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(6, dtype=np.float32).reshape(3, 2))
    proc = cli_inprocess(capsys, "records", "write", tmp_path / "a.npz", "-o", tmp_path / "new.tfrecord")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 records" in proc.stdout and not proc.stderr
    proc = cli_inprocess(capsys, "records", "write", tmp_path / "old.tfrecord", "--from-npz", tmp_path / "a.npz")
    assert proc.returncode == 0, proc.stderr
    assert _deprecations(proc.stderr) == [("shipyard: records write OUT --from-npz IN is deprecated; "
                                           "use records write IN -o OUT")]
    assert (tmp_path / "old.tfrecord").read_bytes() == (tmp_path / "new.tfrecord").read_bytes()
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 2), np.float32))
    proc = cli_inprocess(capsys, "records", "write", tmp_path / "one.npz", "-o", tmp_path / "one.tfrecord")
    assert "wrote 1 record ->" in proc.stdout
    proc = cli_inprocess(capsys, "records", "count", tmp_path / "one.tfrecord")
    assert proc.stdout.startswith("1 record (")


@pytest.mark.parametrize("argv, dest, value, line", [
    (["session", "g.pb", "--feed", "x=a.npy"], "feed", ["x=a.npy"], "--feed in session is deprecated; use --inputs"),
    (["convert", "g.pb", "--to", "onnx", "-o", "g.onnx", "--outputs", "y"], "output_nodes", ["y"],
     "--outputs in convert is deprecated; use --output-nodes"),
    (["freeze", "g.pb", "-o", "f.pb", "--outputs", "y"], "output_nodes", ["y"],
     "--outputs in freeze is deprecated; use --output-nodes"),
    (["ship", "m.onnx", "-o", "dist", "--outputs", "y"], "output_nodes", ["y"],
     "--outputs in ship is deprecated; use --output-nodes"),
    (["dump", "m.onnx", "-o", "d.npz", "--batch", "3"], "random", 3, "--batch in dump is deprecated; use --random N"),
    (["cpp", "m.onnx", "-o", "p", "--batch", "3"], "random", 3, "--batch in cpp is deprecated; use --random N"),
    (["ship", "m.onnx", "-o", "dist", "--quantize", "static"], "quantize", "static",
     "--quantize in ship is deprecated; use --mode MODE"),
    (["ship", "m.onnx", "-o", "dist", "--samples", "8"], "samples", 8,
     "--samples in ship is deprecated; use --eval-samples N"),
    (["quantize", "m.onnx", "--mode", "static", "-o", "q.onnx", "--samples", "8"], "samples", 8,
     "--samples in quantize is deprecated; use --calibration-samples N"),
])
def test_old_spellings_parse_to_the_new_option(capsys, argv, dest, value, line):
    from shipyard.cliargs import reset_warnings

    reset_warnings()
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert _deprecations(capsys.readouterr().err) == [f"shipyard: {line}"]


@pytest.mark.parametrize("argv, dest, value", [
    (["session", "g.pb", "--inputs", "x=a.npy,y=b.npy"], "feed", ["x=a.npy,y=b.npy"]),
    (["convert", "g.pb", "--to", "onnx", "-o", "g.onnx", "-i", "x.npz", "--output-nodes", "y"], "inputs", ["x.npz"]),
    (["ship", "m.onnx", "-o", "dist", "--input", "eval.npz"], "inputs", "eval.npz"),
    (["batch", "m.onnx", "-o", "out", "-i", "shards/*.npy"], "inputs", ["shards/*.npy"]),
    (["dump", "m.onnx", "-o", "d.npz", "--random", "3"], "random", 3),
    (["compare", "a.onnx", "b.onnx", "--random"], "random", 1),
    (["ship", "m.onnx", "-o", "dist", "--mode", "static"], "quantize", "static"),
    (["ship", "m.onnx", "-o", "dist", "--eval-samples", "8"], "samples", 8),
    (["ship", "m.onnx", "-o", "dist", "--calibration-samples", "8"], "calibration_samples", 8),
    (["quantize", "m.onnx", "--mode", "static", "-o", "q.onnx", "--calibration-samples", "8"], "samples", 8),
    (["bench", "m.onnx", "--quiet"], "quiet", True),
    (["ship", "m.onnx", "-o", "dist", "-q"], "quiet", True),
])
def test_the_new_spellings(capsys, argv, dest, value):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert not capsys.readouterr().err


def test_quantization_mode_and_sample_counts_are_spelt_alike_in_quantize_and_ship():
    """One spelling per meaning: --mode is the quantization mode in both; calibration and
    evaluation sample counts have a name each (the old --samples meant one in each command)."""
    from shipyard.commands.ship import QUANTIZE_MODES
    from shipyard.ship.pipeline import QUANTIZE

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    def visible(command):
        return {s: a for a in sub[command]._actions for s in a.option_strings if a.help is not argparse.SUPPRESS}

    quantize, ship = visible("quantize"), visible("ship")
    assert set(quantize["--mode"].choices) | {"none"} == set(ship["--mode"].choices) == set(QUANTIZE) == set(QUANTIZE_MODES)
    assert "--samples" not in quantize and "--samples" not in ship and "--quantize" not in ship
    assert "calibration" in quantize["--calibration-samples"].help and "calibration" in ship["--calibration-samples"].help
    assert "evaluation" in ship["--eval-samples"].help


def test_docs_use_no_deprecated_spelling(capsys):
    import test_docs
    from shipyard.cliargs import reset_warnings

    parser = build_parser()
    for page in test_docs.PAGES:
        if page.name == "cli.md":  # the page that shows the old spellings and their deprecation lines
            continue
        for text, argv in test_docs._commands(page):
            reset_warnings()
            try:
                parser.parse_args(argv)
            except SystemExit:
                continue  # test_docs reports commands that do not parse
            err = capsys.readouterr().err
            assert not _deprecations(err), f"{page.name}: `{text}`: {err}"


# -- one number style, plurals, colour ------------------------------------------------------------


def test_number_style():
    from shipyard.report import numbers

    assert [numbers.percent(v) for v in (1.0, 0.9944, 0.5, None)] == ["100.0%", "99.4%", "50.0%", "-"]
    assert [numbers.size(v) for v in (512, 13630 * 1024, 3 * 2**30)] == ["512 B", "13.3 MB", "3.0 GB"]
    assert [numbers.error(v) for v in (0.0, 1.234e-5, 0.5)] == ["0", "1.23e-05", "5.00e-01"]
    assert [numbers.figure(v) for v in (13630.0, 0.01234, 3, 1e-7)] == ["13630", "0.01234", "3", "1.000e-07"]
    assert [numbers.plural(n, "tensor") for n in (0, 1, 2)] == ["0 tensors", "1 tensor", "2 tensors"]
    assert [numbers.a(w) for w in ("onnx", "tflite", "ONNX", "int8", "keras")] == \
        ["an onnx", "a tflite", "an ONNX", "an int8", "a keras"]


def test_html_tables_never_print_exponents_for_sizes():
    from shipyard.report.html import _table

    page = _table(["size (KB)"], [[13630.0], [0.5]])
    assert "e+" not in page and "13630" in page


def test_inspect_counts_nodes_in_the_singular(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="only")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "one.onnx")
    proc = cli_inprocess(capsys, "inspect", tmp_path / "one.onnx")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"ops\s+1 node, 1 type\b", proc.stdout), proc.stdout
    proc = cli_inprocess(capsys, "freeze", tmp_path / "one.onnx", "-o", tmp_path / "f.pb")
    assert "an onnx model has no variables" in proc.stderr


def test_agreement_prints_as_a_percentage(capsys, mlp):
    proc = cli_inprocess(capsys, "compare", mlp, mlp, "--random", "4")
    assert proc.returncode == 0, proc.stderr
    assert "argmax 100.0%" in proc.stdout and "top5 " in proc.stdout


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_only_and_never_with_no_color(monkeypatch, capsys, mlp):
    from shipyard.report.numbers import paint, verdict

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert paint("FAIL", "fail", _Tty()) == "\033[1;31mFAIL\033[0m"
    assert verdict(True, _Tty()) == "\033[32mPASS\033[0m"
    assert paint("FAIL", "fail", io.StringIO()) == "FAIL"  # not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert paint("FAIL", "fail", _Tty()) == "FAIL"
    monkeypatch.delenv("NO_COLOR")
    proc = cli_inprocess(capsys, "compare", mlp, mlp)  # captured: not a terminal
    assert "\033[" not in proc.stdout and "PASS" in proc.stdout


def test_deprecated_action_keeps_one_line_per_spelling(capsys):
    from shipyard.cliargs import Deprecated, reset_warnings

    reset_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--new", action="append", default=[])
    p.add_argument("--old", dest="new", action=Deprecated, new="--new", where="x")
    assert p.parse_args(["--old", "a", "--old", "b", "--new", "c"]).new == ["a", "b", "c"]
    assert _deprecations(capsys.readouterr().err) == ["shipyard: --old in x is deprecated; use --new"]
