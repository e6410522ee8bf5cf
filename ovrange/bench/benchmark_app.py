"""``benchmark_app`` (shipped in the openvino wheel) on both models: the numbers users compare against."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ovrange.errors import ConfigError, DeviceError
from ovrange.timing import PairedRatio, paired_ratio


@dataclass(frozen=True)
class BenchmarkAppStats:
    """One benchmark_app run, from its ``-json_stats`` report (and its console lines, which are more precise)."""

    model: str
    device: str
    hint: str
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput_fps: float
    iterations: int
    duration_ms: float
    command: tuple[str, ...]


@dataclass(frozen=True)
class BenchmarkAppComparison:
    """benchmark_app on both models, ``rounds`` runs each in alternating order (A B B A ...)."""

    original: tuple[BenchmarkAppStats, ...]
    protected: tuple[BenchmarkAppStats, ...]
    latency_ratio: PairedRatio  # protected / original median latency, per pair of runs
    throughput_ratio: PairedRatio  # protected / original throughput, per pair of runs

    def to_json(self) -> dict[str, Any]:
        def ratio(r: PairedRatio) -> dict[str, float]:
            return {"median": r.median, "low": r.low, "high": r.high, "rounds": r.rounds}

        return {"original": [asdict(s) for s in self.original], "protected": [asdict(s) for s in self.protected],
                "latency_ratio": ratio(self.latency_ratio), "throughput_ratio": ratio(self.throughput_ratio)}


def benchmark_app_path() -> str:
    """The ``benchmark_app`` console script next to this Python (the venv's), else the one on PATH."""
    import shutil
    import sys
    from pathlib import Path

    local = Path(sys.executable).with_name("benchmark_app")
    found = str(local) if local.is_file() else shutil.which("benchmark_app")
    if not found:
        raise ConfigError("benchmark_app not found; it ships in the openvino wheel: pip install openvino")
    return found


def benchmark_app_command(model_path: str, report_folder: str, *, device: str = "CPU", hint: str = "latency",
                          precision: str = "f32", seconds: float = 10.0,
                          shapes: Mapping[str, Sequence[int]] | None = None, float_inputs: bool = True) -> list[str]:
    """The benchmark_app command line equivalent to :func:`benchmark`'s settings (see docs/benchmarks.md)."""
    command = [benchmark_app_path(), "-m", str(model_path), "-d", device, "-hint", hint,
               "-t", str(max(1, int(round(seconds)))), "-report_type", "no_counters", "-report_folder",
               str(report_folder), "-json_stats"]
    if float_inputs:
        command += ["-ip", "f32"]  # feed f32 as the model expects, not benchmark_app's u8 images
    if precision == "f32" and device.split(":")[0] not in ("AUTO", "MULTI", "HETERO", "BATCH"):
        command += ["-infer_precision", "f32"]
    if shapes:
        command += ["-shape", ",".join(f"{name}[{','.join(map(str, dims))}]" for name, dims in shapes.items())]
    return command


_CONSOLE = re.compile(r"^\[ INFO \]\s+(Median|Average|Min|Max):\s+([\d.]+)\s+(us|ms)\s*$", re.MULTILINE)


def parse_benchmark_app(report: Mapping[str, Any], console: str = "", command: Sequence[str] = ()) -> BenchmarkAppStats:
    """Read a ``benchmark_report.json``; latencies come from the console output when given.

    The JSON rounds latencies to 0.01 ms, which is all of a small model's latency; benchmark_app prints them in
    microseconds when they are that small, so the console lines are preferred for the four latency figures.
    """
    try:
        setup, results = report["configuration_setup"], report["execution_results"]
        values = {
            "Median": float(results.get("latency (ms)", "nan")), "Average": float(results.get("avg latency", "nan")),
            "Min": float(results.get("min latency", "nan")), "Max": float(results.get("max latency", "nan")),
        }
        for key, number, unit in _CONSOLE.findall(console):
            values[key] = float(number) / (1000.0 if unit == "us" else 1.0)
        return BenchmarkAppStats(
            model=str(report.get("cmd_options", {}).get("-m", "")), device=str(setup.get("target device", "")),
            hint=str(report.get("cmd_options", {}).get("-hint", "")), median_ms=values["Median"],
            mean_ms=values["Average"], min_ms=values["Min"], max_ms=values["Max"],
            throughput_fps=float(results["throughput"]), iterations=int(results["total number of iterations"]),
            duration_ms=float(results["total execution time (ms)"]), command=tuple(command))
    except (KeyError, TypeError, ValueError) as exc:
        raise DeviceError(f"unexpected benchmark_app report: missing or bad {exc}") from exc


def run_benchmark_app(model_path: str, report_folder: str, **settings: Any) -> BenchmarkAppStats:
    """Run benchmark_app once (``settings`` as in :func:`benchmark_app_command`) and parse its report."""
    import json
    import subprocess
    from pathlib import Path

    folder = Path(report_folder)
    folder.mkdir(parents=True, exist_ok=True)  # benchmark_app writes no report into a missing folder
    command = benchmark_app_command(model_path, str(folder), **settings)
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=float(settings.get("seconds", 10)) + 300)
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"benchmark_app did not finish on {model_path}") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines()
                 if line.strip() and not line.startswith(("[ INFO ]", "[ WARNING ]", "[Step"))]
        raise DeviceError(f"benchmark_app failed on {model_path}: {lines[-1] if lines else 'no output'}")
    report = folder / "benchmark_report.json"
    if not report.is_file():
        raise DeviceError(f"benchmark_app wrote no report into {folder}")
    return parse_benchmark_app(json.loads(report.read_text()), done.stdout, command)


def compare_with_benchmark_app(original_path: str, protected_path: str, report_folder: str, *, rounds: int = 3,
                               **settings: Any) -> BenchmarkAppComparison:
    """benchmark_app on both models, alternating (A B, B A, ...), ``rounds`` runs each, one report folder each."""
    from pathlib import Path

    paths = {"original": original_path, "protected": protected_path}
    runs: dict[str, list[BenchmarkAppStats]] = {"original": [], "protected": []}
    for index in range(rounds):
        order = ("original", "protected") if index % 2 == 0 else ("protected", "original")
        for label in order:
            folder = Path(report_folder) / f"{label}-{index + 1}"
            runs[label].append(run_benchmark_app(paths[label], str(folder), **settings))
    latency = paired_ratio([s.median_ms for s in runs["original"]], [s.median_ms for s in runs["protected"]])
    throughput = paired_ratio([1 / s.throughput_fps for s in runs["protected"]],
                              [1 / s.throughput_fps for s in runs["original"]])
    return BenchmarkAppComparison(tuple(runs["original"]), tuple(runs["protected"]), latency, throughput)
