"""Write docs/cli.md from the Typer app: every command, argument and option as ``--help`` shows them, the options
shared across commands, and the old spellings still accepted.

    python -m scripts.gen_cli_docs           # rewrite docs/cli.md
    python -m scripts.gen_cli_docs --check   # exit 1 when docs/cli.md differs from the app
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"

HEADER = """\
# Command line

Every `ovrange` command and option, generated from the command-line app by `python -m scripts.gen_cli_docs`
(a test fails when this page and the app disagree). `ovrange COMMAND --help` prints the same text.

An option means the same in every command that has it, and follows OpenVINO's `benchmark_app`, NNCF and
`optimum-cli` where they have one: `--device`, `-t/--time` (seconds), `--shape` (benchmark_app syntax),
`--num-samples` (optimum-cli), `--batch-size`. `-d`, the device in `benchmark_app`, means nothing else here: its
old meaning `--data` is only a deprecated spelling (table at the end). `-v/--verbose` adds the traceback of an
error. Exit codes, environment variables and the config files: [config.md](config.md).
"""


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _commands():
    import typer.main
    from typer import _click

    from ovrange.cli import app

    group = typer.main.get_command(app)
    root = _click.Context(group, info_name="ovrange")
    yield "", group, root
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        yield name, command, _click.Context(command, parent=root, info_name=name)


def _section(name: str, command, ctx) -> list[str]:
    title = f"ovrange {name}".strip()
    usage = " ".join((title, *command.collect_usage_pieces(ctx)))
    lines = [f"## {title}", "", "```", usage, "```", "", command.help.strip(), ""]
    rows = [param.get_help_record(ctx) for param in command.get_params(ctx)]
    rows = [row for row in rows if row is not None]
    lines += ["| argument / option | meaning |", "|---|---|"]
    lines += [f"| `{_escape(opts)}` | {_escape(text)} |" for opts, text in rows]
    return [*lines, ""]


def _shared(commands) -> list[str]:
    from ovrange.cli.options import MEANINGS

    used: dict[str, list[str]] = {}
    for name, command, _ in commands:
        for param in command.params:
            for opt in getattr(param, "opts", []):
                used.setdefault(opt, []).append(name)
    lines = ["## Options shared by several commands", "", "| option | meaning | commands |", "|---|---|---|"]
    for option, meaning in MEANINGS.items():
        lines.append(f"| `{option}` | {_escape(meaning)} | {', '.join(used.get(option, []))} |")
    return [*lines, ""]


def _aliases() -> list[str]:
    from ovrange.cli.aliases import ALIASES

    lines = ["## Old spellings", "",
             "Still accepted for one release, hidden from `--help`; each use prints a `warning:` line on stderr.",
             "", "| command | old | use |", "|---|---|---|"]
    for command, aliases in ALIASES.items():
        lines += [f"| {command} | `{old}` | `{new}` |" for old, new in aliases.items()]
    return [*lines, ""]


def render() -> str:
    commands = list(_commands())
    lines = [HEADER]
    for name, command, ctx in commands:
        lines += _section(name, command, ctx)
    lines += _shared(commands)
    lines += _aliases()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = not DOC.is_file() or DOC.read_text() != text
        if stale:
            print(f"{DOC.relative_to(ROOT)} is stale: run python -m scripts.gen_cli_docs", file=sys.stderr)
        return int(stale)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
