"""The `keyagent` command: argument parsing, dispatch, and turning every failure into one
`keyagent: error: …` line (plus a hint where one helps) and a documented exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NoReturn

from keyagent import __version__

if TYPE_CHECKING:
    from keyagent.context import Context

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_DENIED: Final = 4
EXIT_INTERRUPTED: Final = 130

EPILOG: Final = """\
exit status:
  0    success
  1    the operation failed (wrong passphrase, no matching key, damaged file, ...)
  2    usage error (bad option or argument; a passphrase is needed but there is
       no terminal and no --passphrase-fd)
  3    the agent is not available (no session bus, not installed, failed to start)
  4    access denied (the agent on this bus belongs to another user)
  130  interrupted

Passphrases are read from the terminal (/dev/tty, no echo) or, with
--passphrase-fd N, one per line from file descriptor N.
See keyagent(1) for details."""

REPORT_TO: Final = "the keyagent issue tracker"


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


Command = Callable[["Context"], int]


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show a traceback on a crash",
    )
    pfd = Parser(add_help=False)
    pfd.add_argument(
        "--passphrase-fd",
        metavar="N",
        type=_fd,
        help="read passphrases from file descriptor N (one per line) instead of the terminal",
    )
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="keyagent",
        description="Encrypt and decrypt age files with keys held unlocked by keyagentd.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"keyagent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on a crash")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def add(name: str, help: str, func: str, *, passphrase: bool = False) -> Parser:
        parents = [common, pfd] if passphrase else [common]
        p: Parser = sub.add_parser(
            name, help=help, description=help, parents=parents, epilog=EPILOG, formatter_class=fmt
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "init", "create a new key, sealed under a passphrase", "commands:cmd_init", passphrase=True
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--type",
        choices=("x25519", "mlkem768x25519"),
        default="x25519",
        help="x25519 (default) or mlkem768x25519 (post-quantum hybrid)",
    )
    p.add_argument("--label", metavar="L", help="a free-text description")

    add("list", "list keys and whether they are unlocked", "commands:cmd_list")

    p = add("status", "show the agent and every key", "commands:cmd_status")
    p.add_argument("--json", action="store_true", help="machine-readable output (see keyagent(1))")

    p = add("unlock", "unlock a key for a while", "commands:cmd_unlock", passphrase=True)
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

    p = add("lock", "lock one key, or all keys (the default)", "commands:cmd_lock")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--all", action="store_true", help="lock every key")

    p = add("recipient", "print the recipient (public key) of keys", "commands:cmd_recipient")
    p.add_argument("names", metavar="NAME", nargs="+")

    p = add("encrypt", "encrypt a file or stdin", "crypt:cmd_encrypt", passphrase=True)
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

    p = add("decrypt", "decrypt a file or stdin", "crypt:cmd_decrypt", passphrase=True)
    p.add_argument("-k", "--key", metavar="NAME", help="use only this key")
    p.add_argument("-o", "--output", metavar="OUT", help="write OUT (complete or not at all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("input", metavar="IN", nargs="?", help="input file (default: stdin)")

    p = add(
        "import",
        "seal an existing age identity as a new key",
        "commands:cmd_import",
        passphrase=True,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        help="identity file, as age-keygen writes (default: stdin)",
    )
    p.add_argument("--label", metavar="L", help="a free-text description")

    p = add(
        "export",
        "export a key as an age file encrypted to its passphrase",
        "commands:cmd_export",
        passphrase=True,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("-a", "--armor", action="store_true", help="write PEM-armored text")
    p.add_argument("-o", "--output", metavar="OUT", help="write OUT (0600)")

    p = add("passwd", "change a key's passphrase", "commands:cmd_passwd", passphrase=True)
    p.add_argument("name", metavar="NAME")

    p = add("delete", "delete a key for good", "commands:cmd_delete", passphrase=True)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add(
        "install",
        "install the per-user D-Bus activation file and systemd unit",
        "commands:cmd_install",
    )
    p.add_argument("--bindir", metavar="DIR", help="where keyagentd is (default: found)")
    add("uninstall", "remove the files 'keyagent install' wrote", "commands:cmd_uninstall")
    return parser


def _resolve(spec: str) -> Command:
    # Command modules load on demand: `keyagent --help` stays fast.
    import importlib

    module, _, func = spec.partition(":")
    mod = importlib.import_module(f"keyagent.{module}")
    cmd: Command = getattr(mod, func)
    return cmd


def _report(message: str, hint: str = "") -> None:
    sys.stderr.write(f"keyagent: error: {message}\n")
    if hint:
        sys.stderr.write(f"keyagent: hint: {hint}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "quiet"):
        args.quiet = False
    debug = bool(getattr(args, "debug", False))
    try:
        return _run(args)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        _report("Interrupted.")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `keyagent list | head`): stop quietly.
        _silence_stdout()
        return EXIT_FAILED
    except Exception as e:
        if debug:
            traceback.print_exc()
        _report(
            f"Internal error ({type(e).__name__}).",
            f"this is a bug: please report it to {REPORT_TO}, with the output of --debug",
        )
        return EXIT_FAILED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _run(args: argparse.Namespace) -> int:
    # Imports here, not at the top: `keyagent --version` and `--help` need none of them.
    from keyagent.client import AgentUnavailable
    from keyagent.context import CommandError, Context, UsageError
    from keyagent.errors import hint_for
    from keyagent.output import OutputError
    from keyagent.prompt import (
        NoPassphraseSource,
        PassphraseFdError,
        PassphraseMismatch,
        Passphrases,
    )
    from keyagent.protocol import AccessDenied, InvalidName, KeyAgentError

    ctx = Context(args, Passphrases(getattr(args, "passphrase_fd", None)))
    try:
        return _resolve(args.func)(ctx)
    except UsageError as e:
        _report(str(e), e.hint)
        return EXIT_USAGE
    except CommandError as e:
        _report(str(e), e.hint)
        return EXIT_FAILED
    except NoPassphraseSource:
        _report(
            "A passphrase is needed, but there is no terminal to ask on.",
            "give it with --passphrase-fd N",
        )
        return EXIT_USAGE
    except (PassphraseFdError, PassphraseMismatch, OutputError) as e:
        _report(str(e))
        return EXIT_FAILED
    except AgentUnavailable as e:
        _report(e.message, hint_for(e, args.command))
        return EXIT_UNAVAILABLE
    except AccessDenied as e:
        _report(e.message, hint_for(e, args.command))
        return EXIT_DENIED
    except InvalidName as e:
        _report(e.message, hint_for(e, args.command))
        return EXIT_USAGE
    except KeyAgentError as e:
        _report(e.message, hint_for(e, args.command))
        return EXIT_FAILED
    finally:
        ctx.close()
