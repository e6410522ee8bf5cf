"""The command line's vocabulary: one meaning per option name and short flag across commands, old spellings as
hidden aliases, docs/cli.md generated from the app, ``--json`` and ``-v/--verbose`` on every command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
import typer.main
from typer.core import TyperOption

from ovrange.cli import app
from ovrange.cli.aliases import ALIASES, translate
from scripts.gen_cli_docs import DOC, render

# benchmark_app's short flags that name an option we have too: ours must mean the same.
BENCHMARK_APP = {"-d": "--device", "-t": "--time", "-b": "--batch-size"}


def commands(typer_app: typer.Typer = app) -> dict:
    return dict(typer.main.get_command(typer_app).commands)


def meaning(help_text: str | None) -> str:
    """The declared meaning of an option: the first sentence of its help ("e.g." and "i.e." do not end one)."""
    text = " ".join((help_text or "").split())
    match = re.match(r"(.*?(?<!e\.g)(?<!i\.e)\.)(?:\s|$)", text)
    return match[1] if match else text


def visible_options(command) -> list[TyperOption]:
    return [p for p in command.params if isinstance(p, TyperOption) and not p.hidden]


def clashes(typer_app: typer.Typer = app) -> list[str]:
    """Every option name with two meanings across commands, and every short flag standing for two options."""
    by_long: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    by_short: dict[str, dict[tuple[str, ...], set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, command in commands(typer_app).items():
        for param in visible_options(command):
            names = [*param.opts, *param.secondary_opts]
            longs = tuple(n for n in names if n.startswith("--"))
            for long in longs:
                by_long[long][meaning(param.help)].add(name)
            for short in (n for n in names if not n.startswith("--")):
                by_short[short][longs].add(name)
    found = [f"{long}: {dict(meanings)}" for long, meanings in by_long.items() if len(meanings) > 1]
    found += [f"{short}: {dict(longs)}" for short, longs in by_short.items() if len(longs) > 1]
    for short, longs in by_short.items():
        ours = sorted({long for group in longs for long in group} - {BENCHMARK_APP.get(short)})
        if short in BENCHMARK_APP and ours:
            found.append(f"{short} is {', '.join(ours)} here but {BENCHMARK_APP[short]} in benchmark_app")
    return found


def test_every_option_name_and_short_flag_means_one_thing():
    assert clashes() == []


def test_the_clash_check_catches_a_short_flag_and_a_name_with_two_meanings():
    bad = typer.Typer()

    @bad.command()
    def inject(target: Annotated[Optional[str], typer.Option("--target", "-t", help="activations or weights.")]
               = None, seed: Annotated[int, typer.Option("--seed", help="Seed of the fault list.")] = 0) -> None:
        """inject"""

    @bad.command()
    def benchmark(seconds: Annotated[float, typer.Option("--time", "-t", help="Seconds of timing.")] = 1.0,
                  seed: Annotated[int, typer.Option("--seed", help="Seed of the random subset.")] = 0) -> None:
        """benchmark"""

    found = clashes(bad)
    assert any(f.startswith("-t: ") for f in found)
    assert any(f.startswith("--seed: ") for f in found)
    assert any(f.startswith("-t is --target here") for f in found)


def test_meaning_is_the_first_sentence():
    assert meaning("Random seed. Of the fault list.") == "Random seed."
    assert meaning("SDC criterion: e.g. top1. More.") == "SDC criterion: e.g. top1."
    assert meaning("No dot") == "No dot"


@pytest.mark.parametrize("command,old,new", [(c, o, n) for c, table in ALIASES.items() for o, n in table.items()])
def test_old_spelling_is_a_hidden_alias(command, old, new, capsys):
    cmd = commands()[command]
    visible = {n for p in visible_options(cmd) for n in (*p.opts, *p.secondary_opts)}
    assert new in visible and old not in visible
    args = []  # the required arguments and options, then the option under test
    for param in cmd.params:
        if param.required and not isinstance(param, TyperOption):
            args.append("m.xml")
        elif param.required and new not in param.opts:
            args += [param.opts[0], "x.npz"]
    name = next(p.name for p in cmd.params if new in getattr(p, "opts", ()))
    current = cmd.make_context(command, [*args, new, "7"]).params
    assert "warning" not in capsys.readouterr().err
    aliased = cmd.make_context(command, [*args, old, "7"]).params
    assert aliased == current and str(aliased[name]) == "7"
    assert f"warning: {old} is deprecated; use {new}" in capsys.readouterr().err


def test_aliases_in_every_form_and_never_after_double_dash():
    args, used = translate("inject", ["--format=int4", "-tweights", "-d", "x.npz", "--trials", "5", "--", "-t"])
    assert args == ["--number-format=int4", "--target=weights", "--data", "x.npz", "--trials", "5", "--", "-t"]
    assert used == ["--format", "-t", "-d"]
    assert translate("benchmark", ["-t", "3"]) == (["-t", "3"], [])


def test_every_command_has_json_and_verbose():
    for name, command in commands().items():
        options = {n for p in visible_options(command) for n in p.opts}
        assert {"--json", "-v", "--verbose"} <= options, name


def test_help_shows_defaults_only_as_defaults():
    """A default written into the help text drifts from the real one: defaults go through show_default."""
    for name, command in commands().items():
        for param in visible_options(command):
            assert "Default" not in (param.help or ""), f"{name} {param.opts[0]}"


def test_cli_docs_are_generated_from_the_app():
    assert DOC.read_text() == render(), "docs/cli.md is stale: run python -m scripts.gen_cli_docs"


def test_help_keeps_brackets_and_shows_real_defaults():
    done = subprocess.run([sys.executable, "-m", "ovrange", "inject", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "needs ovrange[ray]" in text
    from ovrange.faults.spec import CampaignSpec

    assert f"[default: ({CampaignSpec.inputs}, or the config's)]" in text.split("--num-samples")[1].split("--")[0]


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_json_of_protect_evaluate_and_devices(bundled, tmp_path):
    lenet = bundled["lenet"]
    done = run("protect", lenet["xml"], "--data", lenet["calib_npz"], "--num-samples", "20", "-o", tmp_path,
               "--json", tmp_path / "protect.json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "protect.json").read_text())
    bounds = json.loads(Path(result["bounds"]).read_text())
    assert result["samples"] == 20 and result["algorithm"] == "RangeSupervision"
    assert result["protected_nodes"] == len(bounds["nodes"]) == sum(result["node_types"].values()) > 0
    done = run("evaluate", lenet["xml"], result["protected_model"], "--data", lenet["test_npz"], "--num-samples",
               "50", "--json", tmp_path / "evaluate.json", "-q")
    assert done.returncode == 0, done.stderr
    models = json.loads((tmp_path / "evaluate.json").read_text())["models"]
    assert [m["samples"] for m in models] == [50, 50] and models[0]["total"] == 50
    assert f"top-1 {models[0]['top1']:.2%} ({models[0]['correct']}/50" in done.stdout
    assert f"on {models[1]['agreement']:.2%}" in done.stdout
    done = run("devices", "--json", tmp_path / "devices.json")
    assert done.returncode == 0, done.stderr
    assert "CPU" in [d["name"] for d in json.loads((tmp_path / "devices.json").read_text())["devices"]]


def test_old_spellings_run_as_the_new_ones_with_a_warning(bundled):
    lenet = bundled["lenet"]
    new = run("evaluate", lenet["xml"], "--data", lenet["test_npz"], "--num-samples", "30", "-q")
    old = run("evaluate", lenet["xml"], "-d", lenet["test_npz"], "--limit", "30", "-q")
    assert new.returncode == old.returncode == 0, old.stderr
    assert old.stdout == new.stdout and "(30/30" not in new.stdout and "/30, f32)" in new.stdout
    assert old.stderr.splitlines() == ["warning: -d is deprecated; use --data",
                                       "warning: --limit is deprecated; use --num-samples"]


def test_verbose_adds_the_traceback_to_the_one_error_line(tmp_path):
    quiet = run("evaluate", tmp_path / "missing.xml", "--data", tmp_path / "x.npz")
    verbose = run("evaluate", tmp_path / "missing.xml", "--data", tmp_path / "x.npz", "-v")
    assert quiet.returncode == verbose.returncode == 3
    assert quiet.stderr.splitlines() == [f"error: model file not found: {tmp_path / 'missing.xml'}"]
    assert "Traceback" in verbose.stderr and verbose.stderr.splitlines()[-1] == quiet.stderr.splitlines()[0]


def test_verbose_lasts_one_run(capsys):
    from ovrange.cli import main

    def run_in_process(*args: str) -> str:
        argv, sys.argv = sys.argv, ["ovrange", *args]
        try:
            with pytest.raises(SystemExit):
                main()
        finally:
            sys.argv = argv
        return capsys.readouterr().err

    assert "Traceback" in run_in_process("evaluate", "missing.xml", "--data", "x.npz", "-v")
    assert "Traceback" not in run_in_process("evaluate", "missing.xml", "--no-such-option")
