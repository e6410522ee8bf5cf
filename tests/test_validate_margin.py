"""The default margin of held-out validation follows the guard's form (ovrange/validate.py, pure rules)."""

from __future__ import annotations

from ovrange import validate


def test_a_guard_that_sends_far_values_to_zero_gets_the_wide_margin_a_clipping_guard_none():
    zero = {"node": "a", "type": "Relu", "low": 0.0, "high": 2.0, "method": "max", "beyond": "zero"}
    clamp = {"node": "b", "type": "Relu", "low": 0.0, "high": 2.0, "method": "max"}
    weights = {"node": "c", "type": "Convolution", "role": "weights", "low": [-1.0], "high": [1.0], "beyond": "zero"}
    grown = validate.with_margin({"a": zero, "b": clamp, "c": weights})
    m = validate.ZERO_MARGIN
    assert (grown["a"]["low"], grown["a"]["high"]) == (0.0, 2.0 + 2.0 * m)  # a ReLU's bound keeps 0 as its end
    assert grown["a"]["method"] == f"max+margin:{m:g}" and grown["a"]["beyond"] == "zero"
    assert grown["b"] == clamp and validate.MARGIN == 0.0  # clipping guards: no blanket margin
    assert grown["c"] == weights  # stored-weight bounds are never widened
    explicit = validate.with_margin({"a": zero, "b": clamp}, 0.5)  # an explicit margin applies to every form
    assert explicit["a"]["high"] == explicit["b"]["high"] == 3.0
