"""The ``age-plugin-keyagent`` command: ``--age-plugin=identity-v1|recipient-v1``.

age starts it with stdin/stdout as the conversation and stderr discarded, so everything the
person should read goes through the protocol's ``error`` and ``msg`` commands.
"""

from __future__ import annotations

import sys

from keyagent.plugin.framing import Channel, ProtocolError

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    import signal as _signal
    from typing import BinaryIO, Final
else:
    import _signal  # the C module: `signal` imports enum, milliseconds at every start

USAGE: Final = """usage: age-plugin-keyagent --age-plugin=identity-v1|recipient-v1

The age plugin of keyagent, started by age, rage and other age clients; not for direct use.
Decrypt:  age -d -j keyagent FILE, or age -d -i IDENTITY_FILE FILE
Encrypt:  age -e -i IDENTITY_FILE FILE
Make an identity file with `keyagent identity NAME` (it holds no secret).
See age-plugin-keyagent(1).
"""
#: How many lines of a broken conversation are read while waiting for age's "ok".
DRAIN_LINES: Final = 100_000


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # age sends SIGINT once the conversation is over: end quietly, not with a traceback.
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    if args in (["--age-plugin=identity-v1"], ["--age-plugin=recipient-v1"]):
        machine = args[0].split("=", 1)[1]
        return converse(machine, sys.stdin.buffer, sys.stdout.buffer)
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    sys.stderr.write(USAGE)
    return 2


def converse(machine: str, src: BinaryIO, dst: BinaryIO) -> int:
    chan = Channel(src, dst)
    try:
        if machine == "identity-v1":
            from keyagent.plugin import identity_v1

            return identity_v1.run(chan)
        from keyagent.plugin import recipient_v1

        return recipient_v1.run(chan)
    except ProtocolError as exc:
        report(chan, src, str(exc))
    except BrokenPipeError:
        pass
    except Exception as exc:  # never a silent death: age would only say "plugin exited"
        report(chan, src, f"age-plugin-keyagent failed unexpectedly ({type(exc).__name__})")
    return 1


def report(chan: Channel, src: BinaryIO, message: str) -> None:
    """Tell the client the conversation broke, then wait for its ``ok`` (or its exit): age
    answers ``error`` before it shows it, and would see a broken pipe if we left first."""
    try:
        chan.send("error", "internal", body=message.rstrip(".").encode())
        for _ in range(DRAIN_LINES):
            line = src.readline(4096)
            if not line:
                return
            if line == b"-> ok\n":
                chan.send("done")
                return
    except (BrokenPipeError, OSError):
        return
