"""``--runtime tf --workflow session``: a C program that trains a TF1 graph through the C API.

The roles (init op, train op, the Saver's filename tensor, save and restore ops) are found by
:func:`shipyard.session.find_roles`, the same as ``shipyard session``, and written into the
program. A ``.meta`` is turned into its GraphDef here: the C API imports GraphDefs, and parsing
a MetaGraphDef in C would need protobuf. The check runs the same steps in Python
(:class:`shipyard.session.GraphSession`) and restores the program's checkpoint there.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from shipyard.cpp.project import (
    Project,
    c_string,
    file_names,
    fill,
    template,
    tensor_table,
    write_headers,
    write_inputs,
    write_manifest,
    write_readme,
)
from shipyard.cpp.targets import TARGETS
from shipyard.errors import UnsupportedError, UsageError
from shipyard.model import Model, Signature


def _c_or_null(text: str | None) -> str:
    return c_string(text) if text else "NULL"


class SessionJob:
    def __init__(self, model: Model, args):
        from shipyard.data.random import random_feeds
        from shipyard.feeds import load_feeds
        from shipyard.formats import tf_graph, tf_protos
        from shipyard.runtimes.base import validate_feeds
        from shipyard.session import find_roles

        if model.encrypted:
            raise UnsupportedError("the session workflow reads a plain graph file; decrypt it first ('shipyard decrypt')")
        self.model, self.args = model, args
        path = model.extras.get("meta", model.path)
        self.graph_def, meta = tf_protos.parse_graph_file(Path(path))
        self.roles = find_roles(self.graph_def, meta)
        if not self.roles.train_ops:
            raise UsageError(f"{path}: no train op found; the session workflow trains a TF1 graph "
                             "(for inference, freeze it and use --workflow predict)")
        full = tf_graph.signature_of(self.graph_def)
        self.signature = Signature(tuple(s for s in full.inputs if s.name in self.roles.inputs),
                                   tuple(s for s in full.outputs if s.name in self.roles.outputs))
        feeds = load_feeds(args.inputs, self.signature) if args.inputs else random_feeds(self.signature, args.seed, args.batch)
        self.feeds = validate_feeds(self.signature, feeds)
        # a checkpoint given as the model: the sample run starts from it; a bare graph starts from init
        self.restore = str(model.path) if model.format == "tf-checkpoint" else None

    def generate(self, dest: Path) -> Project:
        target = TARGETS["tf"]
        main = "main.cpp" if self.args.lang == "cpp" else "main.c"
        in_files = file_names([s.name for s in self.signature.inputs])
        out_files = file_names([s.name for s in self.signature.outputs])
        (dest / "graph.pb").write_bytes(self.graph_def.SerializeToString())
        saver = self.roles.saver or {}
        values = {
            "MAIN": main, "MODEL_FILE": "graph.pb",
            "INIT_OP": _c_or_null(self.roles.init_op), "TRAIN_OP": _c_or_null(self.roles.train_ops[0]),
            "FILENAME_TENSOR": _c_or_null(saver.get("filename_tensor")),
            "SAVE_TENSOR": _c_or_null(saver.get("save_op")), "RESTORE_OP": _c_or_null(saver.get("restore_op")),
            "INPUTS": tensor_table(list(self.signature.inputs), in_files, self.feeds),
            "OUTPUTS": tensor_table(list(self.signature.outputs), out_files),
            "NUM_INPUTS": str(len(self.signature.inputs)), "NUM_OUTPUTS": str(len(self.signature.outputs)),
        }
        (dest / main).write_text(fill(template("tf_session.c"), values))
        write_headers(dest, target, encrypted=False)
        project = Project(target, "graph.pb", "session", in_files, out_files, workflow="session", lang=self.args.lang,
                          extra={"roles": self.roles.to_json()})
        from shipyard.cpp.project import cmake_lists

        (dest / "CMakeLists.txt").write_text(cmake_lists(target, project, main))
        write_inputs(dest / "inputs", self.feeds, in_files)
        notes = ("\nThe session workflow: `--restore PREFIX|DIR` (else the init op runs), `--steps N` train steps, "
                 "`--save PREFIX` (also writes the `checkpoint` state file), then the outputs are fetched. "
                 "Checkpoints interchange with `shipyard session` and Python's `tf.compat.v1.train.Saver`.\n")
        write_readme(dest, self.model, project, main, notes=notes, run_args="--steps 100 --save ckpt/model.ckpt")
        write_manifest(dest, project)
        return project

    def check(self, program: Path, project_dir: Path, project: Project) -> dict:
        """The same steps in Python; then the program's checkpoint restored in Python."""
        from shipyard.cpp.check import check, program_outputs
        from shipyard.session import GraphSession
        from shipyard.verify import Exact

        steps = self.args.steps
        prefix = Path(tempfile.mkdtemp(prefix="cpp-ckpt-")) / "model.ckpt"
        extra = ["--steps", str(steps), "--save", str(prefix)] + (["--restore", self.restore] if self.restore else [])
        got, timing = program_outputs(program, project_dir, project, extra_args=extra)
        criterion = Exact(self.args.atol, self.args.rtol)
        feeds = {k: np.asarray(v) for k, v in self.feeds.items()}
        sess = GraphSession(self.model)
        try:
            sess.restore(self.restore) if self.restore else sess.init()
            if steps:
                sess.run_op(f"{self.roles.train_ops[0]}:{steps}", feeds)
            reference = _fetch_all(sess, list(project.outputs), feeds)
        finally:
            sess.close()
        trained = check(reference, got, criterion, what=f"the C program after {steps} train steps")
        sess = GraphSession(self.model)  # the program's checkpoint, restored by shipyard
        try:
            sess.restore(str(prefix))
            restored = _fetch_all(sess, list(project.outputs), feeds)
        finally:
            sess.close()
        reloaded = check(restored, got, criterion, what="the C program's checkpoint restored in shipyard session")
        figures = ", ".join(f"{d.name} max abs error {d.max_abs:.2e}" for d in reloaded.outputs)
        lines = [f"checkpoint written by the program restores in shipyard session: {figures}"]
        return {"passed": True, "verification": trained.to_json(), "restored": reloaded.to_json(),
                "timing": timing, "steps": steps, "lines": lines}


def _fetch_all(sess, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        sess.fetch(name, feeds)
        out[name] = list(sess.fetched.values())[-1]
    return out


def prepare(model: Model, args) -> SessionJob:
    from shipyard.session import check_session_model

    check_session_model(model)
    return SessionJob(model, args)
