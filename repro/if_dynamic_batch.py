"""OpenVINO CPU plugin: wrong output after a dynamic-batch ``If`` (pure openvino opsets, no ovrange).

Graph: x[?,1,12,12] -> Convolution -> If(all(isfinite(x))) {then: identity, else: negative} -> Relu -> MaxPool.
The condition is always true, so the model equals Convolution -> Relu -> MaxPool. Seen with OpenVINO 2026.4 on
an AMD EPYC (AVX2, no AVX-512): the first inference at a batch larger than any before returns garbage (1e+30
values, or every row the same); repeating the same batch is right. The Convolution runs in acdb and MaxPool in
aBcd8b here, so Reorders surround the If. Dropping the Relu, the MaxPool or the Convolution, or making the batch
static, hides it; the then-body's content and INFERENCE_PRECISION_HINT do not matter. A Broadcast of the If output
to ShapeOf(its input) (``settled``) gives right outputs, which is what ovrange's ``branch: if`` inserts.

Run: python repro/if_dynamic_batch.py   (prints the max error per inference; exit 1 when the plugin is wrong)
"""

import sys

import numpy as np
import openvino as ov
import openvino.opset13 as ops

W = ops.constant((np.random.default_rng(0).standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32))


def build(use_if: bool, settled: bool = False) -> ov.Model:
    x = ops.parameter([-1, 1, 12, 12], ov.Type.f32, name="x")
    y = ops.convolution(x, W, [1, 1], [0, 0], [0, 0], [1, 1])
    out = y.output(0)
    if use_if:
        cond = ops.reduce_logical_and(ops.is_finite(x), ops.constant(np.arange(4)), False)
        then_p = ops.parameter(y.get_output_partial_shape(0), ov.Type.f32)
        else_p = ops.parameter(y.get_output_partial_shape(0), ov.Type.f32)
        then_body = ov.Model([ops.result(then_p)], [then_p], "then")
        else_body = ov.Model([ops.result(ops.negative(else_p))], [else_p], "else")
        branch = ops.if_op(cond.output(0))
        branch.set_then_body(then_body)
        branch.set_else_body(else_body)
        branch.set_input(y.output(0), then_p, None)
        branch.set_input(y.output(0), None, else_p)
        branch.set_output(then_body.get_results()[0], else_body.get_results()[0])
        branch.validate_and_infer_types()
        out = branch.output(0)
        if settled:
            out = ops.broadcast(out, ops.shape_of(y)).output(0)
    h = ops.max_pool(ops.relu(out), [2, 2], [1, 1], [0, 0], [0, 0], [2, 2]).output(0)
    return ov.Model([ops.result(h)], [x], "if_dynamic_batch")


def main() -> int:
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    x = np.random.default_rng(1).standard_normal((200, 1, 12, 12)).astype(np.float32)
    reference = core.compile_model(build(False), "CPU", config).create_infer_request()
    print(ov.__version__, core.get_property("CPU", "FULL_DEVICE_NAME"))
    wrong = False
    for label, model in (("If", build(True)), ("If + Broadcast", build(True, settled=True))):
        request = core.compile_model(model, "CPU", config).create_infer_request()
        errors = []
        for n in (1, 1, 2, 2, 200, 200, 7):
            errors.append(float(np.abs(request.infer([x[:n]])[0] - reference.infer([x[:n]])[0]).max()))
        print(f"{label:15s} batches 1,1,2,2,200,200,7: max error", " ".join(f"{e:.3g}" for e in errors))
        wrong |= label == "If" and max(errors) > 1e-5
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
