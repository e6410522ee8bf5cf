"""Tiny models built in code with openvino opsets, for tests that need exact control over the graph."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

SEVEN = ("Relu", "Swish", "PRelu", "Elu", "Gelu", "Sigmoid", "Tanh")
SEVEN_LAYERS = [f"conv_{kind}" for kind in SEVEN] + ["logits"]  # the weighted layers of seven_activation_model


def _conv(x: ov.Output, cin: int, cout: int, rng: np.random.Generator, name: str) -> ov.Node:
    w = ops.constant((rng.standard_normal((cout, cin, 3, 3)) * 0.4).astype(np.float32), name=f"{name}/weights")
    node = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1], name=name)
    return node


def _activation(kind: str, x: ov.Output, name: str) -> ov.Node:
    makers = {
        "Relu": lambda: ops.relu(x, name=name),
        "Swish": lambda: ops.swish(x, name=name),
        "PRelu": lambda: ops.prelu(x, ops.constant(np.array([0.1], np.float32)), name=name),
        "Elu": lambda: ops.elu(x, 1.0, name=name),
        "Gelu": lambda: ops.gelu(x, "erf", name=name),
        "Sigmoid": lambda: ops.sigmoid(x, name=name),
        "Tanh": lambda: ops.tanh(x, name=name),
    }
    return makers[kind]()


def seven_activation_model(seed: int = 0, channels: int = 4, size: int = 8) -> ov.Model:
    """Conv -> activation, seven times (one of each supported type), then a MatMul head named 'logits'."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, 3, size, size], np.float32, name="input")
    x.output(0).get_tensor().set_names({"input"})
    h: ov.Node = x
    cin = 3
    for kind in SEVEN:
        h = _activation(kind, _conv(h.output(0), cin, channels, rng, f"conv_{kind}").output(0), f"act_{kind}")
        cin = channels
    flat = ops.reshape(h, ops.constant(np.array([0, -1], np.int64)), special_zero=True, name="flatten")
    w = ops.constant((rng.standard_normal((channels * size * size, 5)) * 0.1).astype(np.float32))
    logits = ops.matmul(flat, w, False, False, name="logits")
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [x], "seven_act")


def activation_output_model(kind: str = "Relu") -> ov.Model:
    """Input -> Conv -> activation that is itself the model output (tests that output names survive)."""
    rng = np.random.default_rng(1)
    x = ops.parameter([1, 3, 6, 6], np.float32, name="input")
    act = _activation(kind, _conv(x.output(0), 3, 2, rng, "conv").output(0), "act")
    act.output(0).get_tensor().set_names({"features"})
    return ov.Model([ops.result(act)], [x], "act_out")


def no_activation_model() -> ov.Model:
    x = ops.parameter([1, 4], np.float32, name="input")
    y = ops.matmul(x, ops.constant(np.ones((4, 2), np.float32)), False, False, name="mm")
    return ov.Model([ops.result(y)], [x], "linear")


def ranger_model(seed: int = 0) -> ov.Model:
    """Two branches that exercise Ranger's propagation:

    input -> conv_a -> relu_a -> pool_a (MaxPool) -+-> concat -> reshape -> fc (MatMul) -> relu_fc -> head -> tanh
    input -> conv_b -> relu6_b (Clamp 0..6) -> pool_b (AvgPool) -+
    """
    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, 3, 8, 8], np.float32, name="input")
    x.output(0).get_tensor().set_names({"input"})
    a = ops.relu(_conv(x.output(0), 3, 4, rng, "conv_a"), name="relu_a")
    pool_a = ops.max_pool(a, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool_a")
    b = ops.clamp(_conv(x.output(0), 3, 4, rng, "conv_b"), 0.0, 6.0, name="relu6_b")
    pool_b = ops.avg_pool(b, [2, 2], [0, 0], [0, 0], [2, 2], True, name="pool_b")
    cat = ops.concat([pool_a.output(0), pool_b.output(0)], 1, name="concat")
    flat = ops.reshape(cat, ops.constant(np.array([0, -1], np.int64)), special_zero=True, name="reshape")
    w = ops.constant((rng.standard_normal((8 * 16, 6)) * 0.2).astype(np.float32))
    fc = ops.relu(ops.matmul(flat, w, False, False, name="fc"), name="relu_fc")
    head = ops.matmul(fc, ops.constant((rng.standard_normal((6, 3)) * 0.5).astype(np.float32)), False, False,
                      name="head")
    out = ops.tanh(head, name="tanh")
    out.output(0).get_tensor().set_names({"scores"})
    return ov.Model([ops.result(out)], [x], "ranger_test")


def node_by_name(model: ov.Model, name: str) -> ov.Node:
    """The node named ``name`` in a test model (whose friendly names are unique); KeyError when absent."""
    for node in model.get_ops():
        if node.get_friendly_name() == name:
            return node
    raise KeyError(name)


def record_guards(model: ov.Model, suffix: str = "/min_max_Clamp") -> ov.Model:
    """Record the Clamps named ``<node><suffix>`` of a hand-built model as guards, as a protection pass does."""
    from ovrange.graph import record_inserted

    record_inserted(model, {op.get_friendly_name(): "guard" for op in model.get_ops()
                            if op.get_friendly_name().endswith(suffix)})
    return model


def seven_calibration() -> np.ndarray:
    """Twenty fixed random inputs of :func:`seven_activation_model` (default size)."""
    return np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
