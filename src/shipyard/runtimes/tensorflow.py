"""TensorFlow runner: frozen GraphDefs and checkpoints through a v1 Session, SavedModel
signatures and Keras models eagerly, TF.js graph models by rebuilding their GraphDef."""
from __future__ import annotations

import numpy as np

from shipyard.deps import require
from shipyard.errors import ModelLoadError, UnsupportedError, engine_message
from shipyard.formats import tf_graph
from shipyard.model import Model, tensor_name
from shipyard.runtimes.base import BaseRunner, TensorInfo


def tf_name(name: str) -> str:
    """TF tensor name: ``x`` -> ``x:0``; ``x:1`` stays."""
    return name if ":" in name else f"{name}:0"


# Ops that hold no activation worth listing as an intermediate tensor.
_NOT_INTERMEDIATE = {"Const", "Placeholder", "NoOp", "VarHandleOp", "ReadVariableOp", "VariableV2", "Assign",
                     "AssignVariableOp", "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin"}


def _set_threads(tf, threads: int | None) -> None:
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already initialised its thread pools in this process; the setting cannot change now


class TensorFlowRunner(BaseRunner):
    backend = "tensorflow"
    # Graphs fetch any tensor by name in their v1 Session; a functional or Sequential Keras model
    # is re-wired to return layer outputs. A SavedModel runs its signature as one function call.
    intermediate_formats = frozenset({"tf-graphdef", "tf-checkpoint", "tfjs", "keras", "tf-memmapped"})

    def __init__(self, model: Model, threads: int | None = None, signature_key: str | None = None,
                 outputs: list[str] | None = None, intermediates: bool = False):
        self.tf = tf = require("tensorflow", f"Running a {model.format} model")
        _set_threads(tf, threads)
        self._session = None
        self._call = None
        self._keras = None
        loader = {
            "tf-graphdef": self._load_graph,
            "tf-checkpoint": self._load_checkpoint,
            "tf-savedmodel": self._load_saved,
            "keras": self._load_keras,
            "tfjs": self._load_tfjs,
            "tf-memmapped": self._load_memmapped,
        }[model.format]
        signature = loader(model, threads, signature_key)
        if outputs:
            from shipyard.model import Signature, TensorSpec

            signature = Signature(signature.inputs, tuple(TensorSpec(tensor_name(o), "unknown", None) for o in outputs))
        super().__init__(model, signature, threads)

    # -- v1 graphs ---------------------------------------------------------------
    def _session_config(self, threads):
        cfg = self.tf.compat.v1.ConfigProto()
        if threads:
            cfg.intra_op_parallelism_threads = threads
            cfg.inter_op_parallelism_threads = 1
        return cfg

    def _import(self, graph_def_bytes: bytes, model: Model, threads):
        tf = self.tf
        graph = tf.Graph()
        try:
            gd = tf.compat.v1.GraphDef.FromString(graph_def_bytes)
            with graph.as_default():
                tf.import_graph_def(gd, name="")
        except (ValueError, tf.errors.OpError, TypeError) as exc:
            raise ModelLoadError(f"{model.path}: TensorFlow cannot import the graph: {engine_message(exc)}") from exc
        self._session = tf.compat.v1.Session(graph=graph, config=self._session_config(threads))
        return graph

    def _load_graph(self, model: Model, threads, _key):
        graph_def, _ = tf_graph.load(model)
        self._import(graph_def.SerializeToString(), model, threads)
        return tf_graph.signature_of(graph_def)

    def _load_memmapped(self, model: Model, threads, _key):
        """TF's Python API has no MemmappedEnv: run the graph with each ImmutableConst read back
        from its region as a Const (the C++ program from 'shipyard cpp' maps the file itself)."""
        from shipyard.formats import tf_memmapped

        graph_def = tf_memmapped.frozen_graph_def(tf_memmapped.load(model))
        self._import(graph_def.SerializeToString(), model, threads)
        return tf_graph.signature_of(graph_def)

    def _load_checkpoint(self, model: Model, threads, _key):
        from shipyard.formats import tf_checkpoint

        graph_def, _ = tf_checkpoint.meta_graph(model)
        if graph_def is None:
            raise UnsupportedError(
                f"{model.path}: a checkpoint without a .meta graph cannot be run on its own",
                hint="freeze it with its GraphDef: shipyard freeze GRAPH.pb --checkpoint PREFIX",
            )
        tf = self.tf
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph, config=self._session_config(threads))
        try:
            with graph.as_default():
                saver = tf.compat.v1.train.import_meta_graph(str(model.extras["meta"]), clear_devices=True)
                saver.restore(self._session, str(model.path))
        except (ValueError, tf.errors.OpError) as exc:
            raise ModelLoadError(f"{model.path}: the checkpoint does not restore into its graph: {engine_message(exc)}") from exc
        return tf_graph.signature_of(graph_def)

    def _load_tfjs(self, model: Model, threads, _key):
        from shipyard.formats import tfjs

        gd = tfjs.full_graph_def(model)
        if gd is None:
            raise UnsupportedError(f"{model.path}: TF.js layers models cannot be run by shipyard (graph models can)")
        self._import(gd.SerializeToString(), model, threads)
        return tfjs.signature(model)

    # -- TF2 ----------------------------------------------------------------------
    def _load_saved(self, model: Model, _threads, key):
        from shipyard.formats import tf_saved

        loaded = tf_saved.load_signature(model, key)
        self._loaded = loaded  # keeps the restored variables alive
        fn, tf = loaded.function, self.tf
        self._call = lambda feeds: fn(**{k: tf.constant(v) for k, v in feeds.items()})
        return tf_saved.signature_of(tf_saved.serving_meta(model), loaded.key)

    def for_signature(self, key: str) -> TensorFlowRunner:
        """This SavedModel running another of its signatures on the same loaded variables
        (nothing is read again): how a server answers several signatures from one load."""
        import copy

        from shipyard.formats import tf_saved

        if getattr(self, "_loaded", None) is None:
            raise UnsupportedError(f"{self.model.display} has one signature: only SavedModels have several")
        meta = tf_saved.serving_meta(self.model)
        key = tf_saved.pick_signature_key(meta, key)  # an unknown key: ModelFormatError listing the keys
        fn, tf = self._loaded.owner.signatures[key], self.tf
        other = copy.copy(self)
        other._call = lambda feeds: fn(**{k: tf.constant(v) for k, v in feeds.items()})
        other.signature = tf_saved.signature_of(meta, key)
        return other

    def _load_keras(self, model: Model, _threads, _key):
        from shipyard.formats import keras as keras_format

        keras_model = self._keras = keras_format.load(model)
        sig = keras_format.signature_of(keras_model)
        names = [s.name for s in sig.outputs]
        fn = self.tf.function(lambda *xs: keras_model(list(xs) if len(xs) > 1 else xs[0], training=False))

        def call(feeds):
            out = fn(*[feeds[s.name] for s in sig.inputs])
            out = out if isinstance(out, (list, tuple)) else [out]
            return dict(zip(names, out))

        self._call = call
        return sig

    # -- running ------------------------------------------------------------------
    def _run(self, feeds):
        if self._call is not None:
            return {k: np.asarray(v) for k, v in self._call(feeds).items()}
        fetches = [tf_name(o.name) for o in self.signature.outputs]
        feed_dict = {tf_name(k): v for k, v in feeds.items()}
        try:
            values = self._session.run(fetches, feed_dict)
        except self.tf.errors.OpError as exc:
            from shipyard.errors import InputError

            raise InputError(f"TensorFlow could not run the graph: {engine_message(exc)}") from exc
        return {o.name: v for o, v in zip(self.signature.outputs, values)}

    # -- intermediates ---------------------------------------------------------------

    def tensors(self) -> list[TensorInfo]:
        if self._keras is not None:
            return [TensorInfo(layer.name, layer.__class__.__name__, layer.name) for layer in self._layers()]
        graph = self._session.graph
        return [TensorInfo(t.name, op.type, op.name) for op in graph.get_operations()
                if op.type not in _NOT_INTERMEDIATE for t in op.outputs
                if t.dtype.is_numpy_compatible and t.dtype != "resource"]

    def _layers(self) -> list:
        layers = [layer for layer in self._keras.layers if layer.__class__.__name__ != "InputLayer"]
        try:
            for layer in layers:
                layer.output  # noqa: B018 - subclassed models have no symbolic layer outputs
        except (AttributeError, ValueError) as exc:
            raise UnsupportedError(f"{self.model.path}: only functional and Sequential Keras models expose layer outputs") from exc
        return layers

    def _fetch(self, feeds, names):
        from shipyard import guard

        guard.stage(f"fetching {len(names)} tensors with TensorFlow")
        if self._keras is not None:
            import keras

            outputs = {layer.name: layer.output for layer in self._layers()}
            sub = keras.Model(self._keras.inputs, [outputs[n] for n in names])
            values = sub([feeds[s.name] for s in self.signature.inputs], training=False)
            values = values if isinstance(values, (list, tuple)) else [values]
            return {n: np.asarray(v) for n, v in zip(names, values)}
        values = self._session.run([tf_name(n) for n in names], {tf_name(k): v for k, v in feeds.items()})
        return dict(zip(names, values))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
