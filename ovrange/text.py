"""Prompts in, token ids out: text data for language models.

A language model (a model with an ``input_ids`` input, e.g. an optimum-intel export) is fed prompts: a ``.txt``
file (one prompt per line) or a ``.jsonl`` file (a ``prompt`` or ``text`` field per line). They are tokenized with
the tokenizer that sits beside the IR, as openvino-genai's LLMPipeline would: ``openvino_tokenizer.xml``
(openvino-tokenizers), else ``tokenizer.json`` (the ``tokenizers`` package). One sample is the 1-D int64 array of
one prompt's token ids; :mod:`ovrange.generate` turns it into a prefill and decode steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import openvino as ov

from ovrange.errors import DataError
from ovrange.runtime import compile_model, is_stateful, last_line, shared_core

TEXT_SUFFIXES = (".txt", ".jsonl")
OV_TOKENIZER = "openvino_tokenizer.xml"
HF_TOKENIZER = "tokenizer.json"


def is_language_model(model: ov.Model) -> bool:
    """True for a model fed token ids (an ``input_ids`` input), the models prompts are for."""
    return any("input_ids" in port.get_names() for port in model.inputs)


def is_text_data(path: str | Path) -> bool:
    return Path(path).suffix in TEXT_SUFFIXES


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a ``.txt`` (one per non-empty line) or ``.jsonl`` file (``prompt`` or ``text`` field)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts from {path}: {exc}") from exc
    if path.suffix == ".txt":
        prompts = [line for line in lines if line.strip()]
    else:
        prompts = [_jsonl_prompt(line, path, number) for number, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise DataError(f"{path} holds no prompt")
    return prompts


def _jsonl_prompt(line: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number} is not JSON: {exc.msg}") from exc
    text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{path}:{number} has no \"prompt\" or \"text\" string field")
    return text


def tokenizer(folder: str | Path) -> Callable[[str], np.ndarray]:
    """A function from a prompt to its token ids (1-D int64), from the tokenizer files in ``folder``."""
    folder = Path(folder)
    if (folder / OV_TOKENIZER).is_file():
        return _ov_tokenizer(folder / OV_TOKENIZER)
    if (folder / HF_TOKENIZER).is_file():
        return _hf_tokenizer(folder / HF_TOKENIZER)
    raise DataError(f"prompts need the model's tokenizer: no {OV_TOKENIZER} or {HF_TOKENIZER} in {folder}")


@lru_cache(maxsize=1)
def _tokenizer_core() -> ov.Core:
    """The shared core, with openvino-tokenizers' extension ops (importing the package only patches Cores made
    after the import; the shared one may be older)."""
    try:
        import openvino_tokenizers
    except ImportError as exc:
        raise DataError("openvino_tokenizer.xml needs the openvino-tokenizers package (pip install "
                        "openvino-tokenizers, the version of your openvino)") from exc
    core = shared_core()
    core.add_extension(str(openvino_tokenizers._ext_path))  # the package's documented extension library
    return core


def _ov_tokenizer(xml: Path) -> Callable[[str], np.ndarray]:
    core = _tokenizer_core()
    try:
        model = core.read_model(str(xml))
    except RuntimeError as exc:
        raise DataError(f"cannot read tokenizer {xml}: {last_line(exc)}") from exc
    compiled = compile_model(model, "CPU", precision="default", core=core)
    ids = next(port for port in compiled.outputs if "input_ids" in port.get_names())

    def encode(prompt: str) -> np.ndarray:
        return np.asarray(compiled([prompt])[ids]).reshape(-1).astype(np.int64)

    return encode


def _hf_tokenizer(path: Path) -> Callable[[str], np.ndarray]:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise DataError(f"{path} needs the tokenizers package (pip install tokenizers)") from exc
    try:
        loaded = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception type
        raise DataError(f"cannot read tokenizer {path}: {exc}") from exc
    return lambda prompt: np.asarray(loaded.encode(prompt).ids, np.int64)


def load(path: str | Path, model: ov.Model, model_path: str | Path | None) -> list[np.ndarray]:
    """The prompts of ``path`` as token-id arrays, for the stateful language model read from ``model_path``."""
    if not is_language_model(model) or not is_stateful(model):
        raise DataError(f"prompts ({Path(path).name}) feed stateful language models (an optimum-intel export with "
                        f"past); model {model.get_friendly_name()!r} is not one")
    if model_path is None:
        raise DataError("prompts need the model's folder to find its tokenizer")
    encode = tokenizer(Path(model_path).parent)
    samples = [encode(prompt) for prompt in read_prompts(path)]
    empty = next((i for i, ids in enumerate(samples) if ids.size == 0), None)
    if empty is not None:
        raise DataError(f"prompt {empty + 1} of {Path(path).name} has no tokens")
    return samples


EXPORT_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                "openvino_detokenizer.bin", "tokenizer.model", "merges.txt", "vocab.txt", "vocab.json")


def export_files(model_path: str | Path, model: ov.Model) -> list[Path]:
    """The files beside a stateful language model's IR that make its folder an LLM folder openvino-genai loads
    (tokenizer and detokenizer IRs, the JSON configs), to copy beside the protected IR; none for other models."""
    folder = Path(model_path).parent
    if not (is_language_model(model) and is_stateful(model)):
        return []
    found = [folder / name for name in EXPORT_FILES if (folder / name).is_file()]
    found += sorted(p for p in folder.glob("*.json") if p.name != "bounds.json")
    return found
