"""Build ovrange's bundled language model, deterministically, from Python's standard-library sources.

Usage::

    python -m scripts.build_llm [--out build/llm] [--force] [--steps 300]

A small Llama-architecture model (4 layers, hidden 192, 4 heads with 2 key/value heads, gated MLP of 512, RMSNorm,
rotary positions) and a byte-level BPE tokenizer of 4,096 tokens are trained on CPU on the ``.py`` files at the top
of the running Python's standard library (sorted by name, the first ``CORPUS_BYTES``), then exported with
optimum-intel as an OpenVINO language model, the way users export theirs (``optimum-cli export openvino --task
text-generation-with-past``)::

    <out>/hf/                 the transformers checkpoint and tokenizer (tokenizer.json)
    <out>/fp32/               stateful IR with f32 weights (openvino_model.xml/.bin, KV cache in ReadValue/Assign,
                              beam_idx input), openvino_tokenizer.xml / openvino_detokenizer.xml, configs
    <out>/int8/               the same with INT8 weight compression (optimum-intel's --weight-format int8)
    <out>/prompts.txt         held-out prompts: lines of standard-library files outside the corpus, none of
                              them a line of the corpus
    <out>/calib_prompts.txt   calibration prompts: lines from the corpus
    <out>/manifest.json       recipe, corpus and file checksums, training loss, greedy sample

Everything openvino_genai.LLMPipeline needs is in each IR folder. Training uses a fixed number of torch threads, a fixed seed
and deterministic algorithms: two builds on the same machine and library versions give the same weights. The corpus
depends on the Python version (its standard library), which the manifest records.

Needs the ``llm`` extra (``pip install -e '.[llm]'``: torch, transformers, optimum-intel, openvino-tokenizers,
openvino-genai). Library use: :func:`build_llm` builds what is missing and returns the paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

RECIPE = {
    "vocab_size": 4096,
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "seq_len": 128,
    "batch_size": 16,
    "steps": 300,
    "lr": 3e-3,
    "seed": 0,
    "corpus_bytes": 3_000_000,
    "version": 1,
}
EOS = "<|endoftext|>"
THREADS = 2  # a fixed count: the same threads give the same summation order, so the same weights
PROMPTS = 120  # held-out prompts written to prompts.txt (tests and benchmarks take the first ones they need)


def corpus_files(budget: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): top-level ``.py`` files of the standard library, sorted; the first ones
    up to ``budget`` bytes train, the rest give held-out prompts."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    train, used = [], 0
    for path in files:
        if used >= budget:
            break
        train.append(path)
        used += path.stat().st_size
    return train, files[len(train):]


def prompt_lines(files: list[Path], count: int) -> list[str]:
    """Code lines that make good prompts: the start of a statement, 24-80 characters, no blank or comment lines,
    one per file in turn until ``count``, deterministic."""
    chosen: list[str] = []
    per_file = [[line.rstrip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines()
                 if 24 <= len(line.strip()) <= 80 and not line.strip().startswith(("#", '"', "'"))]
                for p in files]
    depth = 0
    while len(chosen) < count and any(len(lines) > depth for lines in per_file):
        for lines in per_file:
            if len(lines) > depth * 37 and len(chosen) < count:
                chosen.append(lines[depth * 37].strip())
        depth += 1
    return chosen


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text[i:i + 100_000] for i in range(0, len(text), 100_000)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)


def train_model(ids, recipe: dict, log) -> tuple[object, float]:
    """Train the Llama model on the token stream ``ids`` (a 1-D int64 tensor); returns (model, final loss)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe["seed"])
    torch.use_deterministic_algorithms(True)
    config = LlamaConfig(vocab_size=recipe["vocab_size"], hidden_size=recipe["hidden_size"],
                         intermediate_size=recipe["intermediate_size"], num_hidden_layers=recipe["num_hidden_layers"],
                         num_attention_heads=recipe["num_attention_heads"],
                         num_key_value_heads=recipe["num_key_value_heads"],
                         max_position_embeddings=recipe["max_position_embeddings"], bos_token_id=0, eos_token_id=0,
                         pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    steps, seq, batch = recipe["steps"], recipe["seq_len"], recipe["batch_size"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["lr"], total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=generator)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps}: loss {loss_value:.3f}")
    model.eval()
    return model, loss_value


def export(hf_dir: Path, out: Path, formats: tuple[str, ...]) -> None:
    """``optimum-cli export openvino --task text-generation-with-past --weight-format F`` for each format, as users
    export; the exports run side by side (each is mostly one thread), each into ``out / F``."""
    cli = Path(sys.executable).with_name("optimum-cli")
    runs = {fmt: subprocess.Popen([str(cli), "export", "openvino", "--model", str(hf_dir), "--task",
                                   "text-generation-with-past", "--weight-format", fmt, str(out / fmt)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for fmt in formats}
    errors = {fmt: run.communicate()[1] for fmt, run in runs.items()}
    for fmt, run in runs.items():
        if run.returncode != 0:
            raise RuntimeError(f"optimum-cli export {fmt} failed ({run.returncode}): {errors[fmt].strip()[-2000:]}")


def greedy_sample(ir_dir: Path, prompt: str, tokens: int) -> str:
    """What openvino_genai.LLMPipeline generates greedily from ``prompt`` (a check that the export loads)."""
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = tokens, False
    return str(pipe.generate(prompt, config))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_llm(out: Path, *, force: bool = False, steps: int | None = None, log=print) -> dict[str, Path]:
    """Build the bundled language model into ``out`` unless an up-to-date build is there; return its paths."""
    recipe = {**RECIPE, **({"steps": steps} if steps else {})}
    paths = {"fp32": out / "fp32", "int8": out / "int8", "prompts": out / "prompts.txt",
             "calib_prompts": out / "calib_prompts.txt", "manifest": out / "manifest.json", "hf": out / "hf"}
    manifest_path = paths["manifest"]
    if not force and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("recipe") == recipe and all(p.exists() for p in paths.values()):
            return paths
    import torch

    torch.set_num_threads(THREADS)
    started = time.monotonic()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        train_files, held_files = corpus_files(recipe["corpus_bytes"])
        text = f"\n{EOS}\n".join(p.read_text(encoding="utf-8", errors="replace") for p in train_files)
        log(f"{out}: corpus {len(train_files)} standard-library files, {len(text):,} characters")
        tokenizer = train_tokenizer(text, recipe["vocab_size"])
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        log(f"{out}: {len(ids):,} tokens; training {recipe['steps']} steps")
        model, loss = train_model(ids, recipe, log)
        model.save_pretrained(tmp / "hf", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "hf")
        log(f"{out}: exporting fp32 and int8 with optimum-intel")
        export(tmp / "hf", tmp, ("fp32", "int8"))
        seen = {line.strip() for line in text.splitlines()}
        held = [line for line in prompt_lines(held_files, 3 * PROMPTS) if line not in seen][:PROMPTS]
        calib = prompt_lines(train_files, PROMPTS)
        (tmp / "prompts.txt").write_text("\n".join(held) + "\n")
        (tmp / "calib_prompts.txt").write_text("\n".join(calib) + "\n")
        sample = greedy_sample(tmp / "fp32", held[0], 16)
        manifest = {
            "recipe": recipe,
            "python": sys.version.split()[0],
            "corpus_files": len(train_files),
            "corpus_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "tokens": int(len(ids)),
            "final_loss": round(loss, 4),
            "sample": {"prompt": held[0], "generated": sample},
            "ir_sha256": {fmt: sha256(tmp / fmt / "openvino_model.bin") for fmt in ("fp32", "int8")},
            "seconds": round(time.monotonic() - started, 1),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{out}: done in {time.monotonic() - started:.0f} s; sample: {manifest['sample']}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/llm"))
    parser.add_argument("--force", action="store_true", help="rebuild even when an up-to-date build exists")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {RECIPE['steps']})")
    args = parser.parse_args(argv)
    try:
        build_llm(args.out, force=args.force, steps=args.steps)
    except ImportError as exc:
        print(f"error: {exc.name or exc} is missing: pip install -e '.[llm]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
