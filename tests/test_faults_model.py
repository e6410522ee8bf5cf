"""The numpy fault model: IEEE-754 and fixed-point bit flips, bit sets, Wilson intervals."""

from __future__ import annotations

import numpy as np
import pytest

from ovrange.errors import ConfigError
from ovrange.faults.metrics import Rate, reduction, wilson
from ovrange.faults.faultlist import Fault
from ovrange.faults.formats import FORMATS, flip, parse_bits, parse_format


def test_fp32_flips_known_values():
    values = np.array([1.0, 1.0, 1.0, 1.0, 0.15625], np.float32)
    bits = np.array([31, 30, 23, 22, 30])
    out = flip(values, bits)
    assert out[0] == -1.0 and np.isinf(out[1]) and out[2] == 0.5 and out[3] == 1.5
    assert float(out[4]) == 0.15625 * 2.0**128  # exponent MSB: x * 2^128 for |x| < 1
    assert out.dtype == np.float32


def test_fp32_flip_is_its_own_inverse_for_every_bit():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(3200).astype(np.float32)
    bits = np.repeat(np.arange(32), 100)
    once = flip(values, bits)
    assert np.array_equal(flip(once, bits).view(np.uint32), values.view(np.uint32))
    assert (once.view(np.uint32) ^ values.view(np.uint32) == (np.uint32(1) << bits.astype(np.uint32))).all()


def test_fixed_point_flips_as_ranger_formats():
    fixed32, fixed16 = FORMATS["fixed32"], FORMATS["fixed16"]
    assert flip(np.array([1.5]), np.array([10]), fixed32)[0] == 0.5  # 1.5 = 1536/2^10; bit 10 is the unit bit
    assert flip(np.array([1.5]), np.array([30]), fixed32)[0] == 1.5 + 2**20  # integer MSB of 1/21/10
    assert flip(np.array([1.5]), np.array([31]), fixed32)[0] == 1.5 - 2**21  # sign bit, two's complement
    assert flip(np.array([1.25]), np.array([15]), fixed16)[0] == 1.25 - 2**13  # 14/2: sign at bit 15
    assert flip(np.array([-0.5]), np.array([0]), fixed16)[0] == -0.25
    assert flip(np.array([1e9]), np.array([0]), fixed16)[0] == 8191.5  # saturates to 8191.75, then flips bit 0
    assert flip(np.array([0.3]), np.array([1]), fixed16)[0] == 0.25 + 0.5  # 0.3 rounds to 0.25 first


def test_bit_sets_and_their_errors():
    fp32 = FORMATS["fp32"]
    assert parse_bits("30", fp32) == (30,)
    assert parse_bits("23-30", fp32) == tuple(range(23, 31)) == parse_bits("exponent", fp32)
    assert parse_bits("sign,0-1", fp32) == (0, 1, 31) and len(parse_bits("all", fp32)) == 32
    assert parse_bits([30, 31], fp32) == (30, 31) and parse_bits("integer", FORMATS["fixed16"]) == tuple(range(2, 15))
    for bad, message in (("32", "outside 0..31"), ("foo", "unknown bit position"), ("mantissa", None)):
        if message is None:
            with pytest.raises(ConfigError, match="outside 0..15"):
                parse_bits("16", FORMATS["fixed16"])
            continue
        with pytest.raises(ConfigError, match=message):
            parse_bits(bad, fp32)
    assert parse_format("fixed:8:4").bits == 8
    with pytest.raises(ConfigError, match="unknown number format"):
        parse_format("bf16")


def test_fault_record_round_trip():
    fault = Fault(trial=3, input=17, site="conv1", element=123, mask=1 << 30)
    assert fault.bit == 30 and fault.op == "flip"
    assert Fault.from_dict(fault.to_dict()) == fault
    with pytest.raises(ConfigError, match="malformed fault"):
        Fault.from_dict({"trial": 1})


def test_wilson_interval_matches_reference_values():
    low, high = wilson(0, 100)
    assert low == 0.0 and high == pytest.approx(0.03699, abs=1e-5)  # 95% upper bound for 0/100
    low, high = wilson(50, 100)
    assert (low, high) == (pytest.approx(0.40383, abs=1e-5), pytest.approx(0.59617, abs=1e-5))
    assert wilson(100, 100)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)
    red = reduction(Rate(200, 2000), Rate(0, 2000))
    assert red["ratio"] is None and red["at_least"] == pytest.approx(wilson(200, 2000)[0] / wilson(0, 2000)[1])


def test_tokens_criterion_flags_any_changed_position():
    from ovrange.compare import Judge, SdcCriterion

    golden = np.zeros((3, 4, 5), np.float32)
    golden[:, :, 1] = 1.0  # every position predicts class 1
    faulty = golden.copy()
    faulty[1, 2, 3] = 2.0  # sample 1: one position now predicts class 3
    faulty[2, 0, 1] = 1.5  # sample 2: larger, but the same classes
    codes, _, _ = Judge(SdcCriterion.parse("tokens")).classify(golden, faulty)
    assert codes.tolist() == [0, 1, 0]  # masked, SDC, masked


def test_text_criterion_counts_only_changes_of_the_text_read():
    """Greedy CTC: a repeat turned blank, or a blank turned repeat, reads the same text (masked, where ``tokens``
    counts an SDC); a blank that splits a repeat doubles a letter, a new class changes one (SDC)."""
    from ovrange.errors import ConfigError
    from ovrange.compare import Judge, SdcCriterion, ctc_text

    def scores(rows: list[list[int]]) -> np.ndarray:
        return np.eye(5, dtype=np.float32)[np.array(rows)]  # [N, T, 5]: one-hot per position

    golden = scores([[1, 1, 0, 2]] * 4)  # reads [1, 2]
    faulty = scores([[1, 0, 0, 2], [1, 1, 0, 3], [1, 1, 2, 2], [1, 0, 1, 2]])
    assert ctc_text(np.array([1, 0, 1, 2])).tolist() == [1, 1, 2]
    assert Judge(SdcCriterion.parse("text")).classify(golden, faulty)[0].tolist() == [0, 1, 0, 1]
    assert Judge(SdcCriterion.parse("tokens")).classify(golden, faulty)[0].tolist() == [1, 1, 1, 1]
    # another blank class: 0 is an ordinary class, the golden reads [1, 0, 2], and [1, 1, 2, 2] ([1, 2]) differs
    assert Judge(SdcCriterion.parse("text:4")).classify(golden, faulty)[0].tolist() == [0, 1, 1, 1]
    assert str(SdcCriterion.parse("text:4")) == "text:4"
    with pytest.raises(ConfigError, match="blank class"):
        SdcCriterion.parse("text:1.5")
