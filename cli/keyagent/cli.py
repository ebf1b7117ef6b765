"""The `keyagent` command: argument parsing, dispatch, and turning every failure into one
`keyagent: error: …` line (plus a hint where one helps) and a documented exit code."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # `typing` costs milliseconds at every start
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final

    from keyagent.grammar import Args

REPORT_TO: Final = "the keyagent issue tracker"


def parse_args(argv: Sequence[str]) -> Args:
    """The command line's arguments: the fast reader, or argparse (which exits on errors)."""
    if len(argv) == 1 and argv[0] == "--version":
        from keyagent import __version__

        sys.stdout.write(f"keyagent {__version__}\n")
        raise SystemExit(0)
    # Imported after --version, which needs neither the grammar nor the fast reader.
    from keyagent.fastargs import parse_fast
    from keyagent.grammar import Args

    args = parse_fast(argv)
    if args is not None:
        return args
    from keyagent.args import build_parser
    from keyagent.grammar import command_in

    return Args(**vars(build_parser(command_in(argv)).parse_args(argv)))


def _report(message: str, hint: str = "") -> None:
    sys.stderr.write(f"keyagent: error: {message}\n")
    if hint:
        sys.stderr.write(f"keyagent: hint: {hint}\n")


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = parse_args(argv)
    from keyagent.grammar import EXIT_FAILED, EXIT_INTERRUPTED

    if not hasattr(args, "quiet"):
        vars(args)["quiet"] = False  # the commands without -q are quiet
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


def _run(args: Args) -> int:
    # Imports here, not at the top: `keyagent --version` and `--help` need none of them.
    from keyagent.context import CommandError, Context, UsageError
    from keyagent.grammar import EXIT_FAILED, EXIT_USAGE
    from keyagent.output import OutputError
    from keyagent.prompt import (
        NoPassphraseSource,
        PassphraseFdError,
        PassphraseMismatch,
        Passphrases,
    )
    from keyagent.protocol import KeyAgentError

    ctx = Context(args, Passphrases(getattr(args, "passphrase_fd", None)))
    try:
        code: int = args.func(ctx)
        return code
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
    except KeyAgentError as e:
        from keyagent.errors import exit_status, hint_for

        _report(e.message, hint_for(e, args.command))
        return exit_status(e)
    finally:
        ctx.close()
