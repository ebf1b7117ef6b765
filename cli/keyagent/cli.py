"""The `keyagent` command: argument parsing, dispatch, and turning every failure into one
`keyagent: error: …` line (plus a hint where one helps) and a documented exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import argparse

    from keyagent.args import Parser
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


Command = Callable[["Context"], int]

#: The options of `encrypt` and `decrypt` that `fast_args` reads: option -> (dest, kind).
_COMMON_FAST: Final = {
    "-o": ("output", "value"),
    "--output": ("output", "value"),
    "-q": ("quiet", "flag"),
    "--quiet": ("quiet", "flag"),
    "--debug": ("debug", "flag"),
    "--passphrase-fd": ("passphrase_fd", "fd"),
}
_FAST_OPTIONS: Final[dict[str, dict[str, tuple[str, str]]]] = {
    "decrypt": {
        **_COMMON_FAST,
        "-k": ("key", "value"),
        "--key": ("key", "value"),
        "--askpass": ("askpass", "flag"),
        "--no-askpass": ("no_askpass", "flag"),
    },
    "encrypt": {
        **_COMMON_FAST,
        "-r": ("recipient", "append"),
        "--recipient": ("recipient", "append"),
        "-R": ("recipients_file", "append"),
        "--recipients-file": ("recipients_file", "append"),
        "-k": ("key", "append"),
        "--key": ("key", "append"),
        "-p": ("passphrase", "flag"),
        "--passphrase": ("passphrase", "flag"),
        "-a": ("armor", "flag"),
        "--armor": ("armor", "flag"),
    },
}
#: What argparse leaves in the namespace when an option is not given.
_FAST_DEFAULTS: Final[dict[str, dict[str, object]]] = {
    "decrypt": {
        "passphrase_fd": None,
        "key": None,
        "askpass": False,
        "no_askpass": False,
        "output": None,
        "quiet": False,
        "input": None,
        "func": "crypt:cmd_decrypt",
    },
    "encrypt": {
        "passphrase_fd": None,
        "recipient": None,
        "recipients_file": None,
        "key": None,
        "passphrase": False,
        "armor": False,
        "output": None,
        "quiet": False,
        "input": None,
        "func": "crypt:cmd_encrypt",
    },
}


def fast_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """The arguments of a plain `encrypt`/`decrypt` command line, read without argparse.

    Importing argparse and building its parser cost several milliseconds at every start of
    the commands run most often. Only the simplest spellings are read here (separate option
    and value, no abbreviations, no values that start with '-'); for anything else, help and
    errors included, this returns None and argparse parses the line. The result equals
    argparse's (tests compare them over generated command lines).
    """
    i, debug = 0, False
    while i < len(argv) and argv[i] == "--debug":
        debug, i = True, i + 1
    if i == len(argv) or argv[i] not in _FAST_OPTIONS:
        return None
    command = argv[i]
    options = _FAST_OPTIONS[command]
    values: dict[str, Any] = {"debug": debug, "command": command, **_FAST_DEFAULTS[command]}
    rest, j, has_input = argv[i + 1 :], 0, False
    while j < len(rest):
        arg = rest[j]
        j += 1
        if arg == "-" or (arg and not arg.startswith("-")):
            if has_input:
                return None  # argparse's error
            values["input"], has_input = arg, True
            continue
        spec = options.get(arg)
        if spec is None:
            return None
        dest, kind = spec
        if kind == "flag":
            values[dest] = True
            continue
        if j == len(rest) or not rest[j] or rest[j].startswith("-"):
            return None
        value = rest[j]
        j += 1
        if kind == "fd":
            if not (value.isascii() and value.isdigit()):
                return None
            values[dest] = int(value)
        elif kind == "append":
            values[dest] = [*(values[dest] or []), value]
        else:
            values[dest] = value
    return SimpleNamespace(**values)


def _command_in(argv: Sequence[str]) -> str | None:
    from keyagent.args import command_in

    return command_in(argv)


def build_parser(only: str | None = None) -> Parser:
    """The argparse parser (see `keyagent.args.build_parser`)."""
    from keyagent.args import build_parser

    return build_parser(only)


def parse_args(argv: Sequence[str]) -> argparse.Namespace | SimpleNamespace:
    """The command line's arguments: the fast path, or argparse (which exits on errors)."""
    args = fast_args(argv)
    if args is not None:
        return args
    return build_parser(_command_in(argv)).parse_args(argv)


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
    if argv is None:
        argv = sys.argv[1:]
    args = parse_args(argv)
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
            import traceback

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


def _run(args: argparse.Namespace | SimpleNamespace) -> int:
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
