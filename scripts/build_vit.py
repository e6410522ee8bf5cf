"""Build ovrange's bundled transformer: a small ViT trained on Fashion-MNIST, exported as users export theirs.

Usage::

    python -m scripts.build_vit [--out build] [--force]

The model (:class:`FashionViT`) is trained on CPU with the recipe of :mod:`scripts.build_default_model` (fixed
seed, deterministic kernels, one torch thread, Adam) and exported with ``openvino.convert_model`` from PyTorch, so
the IR has what real transformer exports have: attention as one ``ScaledDotProductAttention`` op, LayerNorm as
``MVN`` + ``Multiply`` + ``Add``, ``Gelu``, linear layers as ``MatMul`` + bias ``Add``, residual ``Add``\\ s.
Input ``image`` ``[-1, 1, 28, 28]`` (raw 0..255 pixels), output ``logits`` ``[-1, 10]``.

Output ``<out>/vit/``: ``fashion_vit.xml/.bin`` (f32), ``fashion_vit.pt``, ``calib/`` + ``calib.npz`` (first 1000
train images), ``test.npz`` (10,000 test images), ``manifest.json`` (recipe, accuracies, op counts, .bin sha256).
About 2-3 minutes of CPU on one thread; an up-to-date folder is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ovrange.modelio import save_model

from ovrange.outputs import write_dir_atomically
from scripts.build_default_model import (BATCH_SIZE, CALIB_SIZE, INPUT_NAME, OUTPUT_NAME, SEED, _log, _torch,
                                         accuracy, check_ops, deterministic_torch, op_type_counts, openvino_logits,
                                         run_timed, sha256, torch_logits, write_data)
from scripts.fashion_data import DATA_DIR, dataset_files, load_fashion_mnist

FOLDER, STEM = "vit", "fashion_vit"
RECIPE = {"version": 1, "model": "FashionViT", "patch": 7, "dim": 64, "depth": 4, "heads": 4, "mlp": 128,
          "epochs": 6, "seed": SEED, "batch_size": BATCH_SIZE, "optimizer": "AdamW", "learning_rate": 2e-3,
          "train_threads": 1, "calib_size": CALIB_SIZE}
EXPECTED_OPS = {"ScaledDotProductAttention": 4, "MVN": 9, "Gelu": 4}


def vit_paths(out: Path) -> dict[str, Path]:
    folder = Path(out) / FOLDER
    return {"dir": folder, "xml": folder / f"{STEM}.xml", "bin": folder / f"{STEM}.bin", "pt": folder / f"{STEM}.pt",
            "calib_npz": folder / "calib.npz", "test_npz": folder / "test.npz", "manifest": folder / "manifest.json"}


def is_up_to_date(out: Path) -> bool:
    paths = vit_paths(out)
    try:
        manifest = json.loads(paths["manifest"].read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("recipe") == RECIPE and all(p.exists() for p in paths.values())
            and sha256(paths["bin"]) == manifest.get("bin_sha256"))


def make_module(image: int = 28, channels: int = 1, classes: int = 10, **shape: int) -> Any:
    """A fresh :class:`FashionViT` (defined inside so that importing this script needs no torch); ``shape``
    overrides the recipe's patch/dim/depth/heads/mlp (benchmarks/deit_tiny.py builds a DeiT-Tiny this way)."""
    torch = _torch()
    from torch import nn
    from torch.nn import functional as F

    from scripts.fashion_models import RawNormalize

    r = {**RECIPE, **shape}

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = nn.Linear(r["dim"], 3 * r["dim"]), nn.Linear(r["dim"], r["dim"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, c = x.shape
            q, k, v = self.qkv(x).reshape(n, t, 3, r["heads"], c // r["heads"]).permute(2, 0, 3, 1, 4).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v)  # one ScaledDotProductAttention op in OpenVINO
            return self.proj(y.transpose(1, 2).reshape(n, t, c))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(r["dim"]), Attention()
            self.norm2 = nn.LayerNorm(r["dim"])
            self.mlp = nn.Sequential(nn.Linear(r["dim"], r["mlp"]), nn.GELU(), nn.Linear(r["mlp"], r["dim"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class FashionViT(nn.Module):
        """Patches 7x7 -> 16 tokens + a class token, pre-norm blocks, LayerNorm, linear head on the class token."""

        def __init__(self) -> None:
            super().__init__()
            tokens = (image // r["patch"]) ** 2 + 1
            self.normalize = RawNormalize()
            self.embed = nn.Conv2d(channels, r["dim"], r["patch"], stride=r["patch"])
            self.cls = nn.Parameter(torch.zeros(1, 1, r["dim"]))
            self.pos = nn.Parameter(torch.randn(1, tokens, r["dim"]) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(r["depth"])])
            self.norm, self.head = nn.LayerNorm(r["dim"]), nn.Linear(r["dim"], classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.embed(self.normalize(x)).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    return FashionViT()


def train(images: np.ndarray, labels: np.ndarray, log: bool = True) -> Any:
    torch = _torch()
    with deterministic_torch(threads=RECIPE["train_threads"]):
        module = make_module()
        optimizer = torch.optim.AdamW(module.parameters(), lr=RECIPE["learning_rate"])
        steps = RECIPE["epochs"] * -(-len(images) // BATCH_SIZE)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, RECIPE["learning_rate"], total_steps=steps)
        order = torch.Generator().manual_seed(SEED)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        module.train()
        for epoch in range(RECIPE["epochs"]):
            total = 0.0
            for batch in torch.randperm(len(x), generator=order).split(BATCH_SIZE):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(module(x[batch].float()), y[batch])
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            _log(log, f"  [vit] epoch {epoch + 1}/{RECIPE['epochs']}: train loss {total / len(x):.4f}")
    return module.eval()


def convert(module: Any, shape: tuple[int, ...] = (1, 28, 28)) -> ov.Model:
    """``module`` as an ov.Model with input ``image`` ``[-1, *shape]`` and output ``logits``."""
    torch = _torch()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        model = ov.convert_model(module, example_input=torch.zeros(1, *shape), input=[[-1, *shape]])
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return model


def build(folder: Path, data_dir: Path = DATA_DIR, log: bool = True) -> dict[str, Any]:
    """Train, export, check and evaluate the ViT into ``folder``; returns the manifest."""
    torch = _torch()
    data = load_fashion_mnist(data_dir)
    started = time.perf_counter()
    module = train(data.train_x, data.train_y, log)
    _log(log, f"  [vit] trained in {time.perf_counter() - started:.1f} s")
    model = convert(module)
    counts = op_type_counts(model)
    check_ops(_OpsSpec(), counts)
    torch_out, ov_out = torch_logits(module, data.test_x), openvino_logits(model, data.test_x)
    save_model(model, folder / f"{STEM}.xml")
    torch.save(module.state_dict(), folder / f"{STEM}.pt")
    write_data(folder, data)
    manifest = {
        "arch": "vit", "recipe": RECIPE,
        "input": {"name": INPUT_NAME, "shape": [-1, 1, 28, 28], "values": "raw pixels 0..255, float32"},
        "output": {"name": OUTPUT_NAME, "shape": [-1, 10]},
        "accuracy": {"torch": accuracy(torch_out, data.test_y), "openvino_f32": accuracy(ov_out, data.test_y)},
        "max_abs_logit_diff": float(np.abs(torch_out - ov_out).max()), "test_size": len(data.test_y),
        "bin_sha256": sha256(folder / f"{STEM}.bin"), "op_types": counts,
        "versions": {"torch": torch.__version__, "openvino": ov.get_version()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _log(log, f"  [vit] test accuracy: torch {manifest['accuracy']['torch']:.4f}, "
              f"OpenVINO f32 {manifest['accuracy']['openvino_f32']:.4f}")
    return manifest


class _OpsSpec:
    """What :func:`scripts.build_default_model.check_ops` reads: the stem and the minimum op counts."""

    stem = STEM
    expected_ops = EXPECTED_OPS


def build_vit(out: Path = Path("build"), force: bool = False, data_dir: Path = DATA_DIR,
              log: bool = True) -> dict[str, Path]:
    """Build the ViT under ``out`` unless up to date (or ``force``); return its paths."""
    paths = vit_paths(out)
    with _one_build_at_a_time(paths["dir"]):
        if not force and is_up_to_date(out):
            _log(log, f"{paths['dir']}: up to date")
            return paths
        dataset_files(data_dir)
        _log(log, f"{paths['dir']}: building FashionViT ({RECIPE['epochs']} epochs)")
        write_dir_atomically(paths["dir"], lambda tmp: build(tmp, data_dir, log), force=True)
    return paths


@contextmanager
def _one_build_at_a_time(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s build: a second caller (``make test`` starts the tests that need the
    ViT while it still trains) waits for the first and then finds the folder up to date."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.build_vit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build"), help="output root (default: build)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help=f"Fashion-MNIST folder (default: {DATA_DIR})")
    args = parser.parse_args(argv)
    return run_timed(lambda: build_vit(args.out, args.force, args.data))


if __name__ == "__main__":
    sys.exit(main())
