"""Wall-clock of one campaign in one process against ``--workers 2`` on a local Ray instance (interleaved rounds).

With ``--compare lanes`` the contenders are one process with one lane (one engine using every core) against one
process with ``--lanes 2`` (two engines of cores/2 OpenVINO threads each): the measurement behind the default lane
count of :class:`ovrange.faults.executors.LocalExecutor`.

Each contender is the whole command, ``python -m ovrange inject ... [--workers 2]``, so the Python start-up, the
model's compilation and (for Ray) starting and stopping the local Ray instance all count. Rounds alternate the
order (A B, B A, ...); the speed-up is the median of per-round ratios with its 95% interval. The goal on a 2-core
machine is >= 1.7x on a campaign that takes >= 60 s in one process. Both contenders must give the same per-trial
outcomes (checked every round).

Default model: the DeiT-Tiny-sized ViT with random weights of ``benchmarks/vit_random.py`` (built on first use);
``--model build/vit/fashion_vit.xml --data build/vit/test.npz`` or ``build/default/fashion_lenet.xml`` with
``build/default/test.npz`` for the bundled models.

Usage: python benchmarks/bench_ray.py [--model M.xml --data D.npz] [--trials 600] [--batch-size 16]
       [--shard-size 160] [--rounds 3] [--compare ray|lanes] [--process-lanes 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

from ovrange.timing import interleaved, paired_ratio  # noqa: E402


def command(model: Path, data: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "ovrange", "inject", str(model), "--data", str(data), "--trials", str(args.trials),
           "--num-samples", str(args.inputs), "--batch-size", str(args.batch_size), "--target", args.target,
           "--json", str(out), "-q"] + (["--shard-size", str(args.shard_size)] if args.shard_size else [])
    return cmd + extra


def run(cmd: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--trials", type=int, default=600)
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=None, help="trials per shard (both contenders)")
    parser.add_argument("--target", default="activations", choices=["activations", "weights"])
    parser.add_argument("--compare", default="ray", choices=["ray", "lanes"],
                        help="ray: one process vs --workers N; lanes: --lanes 1 vs --lanes 2 in one process")
    parser.add_argument("--process-lanes", type=int, default=None,
                        help="with --compare ray: lanes of the one-process contender (default: ovrange's own choice; "
                             "1 = one engine on every core, the one-process run before lanes existed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovrange-bench-ray-") as scratch:
        return measure(args, Path(scratch))


def measure(args: argparse.Namespace, scratch: Path) -> int:
    if args.model is None:
        from benchmarks.vit_random import build

        args.model, args.data = build(Path(tempfile.gettempdir()) / "ovrange-vit-random")
    one = (["--lanes", str(args.process_lanes)] if args.process_lanes else [])
    extras = ({"one process" + (f" ({' '.join(one)})" if one else ""): one,
               f"--workers {args.workers}": ["--workers", str(args.workers)]}
              if args.compare == "ray" else {"--lanes 1": ["--lanes", "1"], "--lanes 2": ["--lanes", "2"]})
    outs = {name: scratch / f"{k}.json" for k, name in enumerate(extras)}
    commands = {name: command(args.model, args.data, outs[name], args, extra) for name, extra in extras.items()}
    results: list[tuple[str, str]] = []

    def contender(name: str):
        def call() -> None:
            run(commands[name])
            data = json.loads(outs[name].read_text())
            results.append((name, data["models"][0]["outcomes"]))
        return call

    print(f"model {args.model}, {args.trials} trials, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds (+1 warm-up)")
    started = time.perf_counter()
    times = interleaved({name: contender(name) for name in commands}, rounds=args.rounds)
    identical = len({outcomes for _, outcomes in results}) == 1
    names = list(commands)
    ratio = paired_ratio(times[names[1]], times[names[0]])  # first contender's time / second's = speed-up
    for name in names:
        print(f"{name:<24} wall-clock per campaign: " + ", ".join(f"{t:.1f}s" for t in times[name]))
    goal = " (Ray start-up included; goal >= 1.7x)" if args.compare == "ray" else ""
    print(f"speed-up of {names[1]} over {names[0]} (wall-clock){goal}: {ratio}")
    print(f"per-trial outcomes identical in every run: {identical}")
    print(f"total benchmark time {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "trials": args.trials, "compare": args.compare,
                                         "batch_size": args.batch_size, "times": times,
                                         "speedup": {"median": ratio.median, "low": ratio.low, "high": ratio.high},
                                         "identical": identical}, indent=1) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
