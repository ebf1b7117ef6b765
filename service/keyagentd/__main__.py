"""keyagentd: the keyagent D-Bus service (normally started by D-Bus activation).

Exit status: 0 after a clean stop (signal, idle, bus gone), 1 if the agent cannot serve
(name already owned, no session bus, untrusted bus daemon, unusable keystore directory),
2 for a bad command line.

Start-up is most of a cold activation's time (docs/DECISIONS.md, "Issue 15, round three:
cold start"): an activation without arguments does not build argparse's parser, the garbage
collector stays off until the agent serves, and asyncio loads without the ssl module.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import MappingProxyType, SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

from keyagent import startnote
from keyagent.protocol import DEFAULT_MAX_PAYLOAD, KeyAgentError
from keyagentd import __version__
from keyagentd.kdf import MAX_MEMORY_KIB, MAX_PARALLELISM, MAX_TIME_COST, KdfParams
from keyagentd.log import setup as log_setup

if TYPE_CHECKING:
    import argparse

log = logging.getLogger("keyagentd")

M_ARENA_MAX = -8
#: glibc arenas: each worker thread would otherwise get its own 64 MiB-reserving arena.
ARENA_MAX = 2
MAX_PAYLOAD_CAP = 64 * 1024 * 1024  # replies (armor adds a third) must fit a bus message
MIN_PAYLOAD = 1024
MAX_SCRYPT_WORK_FACTOR = 22  # what age (and this agent) accept when decrypting
#: Every option's value when it is not given: all of them for an activation (no arguments).
DEFAULTS: Final = MappingProxyType(
    {
        "idle_exit": None,
        "argon2_memory": 65536,
        "argon2_time": 3,
        "argon2_parallelism": 4,
        "max_payload": DEFAULT_MAX_PAYLOAD,
        "max_streams": 4,
        "scrypt_work_factor": None,
        "verbose": False,
    }
)
#: Modules the agent never uses that its imports would load: asyncio takes ssl if it is
#: there (it runs without, as on a Python built without OpenSSL); the agent speaks no TLS.
UNUSED_MODULES: Final = ("ssl",)


def _bounded(
    kind: str, low: float, high: float, conv: Callable[[str], float] = int
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = conv(text)
        except ValueError:
            raise _argument_error(f"{text!r} is not a {kind}") from None
        if not low <= value <= high:
            raise _argument_error(f"{text} is outside {low:g}..{high:g}")
        return value

    return parse


def _argument_error(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here: an activation passes no arguments and never needs it (~5 ms)

    p = argparse.ArgumentParser(
        prog="keyagentd",
        description=(
            "The keyagent service: keeps unlocked age keys for a bounded time and does all "
            "encryption and decryption itself. Normally started by D-Bus activation."
        ),
        epilog="Exit status: 0 clean stop, 1 cannot serve, 2 bad command line.",
    )
    p.add_argument(
        "--idle-exit",
        type=_bounded("number of seconds", 0, 2**31, float),
        metavar="SECONDS",
        help="exit after this long without calls while every key is locked; 0 never "
        "(default: idle_exit of config.toml, else 300)",
    )
    p.add_argument(
        "--argon2-memory",
        type=_bounded("whole number", 8, MAX_MEMORY_KIB),
        metavar="KIB",
        help="Argon2id memory for newly sealed keys, KiB (default 65536; at least 8 per lane). "
        "Lower only for tests or very slow machines.",
    )
    p.add_argument(
        "--argon2-time",
        type=_bounded("whole number", 1, MAX_TIME_COST),
        metavar="N",
        help="Argon2id passes for newly sealed keys (default 3; test/slow-machine knob)",
    )
    p.add_argument(
        "--argon2-parallelism",
        type=_bounded("whole number", 1, MAX_PARALLELISM),
        metavar="N",
        help="Argon2id lanes for newly sealed keys (default 4)",
    )
    p.add_argument(
        "--max-payload",
        type=_bounded("whole number", MIN_PAYLOAD, MAX_PAYLOAD_CAP),
        metavar="BYTES",
        help="largest data accepted inside a message by Encrypt/Decrypt (default 16 MiB); "
        "bigger files go through EncryptFd/DecryptFd",
    )
    p.add_argument(
        "--max-streams",
        type=_bounded("whole number", 1, 64),
        metavar="N",
        help="concurrent EncryptFd/DecryptFd/UnlockFromFd per caller (default 4)",
    )
    p.add_argument(
        "--scrypt-work-factor",
        type=_bounded("whole number", 1, MAX_SCRYPT_WORK_FACTOR),
        metavar="N",
        help="log2 scrypt work factor for passphrase files (Export, Encrypt with a "
        "passphrase); default: chosen to take about a second, like age",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail too")
    p.add_argument("--version", action="version", version=f"keyagentd {__version__}")
    p.set_defaults(**DEFAULTS)
    return p


def parse_args(argv: Sequence[str]) -> Any:
    """The options (a namespace with every name of `DEFAULTS`); argparse only if some are given."""
    args: Any = build_parser().parse_args(argv) if argv else SimpleNamespace(**DEFAULTS)
    memory, lanes = int(args.argon2_memory), int(args.argon2_parallelism)
    if memory < 8 * lanes:
        build_parser().error(f"--argon2-memory must be at least {8 * lanes} KiB for {lanes} lanes")
    return args


def lighten_start() -> None:
    """What makes a start cheaper and changes nothing the agent does (measured, DECISIONS.md).

    No garbage collection until the agent serves (`_serve` turns it on again): start-up makes
    thousands of long-lived objects and next to no garbage, and the young-generation passes
    over them cost ~4% of the start. Modules in `UNUSED_MODULES` fail to import (None in
    sys.modules), so asyncio skips ssl.
    """
    gc.disable()
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "do not import"


def harden() -> list[str]:
    """No core dumps, no ptrace by other processes of ours, locked memory, bounded arenas."""
    from keyagentd.hardening import harden_process, libc

    messages = harden_process()
    with contextlib.suppress(AttributeError):  # glibc only
        libc().mallopt(M_ARENA_MAX, ARENA_MAX)
    return messages


def warn_if_callers_unidentifiable() -> None:
    """Say at start-up why allowed_executables will refuse everyone, when it will.

    Our parent (dbus-daemon, systemd --user) is a process of ours like any caller: if its
    /proc/PID/exe is unreadable, so is theirs, typically because a user namespace
    (systemd's PrivateUsers=) stands between us.
    """
    parent = os.getppid()
    try:
        if os.stat(f"/proc/{parent}").st_uid != os.getuid():
            return
        os.readlink(f"/proc/{parent}/exe")
    except PermissionError:
        log.warning(
            "cannot read the programs of other processes (/proc/PID/exe), as in a user "
            "namespace (PrivateUsers=): keys with allowed_executables will refuse every caller"
        )
    except OSError:
        return


def main(argv: Sequence[str] | None = None) -> int:
    lighten_start()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    memory, lanes = int(args.argon2_memory), int(args.argon2_parallelism)
    hardening_messages = harden()
    log_setup(sys.stderr, verbose=bool(args.verbose))
    for line in hardening_messages:
        log.info("%s", line)

    from keyagentd.bus.service import Config
    from keyagentd.config import ConfigError, load_config
    from keyagentd.keystore import KeyStore

    try:
        user_config = load_config()
    except ConfigError as exc:
        return _start_failed(str(exc))
    if any(p.allowed_executables is not None for p in user_config.keys.values()):
        warn_if_callers_unidentifiable()
    idle_exit = user_config.idle_exit if args.idle_exit is None else args.idle_exit

    config = Config(
        home=KeyStore.default_root(),
        kdf=KdfParams(memory, int(args.argon2_time), lanes),
        idle_exit=float(idle_exit),
        max_payload=int(args.max_payload),
        max_streams=int(args.max_streams),
        scrypt_work_factor=None
        if args.scrypt_work_factor is None
        else int(args.scrypt_work_factor),
        user=user_config,
    )
    import asyncio

    return asyncio.run(_serve(config))


async def _serve(config: object) -> int:
    from keyagentd.bus.service import Config, connect

    assert isinstance(config, Config)
    try:
        agent = await connect(config)
        # Before the name is ours: a client we answer must not find an old failure's note.
        startnote.clear()
        await agent.start()
    except KeyAgentError as exc:
        return _start_failed(exc.message)
    finally:
        # The start's objects live as long as the agent: out of every later collection.
        gc.freeze()
        gc.enable()
    await agent.run()
    return 0


def _start_failed(message: str) -> int:
    """Say why in the log (the journal), and leave it for `keyagent` (keyagent.startnote)."""
    log.error("%s", message)
    startnote.record(message)
    return 1


if __name__ == "__main__":
    sys.exit(main())
