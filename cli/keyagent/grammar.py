"""The `keyagent` command line, defined once: every command, its options, arguments and help.

Two readers come from this one table. `keyagent.fastargs.parse_fast` reads the plain spellings
(separate option and value, no abbreviations) without argparse, which costs milliseconds at
every start; `keyagent.args.build_parser` builds argparse's parser from the same table for
everything else (help, usage errors, `--opt=value`, abbreviations). Tests check that both agree.

This module loads at every start: no dataclasses, no `typing` at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs milliseconds; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

    from keyagent.context import Context

    Run = Callable[[Context], int]

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
  4    access denied (the agent on this bus belongs to another user, or a key's
       policy refuses this program)
  130  interrupted

Passphrases are read from the terminal (/dev/tty, no echo) or, with
--passphrase-fd N, one per line from file descriptor N.
See keyagent(1) for details."""

#: Option kinds: what the option stores.
FLAG: Final = "flag"  # True when given
VALUE: Final = "value"  # a string
APPEND: Final = "append"  # a list of strings, one per use
FD: Final = "fd"  # a file descriptor number
DURATION: Final = "duration"  # seconds, from 90, 10m, 1h30m, ...
CHOICE: Final = "choice"  # one of ``choices``


class Opt:
    """An option: its spellings (the last one names it), its kind, and its help."""

    __slots__ = ("choices", "default", "dest", "flags", "help", "kind", "metavar")

    def __init__(
        self,
        *flags: str,
        kind: str = FLAG,
        metavar: str | None = None,
        help: str = "",
        choices: tuple[str, ...] = (),
        default: object = None,
    ) -> None:
        self.flags = flags
        self.dest = flags[-1].lstrip("-").replace("-", "_")
        self.kind = kind
        self.metavar = metavar
        self.help = help
        self.choices = choices
        self.default = False if kind == FLAG else default


class Arg:
    """A positional argument; ``nargs`` is None (exactly one), "?" (optional) or "+"."""

    __slots__ = ("dest", "help", "metavar", "nargs")

    def __init__(self, dest: str, metavar: str, nargs: str | None = None, help: str = "") -> None:
        self.dest = dest
        self.metavar = metavar
        self.nargs = nargs
        self.help = help


class Command:
    """A command: its name, help line, the function that runs it, and its parameters."""

    __slots__ = ("args", "help", "name", "options", "run")

    def __init__(self, name: str, help: str, run: Run, *params: Opt | Arg) -> None:
        self.name = name
        self.help = help
        self.run = run
        self.options = [p for p in params if isinstance(p, Opt)]
        self.args = [p for p in params if isinstance(p, Arg)]


# -- the commands' functions: each imports its module when it runs (`--help` needs none) --------


def _init(ctx: Context) -> int:
    from keyagent.commands import cmd_init

    return cmd_init(ctx)


def _list(ctx: Context) -> int:
    from keyagent.commands import cmd_list

    return cmd_list(ctx)


def _status(ctx: Context) -> int:
    from keyagent.commands import cmd_status

    return cmd_status(ctx)


def _unlock(ctx: Context) -> int:
    from keyagent.commands import cmd_unlock

    return cmd_unlock(ctx)


def _lock(ctx: Context) -> int:
    from keyagent.commands import cmd_lock

    return cmd_lock(ctx)


def _recipient(ctx: Context) -> int:
    from keyagent.commands import cmd_recipient

    return cmd_recipient(ctx)


def _identity(ctx: Context) -> int:
    from keyagent.commands import cmd_identity

    return cmd_identity(ctx)


def _encrypt(ctx: Context) -> int:
    from keyagent.crypt import cmd_encrypt

    return cmd_encrypt(ctx)


def _decrypt(ctx: Context) -> int:
    from keyagent.crypt import cmd_decrypt

    return cmd_decrypt(ctx)


def _import(ctx: Context) -> int:
    from keyagent.commands import cmd_import

    return cmd_import(ctx)


def _export(ctx: Context) -> int:
    from keyagent.commands import cmd_export

    return cmd_export(ctx)


def _passwd(ctx: Context) -> int:
    from keyagent.commands import cmd_passwd

    return cmd_passwd(ctx)


def _delete(ctx: Context) -> int:
    from keyagent.commands import cmd_delete

    return cmd_delete(ctx)


def _install(ctx: Context) -> int:
    from keyagent.commands import cmd_install

    return cmd_install(ctx)


def _uninstall(ctx: Context) -> int:
    from keyagent.commands import cmd_uninstall

    return cmd_uninstall(ctx)


# -- the table ---------------------------------------------------------------------------------

#: Accepted before the command word and after it.
DEBUG: Final = Opt("--debug", help="show a traceback on a crash")
#: Every command that may need a passphrase has this.
PASSPHRASE_FD: Final = Opt(
    "--passphrase-fd",
    kind=FD,
    metavar="N",
    help="read passphrases from file descriptor N (one per line) instead of the terminal",
)
_OUTPUT: Final = Opt(
    "-o", "--output", kind=VALUE, metavar="OUT", help="write OUT (complete or not at all)"
)
_QUIET: Final = Opt("-q", "--quiet", help="no progress display")
_ARMOR: Final = Opt("-a", "--armor", help="write PEM-armored text")
_INPUT: Final = Arg("input", "IN", "?", help="input file (default: stdin)")
_NAME: Final = Arg("name", "NAME")
_LABEL: Final = Opt("--label", kind=VALUE, metavar="L", help="a free-text description")
#: Every command that can meet a locked key has these (keyagent.context.askpass_wanted).
_ASKPASS: Final = Opt(
    "--askpass",
    help="let the agent ask for a locked key's passphrase with its askpass program"
    " (the default without a terminal or --passphrase-fd)",
)
_NO_ASKPASS: Final = Opt("--no-askpass", help="never ask through the agent's askpass program")

COMMANDS: Final[dict[str, Command]] = {
    c.name: c
    for c in (
        Command(
            "init",
            "create a new key, sealed under a passphrase",
            _init,
            PASSPHRASE_FD,
            _NAME,
            Opt(
                "--type",
                kind=CHOICE,
                choices=("x25519", "mlkem768x25519"),
                default="x25519",
                help="x25519 (default) or mlkem768x25519 (post-quantum hybrid)",
            ),
            _LABEL,
        ),
        Command("list", "list keys and whether they are unlocked", _list),
        Command(
            "status",
            "show the agent and every key",
            _status,
            Opt("--json", help="machine-readable output (see keyagent(1))"),
        ),
        Command(
            "unlock",
            "unlock keys for a while",
            _unlock,
            PASSPHRASE_FD,
            Arg("names", "NAME", "+"),
            Opt(
                "--idle-timeout",
                kind=DURATION,
                metavar="D",
                help="lock after D without use (e.g. 90, 10m, 2h; agent default 10m)",
            ),
            Opt(
                "-t",
                "--max-timeout",
                kind=DURATION,
                metavar="D",
                help="lock after D at the latest, as ssh-add -t (e.g. 1h30m; agent default 2h)",
            ),
            _ASKPASS,
            _NO_ASKPASS,
        ),
        Command(
            "lock",
            "lock one key, or all keys (the default)",
            _lock,
            Arg("name", "NAME", "?"),
            Opt("--all", help="lock every key"),
        ),
        Command(
            "recipient",
            "print the recipient (public key) of keys",
            _recipient,
            Arg("names", "NAME", "+"),
        ),
        Command(
            "identity",
            "print an age identity file for a key (for age-plugin-keyagent; no secret)",
            _identity,
            _NAME,
        ),
        Command(
            "encrypt",
            "encrypt a file or stdin",
            _encrypt,
            PASSPHRASE_FD,
            Opt(
                "-r",
                "--recipient",
                kind=APPEND,
                metavar="RECIPIENT",
                help="encrypt to an age1... recipient or SSH public key ('ssh-ed25519 AAAA...') "
                "(repeatable)",
            ),
            Opt(
                "-R",
                "--recipients-file",
                kind=APPEND,
                metavar="PATH",
                help="encrypt to the recipients listed in PATH, one per line; an authorized_keys "
                "or .pub file works (repeatable)",
            ),
            Opt(
                "-k",
                "--key",
                kind=APPEND,
                metavar="NAME",
                help="encrypt to a key of the agent (repeatable; a locked key works)",
            ),
            Opt("-p", "--passphrase", help="encrypt with a passphrase instead of recipients"),
            _ARMOR,
            _OUTPUT,
            _QUIET,
            _INPUT,
        ),
        Command(
            "decrypt",
            "decrypt a file or stdin",
            _decrypt,
            PASSPHRASE_FD,
            Opt("-k", "--key", kind=VALUE, metavar="NAME", help="use only this key"),
            _ASKPASS,
            _NO_ASKPASS,
            _OUTPUT,
            _QUIET,
            _INPUT,
        ),
        Command(
            "import",
            "seal an existing age identity or SSH key as a new key",
            _import,
            PASSPHRASE_FD,
            _NAME,
            Arg(
                "file",
                "FILE",
                "?",
                help="age identity file (as age-keygen writes) or OpenSSH/PEM private key "
                "(ssh-ed25519, ssh-rsa) (default: stdin)",
            ),
            _LABEL,
            Opt(
                "--ssh-passphrase-fd",
                kind=FD,
                metavar="N",
                help="read the SSH key's passphrase from file descriptor N (the first line, if N "
                "is also --passphrase-fd) instead of the terminal",
            ),
        ),
        Command(
            "export",
            "export a key as an age file encrypted to its passphrase",
            _export,
            PASSPHRASE_FD,
            _NAME,
            _ARMOR,
            Opt("-o", "--output", kind=VALUE, metavar="OUT", help="write OUT (0600)"),
        ),
        Command("passwd", "change a key's passphrase", _passwd, PASSPHRASE_FD, _NAME),
        Command(
            "delete",
            "delete a key for good",
            _delete,
            PASSPHRASE_FD,
            _NAME,
            Opt("-y", "--yes", help="do not ask for confirmation"),
            _ASKPASS,
            _NO_ASKPASS,
        ),
        Command(
            "install",
            "install the per-user D-Bus activation file and systemd unit",
            _install,
            Opt("--bindir", kind=VALUE, metavar="DIR", help="where keyagentd is (default: found)"),
        ),
        Command("uninstall", "remove the files 'keyagent install' wrote", _uninstall),
    )
}


# -- what a parse gives ------------------------------------------------------------------------


class Args:
    """The parsed command line: attributes named by each parameter's ``dest``, as argparse's
    Namespace (equal to one with the same attributes)."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def __eq__(self, other: object) -> bool:
        return vars(self) == vars(other) if hasattr(other, "__dict__") else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...

    def __repr__(self) -> str:
        return f"Args({vars(self)!r})"


def command_in(argv: Sequence[str]) -> str | None:
    """The command word of a command line, when it is plainly one: only ``--debug`` (or an
    abbreviation) before it. Anything else, like ``-h``, gets the whole parser."""
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2 and "--debug".startswith(arg):
            continue
        return arg if arg in COMMANDS else None
    return None
