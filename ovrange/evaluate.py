"""Running a model over a labelled dataset: predictions and top-1 accuracy (f32 by default); for stateful language
models, the agreement of their greedy generations (:mod:`ovrange.generate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ovrange import data as data_mod
from ovrange.compare import DEFAULT_NEW_TOKENS, Judge, SdcCriterion, agreement, classes, output_index
from ovrange.errors import ConfigError, DataError, ModelError
from ovrange.runtime import Runner, is_stateful, refuse_stateful
from ovrange.text import is_language_model

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int

    @property
    def top1(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def predict_outputs(
    model: ov.Model,
    dataset: object,
    *,
    batch_size: int = 64,
    device: str = "CPU",
    precision: str = "f32",
    limit: int | None = None,
    progress: ProgressFn | None = None,
) -> list[np.ndarray]:
    """Every output of ``model`` for every sample of ``dataset`` (first ``limit`` samples), each concatenated on
    axis 0. A model that cannot be re-batched still runs, one sample at a time."""
    runner = Runner(model, device=device, batch_size=batch_size, precision=precision, fallback=True)
    samples, total = data_mod.subset(dataset, limit)
    if total == 0:
        raise DataError("the dataset is empty")
    return runner.predict_all(data_mod.batches(samples, model, runner.batch_size), progress=progress, total=total)


@dataclass(frozen=True)
class Judged:
    """What one agreement line compares: output ``index`` by arg-max (no judge), or what ``judge`` reads."""

    index: int
    judge: Judge | None = None
    label: str | None = None  # the output name to show; None when the line is about the whole model

    def pick(self, outputs: list[np.ndarray]) -> np.ndarray:
        return self.judge.pick(outputs) if self.judge else outputs[self.index]

    def agreement(self, reference: list[np.ndarray], other: list[np.ndarray]) -> float:
        """Share of samples on which ``other`` agrees with ``reference`` (all outputs of each model)."""
        return agreement(self.pick(reference), self.pick(other), self.judge)

    @property
    def criterion(self) -> str:
        return str(self.judge.criterion) if self.judge else "top-1"


def judged_outputs(model: ov.Model, sdc: str | None, output: str | None = None) -> list[Judged]:
    """The agreement lines of ``evaluate`` and ``check``: the named ``output``; the outputs a criterion names (per
    output, or ``detections``); else every output, each with its own line (the only one for a one-output model)."""
    criterion = SdcCriterion.parse(sdc) if sdc else None
    whole = criterion is not None and (bool(criterion.parts) or criterion.metric == "detections")
    named = all(port.get_names() for port in model.outputs)  # unnamed outputs: only the first, as before
    if output is not None or whole or len(model.outputs) == 1 or not named:
        index = output_index(model, output) if output is not None else 0
        judge = Judge.for_model(model, criterion, output) if criterion else None
        return [Judged(judge.output if judge else index, judge, output)]
    judged = []
    for index, port in enumerate(model.outputs):
        name = port.get_any_name()
        judged.append(Judged(index, Judge.for_model(model, criterion, name) if criterion else None, name))
    return judged


def predict(model: ov.Model, dataset: object, **options: Any) -> np.ndarray:
    """Output 0 of :func:`predict_outputs` (the same options), samples first."""
    return predict_outputs(model, dataset, **options)[0]


def top1(logits: np.ndarray) -> np.ndarray:
    """Class index per sample for classifier outputs ``[N, classes]`` (extra unit axes are squeezed)."""
    flat = logits.reshape(logits.shape[0], -1)
    return flat.argmax(axis=1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> Accuracy:
    labels = np.asarray(labels).reshape(-1)[: len(predictions)]
    return Accuracy(int((predictions == labels).sum()), int(len(labels)))


def check_labels(labels: np.ndarray, output: np.ndarray) -> np.ndarray:
    """``labels`` as int64 class indices shaped like :func:`classes` of ``output``, after checking they fit it:
    one-hot, fractional or out-of-range labels would give a meaningless accuracy."""
    labels = np.asarray(labels)
    dims = [d for d in output.shape[1:] if d != 1] or [1]
    n_classes, positions = dims[-1], int(np.prod(dims[:-1], dtype=np.int64))
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))):
        raise DataError(f"labels must be integer class indices; got dtype {labels.dtype}"
                        + (" with fractional values" if labels.dtype.kind == "f" else ""))
    rows = labels.reshape(len(labels), -1)
    if rows.shape[1] != positions:
        hint = " (one-hot? give class indices instead)" if rows.shape[1] == n_classes else ""
        raise DataError(f"labels of shape {labels.shape} do not fit the model output of shape {output.shape[1:]} "
                        f"per sample: {positions} class index per sample expected{hint}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_classes):
        raise DataError(f"labels {int(rows.min())}..{int(rows.max())} are outside the model's {n_classes} classes")
    return rows.astype(np.int64)


def label_accuracy(output: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 accuracy of ``output`` against ``labels`` (a sequence sample counts when every position is right)."""
    expected = check_labels(labels, output)[: len(output)]
    return Accuracy(int(np.all(classes(output)[: len(expected)] == expected, axis=1).sum()), len(expected))


def generation_criterion(models: list[ov.Model], sdc: str | None) -> bool:
    """True when ``evaluate`` compares greedy generations: a stateful language model, or ``--sdc generation:N``."""
    return any(is_stateful(m) and is_language_model(m) for m in models) or \
        (sdc or "").strip().startswith("generation")


def generation_agreement(paths: list[Path], models: list[ov.Model], data: Path, sdc: str | None, *,
                         limit: int | None = None, device: str = "CPU") -> tuple[SdcCriterion, int, list[float]]:
    """``evaluate`` of stateful language models on prompts: (criterion, prompts, per model the share of prompts on
    which its N greedy tokens are the first model's, judged as campaigns judge them: no SDC, no DUE)."""
    from ovrange import generate

    criterion = SdcCriterion.parse(sdc or f"generation:{DEFAULT_NEW_TOKENS}")
    if criterion.metric != "generation":
        raise ConfigError(f"stateful language models are compared by their greedy generations: use --sdc "
                          f"generation:N, not {sdc!r}")
    for path, model in zip(paths, models):
        if not is_language_model(model):
            refuse_stateful(model, "evaluate")  # a stateful model of another kind: the refusal of every command
        if not (is_language_model(model) and is_stateful(model)):
            raise ModelError(f"{path}: --sdc {criterion} compares stateful language models (optimum-intel exports "
                             "with past); this model is not one")
    samples, total = data_mod.subset(data_mod.load(data, models[0], model_path=paths[0]).dataset, limit)
    judge = Judge(criterion, eos=generate.eos_token(paths[0].parent))
    return criterion, total, generation_shares(models, list(samples), judge, device=device)


def generation_shares(models: list[ov.Model], samples: list[object], judge: Judge, *, device: str = "CPU"
                      ) -> list[float]:
    """Per model, the share of ``samples`` (prompts as token ids) on which its greedy generation is the first
    model's under ``judge``'s ``generation:N`` criterion (the first model: 1.0)."""
    from ovrange import generate

    new_tokens = judge.criterion.new_tokens
    reference = generate.generations(models[0], samples, new_tokens, device=device)
    return [1.0] + [agreement(reference, generate.generations(model, samples, new_tokens, device=device), judge)
                    for model in models[1:]]


def generation_lines(paths: list[Path], models: list[ov.Model], data: Path, sdc: str | None, *,
                     limit: int | None = None, device: str = "CPU") -> tuple[list[str], dict]:
    """The lines ``evaluate`` prints for :func:`generation_agreement` (the first model is the reference) and its
    ``--json`` report."""
    criterion, total, shares = generation_agreement(paths, models, data, sdc, limit=limit, device=device)
    lines = [f"{paths[0]}: the reference ({total} prompts, {criterion.new_tokens} greedy tokens each, f32)"]
    lines += [f"{path}: agrees with {paths[0].name} on {share:.2%} ({round(share * total)}/{total} prompts, "
              f"{criterion})" for path, share in zip(paths[1:], shares[1:])]
    report = {"data": str(data), "reference": str(paths[0]), "criterion": str(criterion),
              "models": [{"model": str(path), "samples": total, "agreement": share, "criterion": str(criterion)}
                         for path, share in zip(paths, shares)]}
    return lines, report
