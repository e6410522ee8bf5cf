"""PP-OCRv4 recognition through the POT chain [DefaultQuantization (transformer scheme), RangeSupervision]:
the Clamps change no decoded line of the INT8 model, and the INT8 model reads unseen rendered lines as f32 does
on most of them (the measured difference over 100 lines is in docs/quantized.md)."""

from __future__ import annotations

import numpy as np

from ovrange.config import parse_config
from ovrange.modelio import read_model
from ovrange.protect import protection_info, run_chain
from ovrange.quantize import apply
from scripts import ocr_data


def test_chain_reads_unseen_lines_as_its_int8_model():
    model = read_model(ocr_data.rec_model_path())
    calib = ocr_data.calibration_inputs(32, seed=0)
    texts = ocr_data.sample_texts(24, seed=123)  # not the calibration lines (seed 0)
    x = np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts])
    chain = parse_config({"compression": {"algorithms": [
        # saturation_fix all: on CPUs without VNNI (AVX2 only) the plugin's u8 x s8 pairs saturate at 16 bits and
        # nncf's default fixes the first layer only (7-bit weights everywhere cost a little precision on VNNI CPUs)
        {"name": "DefaultQuantization", "params": {"stat_subset_size": 32, "model_type": "transformer",
                                                   "saturation_fix": "all"}},
        {"name": "RangeSupervision", "params": {"stat_subset_size": 32}}]}}).algorithms
    int8 = apply(model, calib, chain[0])
    protected = run_chain(int8, calib, chain[1:])  # what run_chain(model, calib, chain) runs after its quantization
    assert len(protection_info(protected).nodes) == 39  # Swish x7, HSwish x28, Relu x2, HardSigmoid x2, as on f32
    f32, quantized, guarded = (ocr_data.recognize(m, x) for m in (model, int8, protected))
    assert guarded == quantized
    assert sum(a == b for a, b in zip(quantized, f32)) >= 0.85 * len(texts)
