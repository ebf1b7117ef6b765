"""argparse's parser for the `keyagent` command line, built from `keyagent.grammar`'s table.

Loaded only when `grammar.parse_fast` leaves a line to argparse: help, usage errors and the
spellings the fast reader does not take.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from keyagent import __version__
from keyagent.grammar import (
    APPEND,
    CHOICE,
    COMMANDS,
    DEBUG,
    DURATION,
    EPILOG,
    EXIT_USAGE,
    FD,
    FLAG,
    Arg,
    Opt,
)


class Parser(argparse.ArgumentParser):
    """argparse with the house error format."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"keyagent: error: {message}\n")
        sys.stderr.write(f"keyagent: hint: see '{self.prog} --help'\n")
        sys.exit(EXIT_USAGE)


def _duration(text: str) -> int:
    from keyagent.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fd(text: str) -> int:
    try:
        fd = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a file descriptor number: {text!r}") from None
    if fd < 0:
        raise argparse.ArgumentTypeError(f"not a file descriptor number: {text!r}")
    return fd


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, sized without `shutil` (argparse builds one per add_argument)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _columns() - 2  # what argparse does, through shutil.get_terminal_size
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _add(p: Parser, param: Opt | Arg) -> None:
    if isinstance(param, Arg):
        kw: dict[str, Any] = {"metavar": param.metavar}
        if param.nargs:
            kw["nargs"] = param.nargs
        if param.help:
            kw["help"] = param.help
        p.add_argument(param.dest, **kw)
        return
    kw = {"dest": param.dest, "help": param.help}
    if param.kind == FLAG:
        kw["action"] = "store_true"
    else:
        kw["metavar"] = param.metavar
        kw["default"] = param.default
    if param.kind == APPEND:
        kw["action"] = "append"
    elif param.kind == FD:
        kw["type"] = _fd
    elif param.kind == DURATION:
        kw["type"] = _duration
    elif param.kind == CHOICE:
        kw.pop("metavar")
        kw["choices"] = param.choices
    p.add_argument(*param.flags, **kw)


def build_parser(only: str | None = None) -> Parser:
    """The parser; with ``only`` (a command), only that command's subparser is built.

    Building all fourteen costs milliseconds at every start; a command line that names a
    command parses the same with just its own (usage errors and --help included).
    """
    parser = Parser(
        prog="keyagent",
        description="Encrypt and decrypt age files with keys held unlocked by keyagentd.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"keyagent {__version__}")
    parser.add_argument(*DEBUG.flags, action="store_true", help=DEBUG.help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, command in COMMANDS.items():
        if only is not None and name != only:
            continue
        p: Parser = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=EPILOG,
            formatter_class=Formatter,
        )
        # After the command word too; SUPPRESS keeps a --debug given before it.
        p.add_argument(
            *DEBUG.flags, action="store_true", default=argparse.SUPPRESS, help=DEBUG.help
        )
        p.set_defaults(func=command.run)
        params: list[Opt | Arg] = [*command.options, *command.args]
        for param in params:
            _add(p, param)
    return parser
