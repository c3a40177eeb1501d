"""TensorFlow runner: frozen GraphDefs and checkpoints through a v1 Session, SavedModel
signatures and Keras models eagerly, TF.js graph models by rebuilding their GraphDef."""
from __future__ import annotations

import numpy as np

from shipyard.deps import require
from shipyard.errors import ModelLoadError, UnsupportedError
from shipyard.formats import tf_graph
from shipyard.model import Model, tensor_name
from shipyard.runtimes.base import BaseRunner


def tf_name(name: str) -> str:
    """TF tensor name: ``x`` -> ``x:0``; ``x:1`` stays."""
    return name if ":" in name else f"{name}:0"


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

    def __init__(self, model: Model, threads: int | None = None, signature_key: str | None = None,
                 outputs: list[str] | None = None):
        self.tf = tf = require("tensorflow", f"Running a {model.format} model")
        _set_threads(tf, threads)
        self._session = None
        self._call = None
        loader = {
            "tf-graphdef": self._load_graph,
            "tf-checkpoint": self._load_checkpoint,
            "tf-savedmodel": self._load_saved,
            "keras": self._load_keras,
            "tfjs": self._load_tfjs,
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
            raise ModelLoadError(f"{model.path}: TensorFlow cannot import the graph ({str(exc).splitlines()[0][:300]})") from exc
        self._session = tf.compat.v1.Session(graph=graph, config=self._session_config(threads))
        return graph

    def _load_graph(self, model: Model, threads, _key):
        graph_def, _ = tf_graph.load(model)
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
            raise ModelLoadError(f"{model.path}: the checkpoint does not restore into its graph ({str(exc).splitlines()[0][:300]})") from exc
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

    def _load_keras(self, model: Model, _threads, _key):
        from shipyard.formats import keras as keras_format

        keras_model = keras_format.load(model)
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

            raise InputError(f"TensorFlow could not run the graph: {exc.message.splitlines()[0][:300]}") from exc
        return {o.name: v for o, v in zip(self.signature.outputs, values)}

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
