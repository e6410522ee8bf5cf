"""Campaign reports: JSON (for CI), a Markdown summary, and PNG plots. Rendering only, no computation.

matplotlib is imported lazily with the Agg backend, so reports work headless and the library does not need it
unless plots are asked for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ovrange.errors import OutputError
from ovrange.faults.metrics import Rate
from ovrange.faults.result import CampaignResult
from ovrange.outputs import Inputs, make_temp_dir, write_dir_atomically, write_file_atomically

RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.md"
FAULTS_FILE = "faults.jsonl"  # the fault list a campaign replays when resumed
CHECKPOINT_FILE = "checkpoint.jsonl"  # outcomes of the finished shards
PLOTS = ("sdc_by_bit.png", "sdc_by_layer.png")


def write_json(result: CampaignResult, path: str | Path, *, force: bool = False, inputs: Inputs = ()) -> Path:
    """The result as JSON at ``path`` (the overwrite rule of :func:`ovrange.outputs.write_file_atomically`)."""
    return write_file_atomically(path, result.to_json() + "\n", force=force, inputs=inputs)


def write_report(result: CampaignResult, directory: str | Path, plots: bool = True) -> list[Path]:
    """result.json, summary.md and (with ``plots``) the PNGs, into ``directory`` (which may hold a checkpoint).
    The files are replaced one by one: :func:`publish_report` makes the whole folder appear in one step."""
    directory = Path(directory)
    written = [write_json(result, directory / RESULT_FILE, force=True)]
    images = plot(result, directory) if plots and (result.trial_site >= 0).any() else []
    written.append(write_file_atomically(directory / SUMMARY_FILE, markdown(result, [p.name for p in images]),
                                         force=True))
    from ovrange.evidence.vulnerability import write_vulnerability  # vulnerability.json/.svg: see evidence/
    return written + images + write_vulnerability(result, directory)


def report_workdir(directory: str | Path, *, resume: bool = False) -> Path:
    """Where a campaign keeps its checkpoint: ``directory`` itself when it is new, empty or resumed; else (an old
    report replaced with --force) a temporary sibling, so the old report stays complete until
    :func:`publish_report` swaps the new one in."""
    directory = Path(directory)
    if resume or not directory.is_dir() or not any(directory.iterdir()):
        return directory
    return make_temp_dir(directory)


def publish_report(result: CampaignResult, workdir: str | Path, directory: str | Path, plots: bool = True,
                   inputs: Inputs = ()) -> Path:
    """The complete report folder (the fault list and checkpoint of ``workdir``, result.json, summary.md, plots)
    is written in a temporary sibling and takes the place of ``directory`` in one step: a reader sees the old
    report or the new one, never a half-written one; a full disk leaves the old one (or none)."""
    workdir, directory = Path(workdir), Path(directory)

    def write(tmp: Path) -> None:
        for name in (FAULTS_FILE, CHECKPOINT_FILE):
            if (workdir / name).is_file():
                _link_or_copy(workdir / name, tmp / name)
        write_report(result, tmp, plots=plots)

    write_dir_atomically(directory, write, force=True, inputs=inputs)
    discard_workdir(workdir, directory)
    return directory


@contextlib.contextmanager
def report_session(directory: str | Path | None, *, resume: bool = False) -> Iterator[Path | None]:
    """The working folder of a campaign that reports to ``directory`` (see :func:`report_workdir`). If the body
    fails, a temporary working folder is removed (the old report stays as it was) and a report folder this run
    created is removed too, except after an interruption once it holds the checkpoint ``--resume`` continues."""
    if directory is None:
        yield None
        return
    directory = Path(directory)
    new = not resume and not directory.exists()
    if new:  # made here, not by the campaign: only a folder this run made is removed on failure
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir()
        except FileExistsError:
            raise OutputError(f"report folder already exists: {directory} (made by another run meanwhile)") from None
        except OSError as exc:
            raise OutputError(f"cannot create the report folder {directory}: {exc.strerror}") from exc
    workdir = report_workdir(directory, resume=resume)
    try:
        yield workdir
    except KeyboardInterrupt:
        discard_workdir(workdir, directory)
        if new and not (directory / CHECKPOINT_FILE).exists():  # stopped before any work: nothing to resume
            shutil.rmtree(directory, ignore_errors=True)
        raise
    except BaseException:
        discard_workdir(workdir, directory)
        if new:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def discard_workdir(workdir: str | Path, directory: str | Path) -> None:
    """Remove a temporary campaign folder of :func:`report_workdir` (never the report folder itself)."""
    if Path(workdir) != Path(directory):
        shutil.rmtree(workdir, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)


def remove_report(directory: str | Path) -> None:
    """Delete the report files of ``directory`` (not its fault list or checkpoint): a new or resumed campaign
    starts there, and an old result beside it would read as the complete result of the new one."""
    for name in (RESULT_FILE, SUMMARY_FILE, *PLOTS, "vulnerability.json", "vulnerability.svg"):
        try:
            (Path(directory) / name).unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot remove the old report file {Path(directory) / name}: {exc.strerror}") from exc


def _ranges(bits: tuple[int, ...]) -> str:
    """``(0, 1, 2, 30)`` -> ``0-2, 30``."""
    parts, start = [], None
    for i, bit in enumerate(bits):
        if start is None:
            start = bit
        if i + 1 == len(bits) or bits[i + 1] != bit + 1:
            parts.append(str(start) if start == bit else f"{start}-{bit}")
            start = None
    return ", ".join(parts)


def _pct(rate: Rate) -> str:
    if not rate.n:
        return "–"
    low, high = rate.interval
    return f"{rate.rate:.2%} [{low:.2%}, {high:.2%}]"


def _times(red: dict[str, float | None], what: str) -> str:
    ratio = f"∞ (no {what} left)" if red["ratio"] is None else f"{red['ratio']:.1f}×"
    return ratio + ("" if red["at_least"] is None else f", at least {red['at_least']:.1f}× from the 95% intervals")


def reduction_text(result: CampaignResult, other: int = 1) -> str:
    """The SDC reduction from the first model to model ``other``, beside the SDC+DUE reduction and the DUEs the
    second model turned silent (a DUE is a detectable NaN/Inf; the same fault giving an SDC is a silent error)."""
    comparison = result.comparison(0, other)
    first, second = comparison["models"]
    due = sum(comparison["paired"]["due"].values())  # the first model's DUEs on the trials both ran
    return (f"SDC reduction from {first} to {second}: {_times(comparison['sdc_reduction'], 'SDC')}; "
            f"SDC+DUE reduction: {_times(comparison['sdc_due_reduction'], 'SDC or DUE')}. "
            f"SDC including DUEs turned silent: {comparison['due_turned_silent']} of {due} DUEs became SDCs "
            "(DUE → SDC).")


def _completeness(result: CampaignResult) -> str:
    stop = result.meta.get("stopping")
    if stop:  # statistical stopping: the trials not run were never needed
        return (f"- Stopped after {stop['trials']} of {result.trials} trials ({len(stop['rounds'])} rounds): "
                f"{stop['reason']} ({stop['method']})")
    return f"- Complete: {'yes' if result.complete else 'no (partial: interrupted campaign)'}"


def markdown(result: CampaignResult, images: list[str] | tuple[str, ...] = ()) -> str:
    spec = result.spec
    lines = [f"# Fault-injection campaign: {spec.target}, {result.trials} trials", ""]
    bits = _ranges(spec.bits)
    mode = f"bit-error rate {spec.ber:g} per bit" if spec.ber else "one single-bit flip per trial"
    if spec.error_rate or spec.fault_model != "bit":  # the fault model seam (ovrange.faults.formats.FaultModel)
        mode = (f"error rate {spec.error_rate:g} per value, {spec.fault_model} each" if spec.error_rate
                else f"one {spec.fault_model} fault per trial")
    lines += [f"- Fault model: {mode} in {spec.number_format} values; bits: {bits}",
              f"- Sites: {len(result.sites)} {spec.target} sites, sampled by {spec.weighting}",
              f"- SDC criterion: {spec.sdc}; DUE: NaN/Inf in the output",
              f"- Seed {spec.seed}; {len(set(result.trial_input.tolist()))} distinct inputs from {result.data or 'data'}",
              _completeness(result), "",
              "| model | trials | masked | SDC (95% CI) | DUE (95% CI) | trials/s |", "|---|---|---|---|---|---|"]
    for i, run in enumerate(result.models):
        r = result.rates(i)
        speed = f"{int(run.done.sum()) / run.seconds:.0f}" if run.seconds else "–"
        lines.append(f"| {run.name} | {int(run.done.sum())} | {r['masked'].rate:.2%} | {_pct(r['sdc'])} | "
                     f"{_pct(r['due'])} | {speed} |")
    for other in range(1, len(result.models)):
        table = result.comparison(0, other)["paired"]
        lines += ["", reduction_text(result, other), "", f"Trial by trial ({result.models[0].name} → rows, "
                  f"{result.models[other].name} → columns):", "", "| | masked | SDC | DUE |", "|---|---|---|---|"]
        lines += [f"| {a} | {row['masked']} | {row['sdc']} | {row['due']} |" for a, row in table.items()]
    if (result.trial_site >= 0).any():
        names = [run.name for run in result.models]
        lines += ["", "## SDC rate per bit position", "", "| bit | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        per_bit = [result.per_bit(i) for i in range(len(names))]
        for bit in per_bit[0]:
            lines.append(f"| {bit} | " + " | ".join(f"{_pct(p[bit])} ({p[bit].k}/{p[bit].n})" for p in per_bit) + " |")
        lines += ["", "## SDC rate per layer", "", "| site | op, stored as | elements | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 3) + "|"]
        per_layer = [result.per_layer(i) for i in range(len(names))]
        for site in result.sites:
            if site.name in per_layer[0]:
                cells = " | ".join(f"{_pct(p[site.name])} ({p[site.name].k}/{p[site.name].n})" for p in per_layer)
                lines.append(f"| {site.name} | {site.op}, {site.format} | {site.size} | {cells} |")
    lines += [""] + [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def short_names(names: list[str]) -> list[str]:
    """The shortest path suffixes that tell the models apart (``fashion_lenet_Ranger/fashion_lenet.xml``)."""
    for depth in range(1, 1 + max(len(Path(n).parts) for n in names)):
        short = ["/".join(Path(n).parts[-depth:]) for n in names]
        if len(set(short)) == len(short):
            return short
    return names


def plot(result: CampaignResult, directory: str | Path) -> list[Path]:
    """Bar charts of the SDC rate (with 95% intervals) per bit position and per site, one bar per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OutputError("plots need matplotlib: pip install 'ovrange[plots]' (or pass --no-plots)") from exc
    directory = Path(directory)
    labels = short_names([run.name for run in result.models])
    paths = []
    for name, table_of, per_layer in ((PLOTS[0], result.per_bit, False), (PLOTS[1], result.per_layer, True)):
        tables = [table_of(i) for i in range(len(result.models))]
        keys = list(tables[0])
        width = 0.8 / len(tables)
        if per_layer:  # long site names read best on a horizontal chart
            fig, ax = plt.subplots(figsize=(9.0, 1.2 + 0.16 * len(keys) * len(tables)))
        else:
            fig, ax = plt.subplots(figsize=(min(14.0, 3.0 + 0.1 * len(keys) * len(tables)), 4.0))
        for j, (table, label) in enumerate(zip(tables, labels)):
            rates = [table[k].rate * 100 for k in keys]
            errors = [[(table[k].rate - table[k].interval[0]) * 100 for k in keys],
                      [(table[k].interval[1] - table[k].rate) * 100 for k in keys]]
            offsets = [x + (j - (len(tables) - 1) / 2) * width for x in range(len(keys))]
            if per_layer:
                ax.barh(offsets, rates, width, xerr=errors, capsize=2, label=label)
            else:
                ax.bar(offsets, rates, width, yerr=errors, capsize=2, label=label)
        what = "site" if per_layer else "bit position"
        if per_layer:
            ax.set_yticks(range(len(keys)))
            ax.set_yticklabels(keys, fontsize=7)
            ax.invert_yaxis()  # graph order, top to bottom
            ax.set_xlabel("SDC rate (%)")
        else:
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([str(k) for k in keys], fontsize=7)
            ax.set_xlabel(what)
            ax.set_ylabel("SDC rate (%)")
        ax.set_title(f"SDC rate per {what}: {result.spec.target} faults, {result.trials} trials (95% Wilson)",
                     fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = directory / name
        try:
            fig.savefig(path, dpi=110)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
        finally:
            plt.close(fig)
        paths.append(path)
    return paths
