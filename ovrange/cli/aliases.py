"""Old option spellings, accepted as hidden aliases for one more release.

A command built with :class:`AliasedCommand` rewrites an old spelling to its current name before click parses the
arguments, and says so on stderr. The aliases never show in ``--help``; docs/cli.md lists them (generated from
:data:`ALIASES` by scripts/gen_cli_docs.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import typer
from typer.core import TyperCommand

# command -> {old spelling: current option}
ALIASES: dict[str, dict[str, str]] = {
    "protect": {"-d": "--data", "--subset-size": "--num-samples"},
    "evaluate": {"-d": "--data", "--limit": "--num-samples"},
    "check": {"-d": "--data", "--limit": "--num-samples"},
    "inject": {"-d": "--data", "-t": "--target", "--inputs": "--num-samples", "--format": "--number-format",
               "--output": "--output-name"},
}


def translate(command: str, args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` with the old spellings of ``command`` replaced, and the old spellings that were used.

    Handles ``--old VALUE``, ``--old=VALUE``, ``-o VALUE`` and ``-oVALUE`` (every aliased short flag takes a
    value); nothing after ``--`` is touched.
    """
    aliases = ALIASES.get(command, {})
    out: list[str] = []
    used: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        old, new = _rename(arg, aliases)
        if old is not None:
            used.append(old)
        out.append(new)
    return out, used


def _rename(arg: str, aliases: dict[str, str]) -> tuple[str | None, str]:
    if arg in aliases:
        return arg, aliases[arg]
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        return (name, f"{aliases[name]}={value}") if eq and name in aliases else (None, arg)
    short = arg[:2]
    if arg.startswith("-") and len(arg) > 2 and short in aliases:
        return short, f"{aliases[short]}={arg[2:]}"
    return None, arg


class AliasedCommand(TyperCommand):
    """A Typer command that accepts the old spellings of :data:`ALIASES` (hidden, with a warning on stderr)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args, used = translate(self.name or "", args)
        for old in dict.fromkeys(used):
            typer.echo(f"warning: {old} is deprecated; use {ALIASES[self.name or ''][old]}", err=True)
        return super().parse_args(ctx, args)
