"""Greedy generation on stateful language models (optimum-intel exports).

A sample of a language model is one prompt's token ids. It runs as a user's generation does: the state (KV cache)
is reset, the prompt is fed at once (prefill), then N decode steps each feed the arg-max token of the step before.
The inputs are those of an optimum-intel export: ``input_ids``, ``attention_mask`` (ones over past and current
tokens), ``position_ids`` (counting from 0) and ``beam_idx`` (zeros: one beam). :func:`steps` yields every step's
inputs and outputs (the statistics loop folds them all); :func:`generate` keeps the tokens and
:func:`step_logits` the logits of each step, which the ``generation:N`` criterion of :mod:`ovrange.compare` judges
(``evaluate``, ``check`` and campaigns alike).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import openvino as ov

from ovrange.errors import DataError, ModelError
from ovrange.runtime import Runner

ProgressFn = Callable[[int, int], None]
INPUTS = ("input_ids", "attention_mask", "position_ids", "beam_idx")
CALIBRATION_STEPS = 8  # decode steps after each calibration prompt's prefill


def input_roles(model: ov.Model) -> list[str]:
    """The role (one of :data:`INPUTS`) of each model input, in input order; an unknown input is a ModelError."""
    roles = []
    for port in model.inputs:
        role = next((name for name in INPUTS if name in port.get_names()), None)
        if role is None:
            raise ModelError(f"input {port.get_any_name()!r} of model {model.get_friendly_name()!r} is not one a "
                             f"stateful language model takes ({', '.join(INPUTS)})")
        roles.append(role)
    if "input_ids" not in roles:
        raise ModelError(f"model {model.get_friendly_name()!r} has no input_ids input")
    return roles


def token_ids(sample: object) -> np.ndarray:
    """A sample of a language model as 1-D int64 token ids (a prompt's tokens, or a row of an integer array)."""
    ids = np.asarray(sample)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise DataError(f"a stateful language model takes prompts (--data prompts.txt) or token ids, one 1-D "
                        f"integer array per sample; got a sample of shape {ids.shape} and dtype {ids.dtype}")
    return ids.astype(np.int64)


def _arrays(model: ov.Model, roles: list[str], ids: np.ndarray, past: int) -> list[np.ndarray]:
    """The inputs of one step feeding ``ids`` after ``past`` tokens, in model-input order and dtypes."""
    values = {"input_ids": ids.reshape(1, -1),
              "attention_mask": np.ones((1, past + ids.size), np.int64),
              "position_ids": np.arange(past, past + ids.size, dtype=np.int64).reshape(1, -1),
              "beam_idx": np.zeros(1, np.int64)}
    return [values[role].astype(port.get_element_type().to_dtype()) for role, port in zip(roles, model.inputs)]


def steps(runner: Runner, model: ov.Model, sample: object, decode_steps: int, logits: int = 0,
          eos: int | None = None) -> Iterator[tuple[list[np.ndarray], tuple]]:
    """Run one prompt through ``runner`` (a stateful Runner of ``model``, or of a model with the same inputs): reset,
    a prefill, then up to ``decode_steps`` greedy decode steps (none after ``eos`` is generated); yield each
    step's (inputs, outputs). The next token is the arg-max of output ``logits`` at the last position."""
    roles = input_roles(model)
    ids, past = token_ids(sample), 0
    vocabulary = model.outputs[0].get_partial_shape()[-1]
    if ids.min() < 0 or (vocabulary.is_static and ids.max() >= vocabulary.get_length()):
        raise DataError(f"token ids {ids.min()}..{ids.max()} are outside the model's vocabulary of "
                        f"{vocabulary} tokens (a tokenizer of another model?)")
    for index in range(decode_steps + 1):
        arrays = _arrays(model, roles, ids, past)
        outputs = runner.step(arrays, first=index == 0)
        yield arrays, outputs
        past += ids.size
        ids = np.array([next_token(outputs[logits])], np.int64)
        if eos is not None and int(ids[0]) == eos:
            return


def next_token(logits: np.ndarray) -> int:
    """The greedy choice: the arg-max of the logits at the last position of the one sequence."""
    return int(np.asarray(logits)[0, -1].argmax())


def generate(runner: Runner, model: ov.Model, sample: object, new_tokens: int, eos: int | None = None) -> np.ndarray:
    """The ``new_tokens`` greedy tokens after a prompt (fewer when ``eos`` ends the generation, ``eos`` included)."""
    return np.array([next_token(outputs[0]) for _, outputs in steps(runner, model, sample, new_tokens - 1, 0, eos)],
                    np.int64)


def eos_token(folder: str | Path) -> int | None:
    """The end-of-sequence token of an export (generation_config.json, else config.json), or None."""
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("eos_token_id")
            except (OSError, ValueError):
                continue
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int):
                return value
    return None


def step_logits(runner: Runner, model: ov.Model, sample: object, new_tokens: int) -> np.ndarray:
    """``[new_tokens, vocabulary]``: the last-position logits of each of the prefill and ``new_tokens`` - 1 decode
    steps after a prompt (what the ``generation:N`` criterion judges; their arg-maxes are the greedy tokens). A step
    whose logits hold a non-finite value anywhere (any position) gives a row of NaN: the runtime could see it."""
    rows = []
    for _, outputs in steps(runner, model, sample, new_tokens - 1):
        logits = np.asarray(outputs[0])
        rows.append(logits[0, -1].astype(np.float32) if np.isfinite(logits).all()
                    else np.full(logits.shape[-1], np.nan, np.float32))
    return np.stack(rows)


def generations(model: ov.Model, samples: Sequence[object], new_tokens: int, *, device: str = "CPU",
                progress: ProgressFn | None = None) -> np.ndarray:
    """``[samples, new_tokens, vocabulary]``: :func:`step_logits` of ``model`` after each sample, in f32, the state
    reset before each sample."""
    runner = Runner(model, device=device, stateful=True, command="evaluate")
    found = []
    for index, sample in enumerate(samples):
        found.append(step_logits(runner, model, sample, new_tokens))
        if progress:
            progress(index + 1, len(samples))
    return np.stack(found)
