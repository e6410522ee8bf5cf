"""The Typer app every command module registers on (``ovrange/cli/__init__.py`` imports them and runs it)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="ovrange",
    help="Protect OpenVINO models against hardware faults and measure the protection with fault injection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "pip install 'ovrange[ray]'" keeps its brackets
)


def _show_version(value: bool) -> None:
    if value:
        from ovrange.version import __version__

        typer.echo(f"ovrange {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True,
                                                          help="Print the version and exit.")] = None) -> None:
    """Protect OpenVINO models against hardware faults and measure the protection with fault injection."""
