"""The operator commands as a table (:class:`Command`): name, help, description, arguments and handler, turned into
argparse subcommands by one function, so that every command is declared the same way and the repeated options
are written once."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: the flags (or the positional's name) and the options."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Handler | None = None  # None for a group: one of ``subcommands`` runs
    description: str | None = None  # --help starts with it; default: the one-line help as a sentence
    args: tuple[Arg, ...] = ()
    one_of: tuple[Arg, ...] = ()  # options of which exactly one must be given
    subcommands: tuple[Command, ...] = ()


def add_commands(parser: argparse.ArgumentParser, dest: str, commands: Sequence[Command]) -> None:
    """``commands`` as the required subcommands of ``parser``; the one chosen is in ``dest``, its handler in ``run``."""
    choices = parser.add_subparsers(dest=dest, required=True)
    for command in commands:
        description = command.description or command.help[:1].upper() + command.help[1:] + "."
        sub = choices.add_parser(command.name, help=command.help, description=description)
        for option in command.args:
            sub.add_argument(*option.flags, **option.options)
        if command.one_of:
            group = sub.add_mutually_exclusive_group(required=True)
            for option in command.one_of:
                group.add_argument(*option.flags, **option.options)
        if command.subcommands:
            add_commands(sub, f"{command.name}_command", command.subcommands)
        else:
            sub.set_defaults(run=command.run)
