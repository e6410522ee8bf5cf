"""OpenVINO CPU plugin INT8 convolution on a CPU without VNNI (AVX2 only): u8 x s8 products are added in pairs that
saturate to int16 (vpmaddubsw), so a u8 input of 255 times an int8 weight of 127 sums wrong (pure openvino opsets).

One 1x1 Convolution over 8 channels: FakeQuantize(0..255, 256 levels) input, int8 weights decoded by
Convert -> Multiply(0.01), so the plugin runs it as an INT8 kernel. Exact: 255 * 127 * 8 * 0.01 = 2590.8. Where
the CPU lacks VNNI each pair saturates at 32767, giving 4 * 32767 * 0.01 = 1310.68; weights of 64 stay exact
(255 * 64 * 2 < 32767), which is why nncf's overflow_fix quantizes weights to 7 bits. LP_TRANSFORMS_MODE=False
(f32 kernels on decoded weights) gives the exact sums.

Run: python repro/int8_saturation.py   (exit 1 when the INT8 kernel saturates)
"""

import sys

import numpy as np
import openvino as ov
import openvino.opset13 as ops

CHANNELS = 8
WEIGHTS = np.stack([np.full((CHANNELS, 1, 1), v, np.int8) for v in (127, 64, -127)])


def build() -> ov.Model:
    x = ops.parameter([1, CHANNELS, 4, 4], ov.Type.f32, name="x")
    low, high = ops.constant(np.float32(0)), ops.constant(np.float32(255))
    quantized = ops.fake_quantize(x, low, high, low, high, 256)
    scale = ops.constant(np.full((len(WEIGHTS), 1, 1, 1), 0.01, np.float32))
    weights = ops.multiply(ops.convert(ops.constant(WEIGHTS), ov.Type.f32), scale)
    return ov.Model([ops.result(ops.convolution(quantized, weights, [1, 1], [0, 0], [0, 0], [1, 1]))], [x])


def main() -> int:
    core = ov.Core()
    x = np.full((1, CHANNELS, 4, 4), 255, np.float32)
    exact = 255.0 * WEIGHTS[:, :, 0, 0].astype(np.float64).sum(axis=1) * 0.01
    print(ov.__version__, core.get_property("CPU", "FULL_DEVICE_NAME"), "exact:", exact)
    saturates = False
    for label, extra in (("INT8 kernel", {}), ("LP_TRANSFORMS_MODE=False", {"LP_TRANSFORMS_MODE": False})):
        compiled = core.compile_model(build(), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **extra})
        kernel = [op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
        got = compiled.create_infer_request().infer([x])[0][0, :, 0, 0]
        print(f"{label:25s} {kernel}: {got}")
        saturates |= label == "INT8 kernel" and not np.allclose(got, exact, rtol=1e-5)
    return 1 if saturates else 0


if __name__ == "__main__":
    sys.exit(main())
