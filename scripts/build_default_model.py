"""Build ovrange's bundled default models and data, deterministically, from Debian's Fashion-MNIST.

Usage::

    python -m scripts.build_default_model [--out build] [--force] [--arch lenet|seven|all] [--data DIR]

Two models are trained on CPU (fixed seed, deterministic algorithms, a fixed number of torch threads, Adam) and
exported to OpenVINO IR with f32 weights, an input tensor ``image`` of shape ``[-1, 1, 28, 28]`` taking RAW
0..255 pixels, and an output tensor ``logits`` of shape ``[-1, 10]``:

* ``--arch lenet``: :class:`scripts.fashion_models.FashionLeNet` as ``<out>/default/fashion_lenet.*``
* ``--arch seven``: :class:`scripts.fashion_models.FashionSevenAct` as ``<out>/seven_act/fashion_seven_act.*``

Each folder is self-contained (the data files are small, so they are written into every model folder rather
than shared through a third folder; a folder can then be copied or deleted on its own)::

    <name>.xml / <name>.bin   OpenVINO IR, f32 weights
    <name>.pt                 torch state_dict
    calib/00000.png ...       the first 1000 TRAIN images, 8-bit grayscale PNG (POT-style calibration folder)
    calib.npz                 x: those 1000 images, uint8 [1000, 1, 28, 28]; y: their labels, int64
    test.npz                  x: all 10,000 TEST images, uint8 [10000, 1, 28, 28]; y: labels, int64
    manifest.json             recipe, torch and OpenVINO f32 test accuracy, .bin sha256, IR op-type counts

A folder whose manifest records the current recipe and whose files (and .bin checksum) are intact is up to date
and is skipped unless ``--force``; otherwise it is rebuilt in a temporary sibling folder and renamed into place.
The models are built in parallel processes (``--jobs``, default one per CPU), each training on one thread:
about 30 s (lenet) and 40 s (seven) of CPU time. Building twice, on the same machine and library versions, gives
byte-identical files, whatever ``--jobs``.

Library use: :func:`build_default` builds what is missing and returns the paths (tests call it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openvino as ov

from ovrange.errors import OvrangeError
from scripts.fashion_data import DATA_DIR, BuildError, FashionMNIST, dataset_files, load_fashion_mnist
from ovrange.modelio import save_model
from ovrange.outputs import write_dir_atomically
from ovrange.runtime import compile_model

if TYPE_CHECKING:  # torch is imported lazily: an up-to-date check must not pay for (or need) it.
    import torch

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
CALIB_SIZE = 1000
SEED = 0
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
# oneDNN's float summation order depends on the thread count (1 and 2 threads give different weights here),
# so training pins it; build_default runs the trainings in parallel processes instead.
TRAIN_THREADS = 1
# Bump when the build changes its outputs, so that existing builds count as out of date. Edits to the model
# definitions are caught by hashing their source (see Spec.recipe).
RECIPE_VERSION = 1
MODELS_SOURCE = Path(__file__).with_name("fashion_models.py")
SEVEN_OPS = ("Relu", "Swish", "PRelu", "Elu", "Gelu", "Sigmoid", "Tanh")


@dataclass(frozen=True)
class Spec:
    """What to build for one ``--arch``: where, how long to train, and which IR ops the export must contain."""

    arch: str
    folder: str
    stem: str
    model_class: str
    epochs: int
    expected_ops: dict[str, int] = field(default_factory=dict)  # op type -> minimum count

    def recipe(self) -> dict[str, Any]:
        return {"version": RECIPE_VERSION, "model_class": self.model_class, "models_sha256": sha256(MODELS_SOURCE),
                "epochs": self.epochs, "seed": SEED, "batch_size": BATCH_SIZE, "optimizer": "Adam",
                "learning_rate": LEARNING_RATE, "train_threads": TRAIN_THREADS, "calib_size": CALIB_SIZE}


SPECS: dict[str, Spec] = {
    "lenet": Spec("lenet", "default", "fashion_lenet", "FashionLeNet", epochs=3, expected_ops={"Relu": 4}),
    "seven": Spec("seven", "seven_act", "fashion_seven_act", "FashionSevenAct", epochs=3,
                  expected_ops={op: 1 for op in SEVEN_OPS}),
}


# ---------------------------------------------------------------------------------------------------------------
# Paths and up-to-date checks


def model_paths(out: Path, arch: str) -> dict[str, Path]:
    """Every output path of one architecture under ``out`` (whether built or not)."""
    spec = SPECS[arch]
    folder = Path(out) / spec.folder
    return {
        "dir": folder,
        "xml": folder / f"{spec.stem}.xml",
        "bin": folder / f"{spec.stem}.bin",
        "pt": folder / f"{spec.stem}.pt",
        "calib_dir": folder / "calib",
        "calib_npz": folder / "calib.npz",
        "test_npz": folder / "test.npz",
        "manifest": folder / "manifest.json",
    }


def read_manifest(out: Path, arch: str) -> dict[str, Any] | None:
    """The manifest of a built architecture, or None when absent or unreadable."""
    try:
        return json.loads(model_paths(out, arch)["manifest"].read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(out: Path, arch: str) -> bool:
    """True when ``out`` holds a complete build of ``arch`` made with the current recipe."""
    paths = model_paths(out, arch)
    manifest = read_manifest(out, arch)
    if manifest is None or manifest.get("recipe") != SPECS[arch].recipe():
        return False
    if not all(p.exists() for p in paths.values()):
        return False
    calib_files = sorted(paths["calib_dir"].glob("*.png"))
    return len(calib_files) == CALIB_SIZE and sha256(paths["bin"]) == manifest.get("bin_sha256")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_data(folder: Path, data: FashionMNIST) -> None:
    """The calibration image folder, ``calib.npz`` and ``test.npz``."""
    from PIL import Image

    calib_dir = folder / "calib"
    calib_dir.mkdir()
    for index, image in enumerate(data.train_x[:CALIB_SIZE]):
        Image.fromarray(image[0]).save(calib_dir / f"{index:05d}.png")
    np.savez_compressed(folder / "calib.npz", x=data.train_x[:CALIB_SIZE], y=data.train_y[:CALIB_SIZE])
    np.savez_compressed(folder / "test.npz", x=data.test_x, y=data.test_y)


# ---------------------------------------------------------------------------------------------------------------
# Training (torch)


def _torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError as exc:
        raise BuildError("torch is needed to train the default models: pip install -e '.[train]'") from exc
    return torch


@contextlib.contextmanager
def deterministic_torch(seed: int = SEED, threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Seed torch and force deterministic kernels on a fixed thread count; restore everything on exit."""
    torch = _torch()
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads_before)
            torch.use_deterministic_algorithms(deterministic_before)


def train(spec: Spec, data: FashionMNIST, log: bool = True) -> torch.nn.Module:
    """A freshly initialised ``spec.model_class`` trained for ``spec.epochs`` epochs; returned in eval mode."""
    torch = _torch()
    from scripts import fashion_models

    with deterministic_torch():
        module = getattr(fashion_models, spec.model_class)()
        optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
        order = torch.Generator().manual_seed(SEED)
        images, labels = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
        module.train()
        for epoch in range(spec.epochs):
            total = 0.0
            for batch in torch.randperm(len(images), generator=order).split(BATCH_SIZE):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(module(images[batch].float()), labels[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            _log(log, f"  [{spec.arch}] epoch {epoch + 1}/{spec.epochs}: train loss {total / len(images):.4f}")
    return module.eval()


def torch_logits(module: torch.nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(images[i:i + batch_size]).float()).numpy()
                               for i in range(0, len(images), batch_size)])


# ---------------------------------------------------------------------------------------------------------------
# Export and evaluation (OpenVINO)


def convert(module: torch.nn.Module) -> ov.Model:
    """Trace ``module`` to an ov.Model with input ``image`` [-1, 1, 28, 28] (dynamic batch) and output ``logits``."""
    torch = _torch()
    # TorchScript tracing, although torch deprecates it: the torch.export route decomposes PReLU into Select math.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        model = ov.convert_model(module, example_input=torch.zeros(1, 1, 28, 28), input=[[-1, 1, 28, 28]])
    # The PyTorch frontend names the input after forward()'s argument, so the names are set afterwards.
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return model


def op_type_counts(model: ov.Model) -> dict[str, int]:
    """How many ops of each type the model has, sorted by type name."""
    return dict(sorted(Counter(op.get_type_name() for op in model.get_ordered_ops()).items()))


def check_ops(spec: Spec, counts: dict[str, int]) -> None:
    """Fail the build when the export lost an activation (e.g. a frontend decomposing Gelu into Erf math)."""
    short = {op: counts.get(op, 0) for op, least in spec.expected_ops.items() if counts.get(op, 0) < least}
    if short:
        raise BuildError(f"{spec.stem}: exported IR lacks expected ops {short} (expected at least "
                         f"{spec.expected_ops}); op counts: {counts}")


def openvino_logits(model: ov.Model, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits from the CPU plugin in f32 (it would default to bf16 on AMX machines)."""
    request = compile_model(model, "CPU", precision="f32").create_infer_request()
    return np.concatenate([request.infer({INPUT_NAME: images[i:i + batch_size].astype(np.float32)})[OUTPUT_NAME]
                           for i in range(0, len(images), batch_size)])


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


# ---------------------------------------------------------------------------------------------------------------
# Building


def build_arch(spec: Spec, data: FashionMNIST, folder: Path, log: bool = True) -> dict[str, Any]:
    """Train, export, check and evaluate one model, writing every output into ``folder``; returns the manifest."""
    torch = _torch()
    started = time.perf_counter()
    module = train(spec, data, log=log)
    _log(log, f"  [{spec.arch}] trained in {time.perf_counter() - started:.1f} s")
    model = convert(module)
    counts = op_type_counts(model)
    check_ops(spec, counts)

    torch_out = torch_logits(module, data.test_x)
    ov_out = openvino_logits(model, data.test_x)
    save_model(model, folder / f"{spec.stem}.xml")
    torch.save(module.state_dict(), folder / f"{spec.stem}.pt")
    write_data(folder, data)
    manifest = {
        "arch": spec.arch,
        "recipe": spec.recipe(),
        "epochs": spec.epochs,
        "seed": SEED,
        "input": {"name": INPUT_NAME, "shape": [-1, 1, 28, 28], "values": "raw pixels 0..255, float32"},
        "output": {"name": OUTPUT_NAME, "shape": [-1, 10]},
        "accuracy": {"torch": accuracy(torch_out, data.test_y), "openvino_f32": accuracy(ov_out, data.test_y)},
        "max_abs_logit_diff": float(np.abs(torch_out - ov_out).max()),
        "test_size": len(data.test_y),
        "bin_sha256": sha256(folder / f"{spec.stem}.bin"),
        "op_types": counts,
        "versions": {"torch": torch.__version__, "openvino": ov.get_version()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _log(log, _summary(spec, manifest))
    return manifest


def build_default(out: Path = Path("build"), archs: Sequence[str] = tuple(SPECS), force: bool = False,
                  data_dir: Path = DATA_DIR, log: bool = True, jobs: int | None = None) -> dict[str, dict[str, Path]]:
    """Build every architecture in ``archs`` under ``out`` unless up to date (or ``force``); return their paths.

    The result maps each arch (``lenet``, ``seven``) to its :func:`model_paths`. Stale architectures are built
    in up to ``jobs`` processes (default: one per CPU); the files do not depend on it. Raises BuildError for
    problems the user can fix (no dataset, no torch) and ovrange's OutputError when ``out`` cannot be written.
    """
    out = Path(out)
    stale = [arch for arch in archs if force or not is_up_to_date(out, arch)]
    for arch in archs:
        if arch not in stale:
            _log(log, f"{model_paths(out, arch)['dir']}: up to date")
    if stale:
        dataset_files(data_dir)  # fail here, once, rather than in every worker
        jobs = max(1, min(len(stale), jobs or os.cpu_count() or 1))
        if jobs == 1:
            data = load_fashion_mnist(data_dir)
            for arch in stale:
                _build_into_place(out, SPECS[arch], data, log)
        else:
            _build_in_processes(out, stale, data_dir, log, jobs)
    return {arch: model_paths(out, arch) for arch in archs}


def _build_in_processes(out: Path, archs: Sequence[str], data_dir: Path, log: bool, jobs: int) -> None:
    # Training is single-threaded (for determinism), so one process per core roughly halves the wall time.
    # "spawn" because forking a process that has loaded OpenVINO (and maybe torch) thread pools is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_build_arch_in_worker, out, arch, data_dir, log) for arch in archs]
        for future in futures:
            future.result()  # re-raises a worker's error


def _build_arch_in_worker(out: Path, arch: str, data_dir: Path, log: bool) -> None:
    _build_into_place(out, SPECS[arch], load_fashion_mnist(data_dir), log)


def _build_into_place(out: Path, spec: Spec, data: FashionMNIST, log: bool) -> None:
    folder = model_paths(out, spec.arch)["dir"]
    _log(log, f"{folder}: building {spec.model_class} ({spec.epochs} epochs)")
    # A temporary sibling folder renamed into place: an interrupted build never looks up to date.
    write_dir_atomically(folder, lambda tmp: build_arch(spec, data, tmp, log=log), force=True)


def _summary(spec: Spec, manifest: dict[str, Any]) -> str:
    acc = manifest["accuracy"]
    ops = ", ".join(f"{op} {n}" for op, n in manifest["op_types"].items())
    return (f"  [{spec.arch}] test accuracy: torch {acc['torch']:.4f}, OpenVINO f32 {acc['openvino_f32']:.4f}\n"
            f"  [{spec.arch}] IR op types: {ops}\n"
            f"  [{spec.arch}] {spec.stem}.bin sha256 {manifest['bin_sha256']}")


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.build_default_model",
                                     description="Build ovrange's default Fashion-MNIST models and data.")
    parser.add_argument("--out", type=Path, default=Path("build"), help="output root (default: build)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--arch", choices=[*SPECS, "all"], default="all", help="what to build (default: all)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help=f"Fashion-MNIST folder (default: {DATA_DIR})")
    parser.add_argument("--jobs", type=int, default=None, help="models built at once (default: one per CPU)")
    return parser.parse_args(argv)


def run_timed(build: Callable[[], object]) -> int:
    """A build script's exit code: 0 and its duration, or 1 and one ``error:`` line for a problem the user can fix."""
    started = time.perf_counter()
    try:
        build()
    except (BuildError, OvrangeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    archs = tuple(SPECS) if args.arch == "all" else (args.arch,)
    return run_timed(lambda: build_default(args.out, archs, force=args.force, data_dir=args.data, jobs=args.jobs))


if __name__ == "__main__":
    sys.exit(main())
