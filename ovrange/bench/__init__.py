"""Original vs protected on OpenVINO devices: shapes, which guards were fused, interleaved timing, benchmark_app.

- :mod:`ovrange.bench.shapes`: static input shapes and inputs, the same for both models;
- :mod:`ovrange.bench.fusion`: which inserted guards the plugin fused into other kernels;
- :mod:`ovrange.bench.benchmark`: both models timed in alternating blocks, paired ratios;
- :mod:`ovrange.bench.benchmark_app`: the wheel's ``benchmark_app`` on both models.
"""

from ovrange.bench.benchmark import HINTS, BenchmarkResult, Latency, ModelTiming, benchmark
from ovrange.bench.benchmark_app import (BenchmarkAppComparison, BenchmarkAppStats, benchmark_app_command,
                                         benchmark_app_path, compare_with_benchmark_app, parse_benchmark_app,
                                         run_benchmark_app)
from ovrange.bench.fusion import ClampFusion, FusionReport, fusion_report, guards
from ovrange.bench.shapes import parse_shape, random_inputs, static_shapes, with_static_shapes
from ovrange.runtime import DeviceInfo, devices

__all__ = ["HINTS", "BenchmarkResult", "Latency", "ModelTiming", "benchmark", "BenchmarkAppComparison",
           "BenchmarkAppStats", "benchmark_app_command", "benchmark_app_path", "compare_with_benchmark_app",
           "parse_benchmark_app", "run_benchmark_app", "ClampFusion", "FusionReport", "fusion_report", "guards",
           "parse_shape", "random_inputs", "static_shapes", "with_static_shapes", "DeviceInfo", "devices"]
