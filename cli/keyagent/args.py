"""The `keyagent` command line, parsed by argparse: every command, its options and its help.

Loaded only when the fast path of `keyagent.cli` does not apply (see `cli.fast_args`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple, NoReturn

from keyagent import __version__
from keyagent.cli import EPILOG, EXIT_USAGE


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


def _add_init(p: Parser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--type",
        choices=("x25519", "mlkem768x25519"),
        default="x25519",
        help="x25519 (default) or mlkem768x25519 (post-quantum hybrid)",
    )
    p.add_argument("--label", metavar="L", help="a free-text description")


def _add_nothing(p: Parser) -> None:
    return None


def _add_status(p: Parser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output (see keyagent(1))")


def _add_unlock(p: Parser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--idle-timeout",
        metavar="D",
        type=_duration,
        help="lock after D without use (e.g. 90, 10m, 2h; agent default 10m)",
    )
    p.add_argument(
        "--max-timeout",
        metavar="D",
        type=_duration,
        help="lock after D at the latest (agent default 2h)",
    )
    _add_askpass(p)


def _add_askpass(p: Parser) -> None:
    p.add_argument(
        "--askpass",
        action="store_true",
        help="let the agent ask for a locked key's passphrase with its askpass program"
        " (the default without a terminal or --passphrase-fd)",
    )
    p.add_argument(
        "--no-askpass",
        action="store_true",
        help="never ask through the agent's askpass program",
    )


def _add_lock(p: Parser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--all", action="store_true", help="lock every key")


def _add_recipient(p: Parser) -> None:
    p.add_argument("names", metavar="NAME", nargs="+")


def _add_encrypt(p: Parser) -> None:
    p.add_argument(
        "-r",
        "--recipient",
        metavar="RECIPIENT",
        action="append",
        help="encrypt to an age1... recipient (repeatable)",
    )
    p.add_argument(
        "-R",
        "--recipients-file",
        metavar="PATH",
        action="append",
        help="encrypt to the recipients listed in PATH (repeatable)",
    )
    p.add_argument(
        "-k",
        "--key",
        metavar="NAME",
        action="append",
        help="encrypt to a key of the agent (repeatable; a locked key works)",
    )
    p.add_argument(
        "-p",
        "--passphrase",
        action="store_true",
        help="encrypt with a passphrase instead of recipients",
    )
    p.add_argument("-a", "--armor", action="store_true", help="write PEM-armored text")
    p.add_argument("-o", "--output", metavar="OUT", help="write OUT (complete or not at all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("input", metavar="IN", nargs="?", help="input file (default: stdin)")


def _add_decrypt(p: Parser) -> None:
    p.add_argument("-k", "--key", metavar="NAME", help="use only this key")
    _add_askpass(p)
    p.add_argument("-o", "--output", metavar="OUT", help="write OUT (complete or not at all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("input", metavar="IN", nargs="?", help="input file (default: stdin)")


def _add_import(p: Parser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        help="identity file, as age-keygen writes (default: stdin)",
    )
    p.add_argument("--label", metavar="L", help="a free-text description")


def _add_export(p: Parser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("-a", "--armor", action="store_true", help="write PEM-armored text")
    p.add_argument("-o", "--output", metavar="OUT", help="write OUT (0600)")


def _add_name(p: Parser) -> None:
    p.add_argument("name", metavar="NAME")


def _add_delete(p: Parser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _add_askpass(p)


def _add_install(p: Parser) -> None:
    p.add_argument("--bindir", metavar="DIR", help="where keyagentd is (default: found)")


class _Spec(NamedTuple):
    help: str
    func: str
    passphrase: bool
    add: Callable[[Parser], None]


#: Every command: its help line, its function ("module:name") and its arguments.
COMMANDS: Final[dict[str, _Spec]] = {
    "init": _Spec(
        "create a new key, sealed under a passphrase", "commands:cmd_init", True, _add_init
    ),
    "list": _Spec(
        "list keys and whether they are unlocked", "commands:cmd_list", False, _add_nothing
    ),
    "status": _Spec("show the agent and every key", "commands:cmd_status", False, _add_status),
    "unlock": _Spec("unlock a key for a while", "commands:cmd_unlock", True, _add_unlock),
    "lock": _Spec("lock one key, or all keys (the default)", "commands:cmd_lock", False, _add_lock),
    "recipient": _Spec(
        "print the recipient (public key) of keys", "commands:cmd_recipient", False, _add_recipient
    ),
    "encrypt": _Spec("encrypt a file or stdin", "crypt:cmd_encrypt", True, _add_encrypt),
    "decrypt": _Spec("decrypt a file or stdin", "crypt:cmd_decrypt", True, _add_decrypt),
    "import": _Spec(
        "seal an existing age identity as a new key", "commands:cmd_import", True, _add_import
    ),
    "export": _Spec(
        "export a key as an age file encrypted to its passphrase",
        "commands:cmd_export",
        True,
        _add_export,
    ),
    "passwd": _Spec("change a key's passphrase", "commands:cmd_passwd", True, _add_name),
    "delete": _Spec("delete a key for good", "commands:cmd_delete", True, _add_delete),
    "install": _Spec(
        "install the per-user D-Bus activation file and systemd unit",
        "commands:cmd_install",
        False,
        _add_install,
    ),
    "uninstall": _Spec(
        "remove the files 'keyagent install' wrote", "commands:cmd_uninstall", False, _add_nothing
    ),
}


def command_in(argv: Sequence[str]) -> str | None:
    """The command word of a command line, when it is plainly one: only ``--debug`` before it
    (anything else, like ``-h``, gets the whole parser)."""
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2 and "--debug".startswith(arg):
            continue
        return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> Parser:
    """The parser; with ``only`` (a command), only that command's subparser is built.

    Building all fourteen costs milliseconds at every start; a command line that names a
    command parses the same with just its own (usage errors and --help included).
    """
    common = Parser(add_help=False, formatter_class=Formatter)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show a traceback on a crash",
    )
    pfd = Parser(add_help=False, formatter_class=Formatter)
    pfd.add_argument(
        "--passphrase-fd",
        metavar="N",
        type=_fd,
        help="read passphrases from file descriptor N (one per line) instead of the terminal",
    )
    parser = Parser(
        prog="keyagent",
        description="Encrypt and decrypt age files with keys held unlocked by keyagentd.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"keyagent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on a crash")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, spec in COMMANDS.items():
        if only is not None and name != only:
            continue
        parents = [common, pfd] if spec.passphrase else [common]
        p: Parser = sub.add_parser(
            name,
            help=spec.help,
            description=spec.help,
            parents=parents,
            epilog=EPILOG,
            formatter_class=Formatter,
        )
        p.set_defaults(func=spec.func)
        spec.add(p)
    return parser
