"""Batch-norm folding for GraphDefs: what graph_transforms' fold_batch_norms and
fold_old_batch_norms did, for the ops TF 2 graphs contain.

TF 2.21's ``optimize_for_inference_lib`` folds only the legacy BatchNormWithGlobalNormalization
op, and Grappler's remapper fuses at run time without rewriting the file, so the folding
arithmetic is written here: ``W' = W * scale`` per output channel, ``b' = b * scale + shift``.
"""
from __future__ import annotations

import numpy as np

from shipyard.formats import tf_protos
from shipyard.passes.context import Context
from shipyard.passes.graphdef import _keep, _set_tensor, node_of
from shipyard.passes.registry import Params

_WEIGHTED = {"Conv2D", "DepthwiseConv2dNative", "MatMul"}
_OLD_BN = {"BatchNormWithGlobalNormalization", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}


class _Graph:
    """Name lookups and consumer counts over a GraphDef being rewritten."""

    def __init__(self, graph_def, ctx: Context):
        self.gd = graph_def
        self.by_name = {n.name: n for n in graph_def.node}
        self.users: dict[str, list[str]] = {}
        for n in graph_def.node:
            for ref in n.input:
                self.users.setdefault(node_of(ref), []).append(n.name)
        self.protected = set(ctx.inputs) | set(ctx.outputs)

    def const(self, ref: str):
        """(Const node, value) behind a reference, looking through Identity; None if not constant."""
        node = self.by_name.get(node_of(ref))
        while node is not None and node.op == "Identity":
            node = self.by_name.get(node_of(node.input[0]))
        if node is None or node.op != "Const":
            return None
        value = tf_protos.tensor_to_numpy(node.attr["value"].tensor)
        return None if value is None or value.dtype != np.float32 else (node, value)

    def sole_user(self, name: str, user: str) -> bool:
        return name not in self.protected and set(self.users.get(name, [])) == {user}

    def data_inputs(self, node) -> list[str]:
        return [r for r in node.input if not r.startswith("^")]

    def new_const(self, base: str, value: np.ndarray) -> str:
        name = base
        i = 0
        while name in self.by_name:
            i += 1
            name = f"{base}_{i}"
        node = self.gd.node.add()
        node.name, node.op = name, "Const"
        _set_tensor(node, value.astype(np.float32))
        self.by_name[name] = node
        return name


def _scaled_weights(conv, weights: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """Weights with each output channel multiplied by ``scale`` (None if shapes do not fit)."""
    if conv.op == "Conv2D":
        channels = weights.shape[-1]
        return weights * scale.reshape(1, 1, 1, -1) if scale.size == channels else None
    if conv.op == "DepthwiseConv2dNative":
        cin, mult = weights.shape[2], weights.shape[3]
        return weights * scale.reshape(1, 1, cin, mult) if scale.size == cin * mult else None
    transposed = conv.attr["transpose_b"].b
    channels = weights.shape[0] if transposed else weights.shape[1]
    if scale.size != channels:
        return None
    return weights * (scale.reshape(-1, 1) if transposed else scale.reshape(1, -1))


def _nhwc(conv) -> bool:
    return conv.op == "MatMul" or conv.attr["data_format"].s in (b"", b"NHWC")


def _skip_identities(g: _Graph, ref: str, user: str):
    """Follow Identity nodes used only by the chain; returns (node, the identities passed)."""
    passed = []
    node = g.by_name.get(node_of(ref))
    while node is not None and node.op == "Identity" and g.sole_user(node.name, user):
        passed.append(node)
        user = node.name
        node = g.by_name.get(node_of(node.input[0]))
    return node, passed, user


def _fold_into(g: _Graph, producer_ref: str, consumer, scale: np.ndarray, shift: np.ndarray | None) -> bool:
    """Fold ``y = producer * scale (+ shift)`` into the conv (and BiasAdd) behind ``producer_ref``.

    On success ``consumer`` becomes a BiasAdd of the rescaled conv, keeping its name; the
    BiasAdd and Identity nodes it replaces are removed.
    """
    if ":" in producer_ref and not producer_ref.endswith(":0"):
        return False
    top, removed, user = _skip_identities(g, producer_ref, consumer.name)
    if top is None or not g.sole_user(top.name, user):
        return False
    bias_add, conv = None, top
    if top.op == "BiasAdd":
        bias_add = top
        conv, more, user = _skip_identities(g, g.data_inputs(top)[0], top.name)
        removed += more
        if conv is None or not g.sole_user(conv.name, user):
            return False
    if conv.op not in _WEIGHTED or not _nhwc(conv):
        return False
    w = g.const(g.data_inputs(conv)[1])
    if w is None:
        return False
    scaled = _scaled_weights(conv, w[1], scale.ravel())
    if scaled is None:
        return False
    bias = np.zeros(scale.size, np.float32)
    if bias_add is not None:
        b = g.const(g.data_inputs(bias_add)[1])
        if b is None or b[1].size != scale.size:
            return False
        bias = b[1].ravel()
    conv.input[1] = g.new_const(f"{conv.name}/folded_weights", scaled)
    new_bias = bias * scale.ravel() + (0 if shift is None else shift.ravel())
    _become_bias_add(g, consumer, conv.name, new_bias)
    for node in removed + ([bias_add] if bias_add is not None else []):
        g.gd.node.remove(node)
    return True


def _become_bias_add(g: _Graph, node, source: str, bias: np.ndarray) -> None:
    controls = [r for r in node.input if r.startswith("^")]
    node.op = "BiasAdd"
    node.ClearField("attr")
    node.attr["T"].type = 1
    del node.input[:]
    node.input.extend([source, g.new_const(f"{node.name}/folded_bias", bias.astype(np.float32))] + controls)


def _merge_bias_add(g: _Graph, node) -> bool:
    """``Add(BiasAdd(x, b), c)`` with a per-channel constant ``c`` -> ``BiasAdd(x, b + c)``."""
    data = g.data_inputs(node)
    for i in (0, 1):
        c = g.const(data[1 - i])
        if c is None:
            continue
        top, removed, user = _skip_identities(g, data[i], node.name)
        if top is None or top.op != "BiasAdd" or not g.sole_user(top.name, user):
            continue
        b = g.const(g.data_inputs(top)[1])
        if b is None or c[1].size != b[1].size or (c[1].ndim and c[1].shape[-1] != b[1].size):
            continue
        _become_bias_add(g, node, g.data_inputs(top)[0], b[1].ravel() + c[1].ravel())
        for r in removed + [top]:
            g.gd.node.remove(r)
        return True
    return False


def fold_batch_norms(graph_def, params: Params, ctx: Context):
    """``Mul(Conv2D|DepthwiseConv2dNative|MatMul [+ BiasAdd], Const)`` -> rescaled weights (+ BiasAdd).

    Run ``fold_constants`` first so a batch norm's ``gamma * rsqrt(var + eps)`` is one Const.
    """
    folded = 0
    while True:
        g = _Graph(graph_def, ctx)
        for node in list(graph_def.node):
            if node.op in ("Add", "AddV2") and _merge_bias_add(g, node):
                break
            if node.op != "Mul":
                continue
            data = g.data_inputs(node)
            for i in (0, 1):
                c = g.const(data[1 - i])
                if c is not None and _fold_into(g, data[i], node, c[1], None):
                    folded += 1
                    break
            else:
                continue
            break  # the graph changed: rebuild the lookups
        else:
            break
    if folded:
        ctx.notes.append(f"fold_batch_norms: {folded} Mul nodes folded into weights")
    _drop_unused_consts(graph_def, ctx)
    return graph_def


def fold_old_batch_norms(graph_def, params: Params, ctx: Context):
    """BatchNormWithGlobalNormalization / FusedBatchNorm(V2,V3) in inference mode -> weights + BiasAdd."""
    folded = 0
    skipped = []
    while True:
        g = _Graph(graph_def, ctx)
        changed = False
        for node in list(graph_def.node):
            if node.op not in _OLD_BN:
                continue
            if any(node_of(r) == node.name and ":" in r and not r.endswith(":0")
                   for other in graph_def.node for r in other.input):
                continue  # its batch statistics are used elsewhere
            scale_shift = _bn_scale_shift(g, node)
            if scale_shift is None:
                skipped.append(node.name)
                continue
            if _fold_into(g, g.data_inputs(node)[0], node, *scale_shift):
                folded += 1
                changed = True
                break
            skipped.append(node.name)
        if not changed:
            break
    if folded:
        ctx.notes.append(f"fold_old_batch_norms: {folded} batch norms folded")
    _drop_unused_consts(graph_def, ctx)
    return graph_def


def _bn_scale_shift(g: _Graph, node):
    data = g.data_inputs(node)
    if node.op == "BatchNormWithGlobalNormalization":
        parts = [g.const(r) for r in data[1:5]]  # mean, variance, beta, gamma
        if any(p is None for p in parts):
            return None
        mean, var, beta, gamma = (p[1] for p in parts)
        eps = node.attr["variance_epsilon"].f
        if not node.attr["scale_after_normalization"].b:
            gamma = np.ones_like(gamma)
    else:
        if node.attr["is_training"].b or node.attr["data_format"].s not in (b"", b"NHWC"):
            return None
        parts = [g.const(r) for r in data[1:5]]  # scale, offset, mean, variance
        if any(p is None for p in parts):
            return None
        gamma, beta, mean, var = (p[1] for p in parts)
        eps = node.attr["epsilon"].f if "epsilon" in node.attr else 1e-3
    scale = (gamma / np.sqrt(var + eps)).astype(np.float32)
    return scale, (beta - mean * scale).astype(np.float32)


def _drop_unused_consts(graph_def, ctx: Context) -> None:
    """Remove Const (and Identity-of-Const) nodes nothing uses any more."""
    protected = set(ctx.inputs) | set(ctx.outputs)
    while True:
        used = {node_of(r) for n in graph_def.node for r in n.input}
        dead = {n.name for n in graph_def.node
                if n.op in ("Const", "Identity") and n.name not in used and n.name not in protected
                and (n.op == "Const" or all(node_of(r) for r in n.input))}
        dead = {d for d in dead if _is_const_chain(graph_def, d)}
        if not dead:
            return
        _keep(graph_def, {n.name for n in graph_def.node} - dead)


def _is_const_chain(graph_def, name: str) -> bool:
    by_name = {n.name: n for n in graph_def.node}
    node = by_name.get(name)
    while node is not None and node.op == "Identity":
        node = by_name.get(node_of(node.input[0])) if node.input else None
    return node is not None and node.op == "Const"

