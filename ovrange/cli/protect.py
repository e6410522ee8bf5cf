"""``ovrange protect`` and ``ovrange evaluate``: paths in, files and a summary out."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ovrange.cli import app
from ovrange.cli.options import DataPath, Device, Force, Quiet, progress_bar
from ovrange.errors import ConfigError, DataError


@app.command()
def protect(
    model: Annotated[Optional[Path], typer.Argument(help="OpenVINO IR .xml (or .onnx). Default: model.model of the "
                                                         "config.", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="POT-style config, JSON (comments "
                                                    "allowed) or YAML.")] = None,
    data: DataPath = None,
    subset_size: Annotated[Optional[int], typer.Option("--subset-size", help="Calibration samples "
                                                        "(stat_subset_size). Default: 300.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Calibration batch "
                                                       "(stat_batch_size). Default: 1.")] = None,
    shuffle: Annotated[Optional[bool], typer.Option("--shuffle/--no-shuffle", help="Random subset "
                                                     "(shuffle_data). Default: no-shuffle.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random subset. Default: 0.")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", "-a", help="Protection algorithm: "
                                                      "RangeSupervision, Ranger, GradientSuppression, BoundedWeights. "
                                                      "Default: the config's, else RangeSupervision.")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Algorithm parameter KEY=VALUE "
                                                       "(YAML value), e.g. -p bound=percentile -p percentile=99.9; "
                                                       "repeatable.")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Results go to "
                                             "<output-dir>/<model_name>_<algorithm>/ (a POT chain: "
                                             "<model_name>_<step>_..._<algorithm>/).")] = Path("results"),
    device: Device = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Insert range-supervision Clamps after the activations of MODEL, with bounds from calibration data.

    Writes <output-dir>/<model_name>_<algorithm>/<model_name>.xml/.bin (f32 weights) and bounds.json. A POT chain
    (DefaultQuantization / WeightCompression, then the protection) quantizes with nncf first.
    """
    from ovrange import config as config_mod
    from ovrange import data as data_mod
    from ovrange.modelio import prepare_output_dir, read_model
    from ovrange.protect import chain_name, run_chain, save_protected

    cfg = config_mod.load_config(config) if config else config_mod.ProtectConfig()
    if algorithm and algorithm != cfg.algorithm.name:  # replaces the protection; a chain keeps its quantization
        cfg = replace(cfg, algorithms=(*cfg.quantization, config_mod.default_algorithm(algorithm)))
    cfg = cfg.with_overrides(stat_subset_size=subset_size, stat_batch_size=batch_size, shuffle_data=shuffle, seed=seed,
                             **config_mod.parse_assignments(param or []))
    model_path = model or cfg.model
    if model_path is None:
        raise ConfigError("no model given: pass MODEL.xml or set model.model in the config")
    data_path = data or cfg.data_source
    if data_path is None:
        raise DataError("no calibration data given: pass --data or set engine.data_source in the config")
    name = cfg.model_name or model_path.stem
    out_dir = prepare_output_dir(output_dir / f"{name}_{chain_name(cfg.algorithms)}", force)
    ov_model = read_model(model_path, None if model else cfg.weights)
    dataset = data_mod.load(data_path, ov_model, cfg.layout).dataset
    with progress_bar("calibrating", enabled=not quiet) as progress:
        protected = run_chain(ov_model, dataset, cfg.algorithms, device=device or cfg.device, progress=progress)
    save_protected(protected, out_dir, name, force=force)
    _print_summary(protected, out_dir, name)


def _print_summary(protected, out_dir: Path, name: str) -> None:
    from ovrange.protect import protection_info

    info = protection_info(protected)
    kinds = Counter(node.get("type", "?") for node in info.nodes.values())
    typer.echo(f"{info.algorithm}: {len(info.nodes)} node(s) protected "
               f"({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}); "
               f"statistics from {info.samples} samples in {info.precision}")
    width = max(len(n) for n in info.nodes)
    for node_name, node in info.nodes.items():
        typer.echo(f"  {node_name:<{width}}  {node.get('type', ''):<9} {_describe(node)}")
    typer.echo(f"protected model: {out_dir / (name + '.xml')}")
    typer.echo(f"bounds:          {out_dir / 'bounds.json'}")


def _describe(node: dict) -> str:
    """One short text for what was applied to a node (bounds, thresholds, ...)."""
    if "high" in node:
        low, high = node["low"], node["high"]
        if isinstance(high, list):
            return f"[{min(low):.4g}, {max(high):.4g}] per channel ({len(high)}), {node.get('method', '')}"
        return f"[{low:.6g}, {high:.6g}] {node.get('method', '')}".rstrip()
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in node.items()
                     if k not in ("node", "type") and not isinstance(v, (list, dict)))


@app.command()
def evaluate(
    models: Annotated[list[Path], typer.Argument(help="One or more models (e.g. original and protected).")],
    data: Annotated[Path, typer.Option("--data", "-d", help=".npz with x (inputs) and y (labels).")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inference batch.")] = 64,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use only the first N samples.")] = None,
    device: Device = None,
    quiet: Quiet = False,
) -> None:
    """Top-1 accuracy of each model on labelled data (f32), and how often they agree with the first."""
    from ovrange import data as data_mod
    from ovrange.evaluate import accuracy, predict, top1
    from ovrange.modelio import read_model

    first_predictions = None
    for path in models:
        model = read_model(path)
        labelled = data_mod.load(data, model)
        if labelled.labels is None:
            raise DataError(f"{data} has no labels (an array named y or labels)")
        with progress_bar(f"evaluating {path.name}", enabled=not quiet) as progress:
            logits = predict(model, labelled.dataset, batch_size=batch_size, device=device or "CPU", limit=limit,
                             progress=progress)
        predictions = top1(logits)
        result = accuracy(predictions, labelled.labels)
        line = f"{path}: top-1 {result.top1:.2%} ({result.correct}/{result.total}, f32)"
        if first_predictions is None:
            first_predictions = predictions
        else:
            agree = float((predictions == first_predictions).mean())
            line += f", agrees with {models[0].name} on {agree:.2%}"
        typer.echo(line)
