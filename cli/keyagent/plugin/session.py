"""The plugin's side of the agent: UnwrapFileKey, and unlocking a locked key on the way.

A locked key is unlocked the way the person can answer: with a terminal, through the age
client's own ``request-secret`` prompt (naming the key) and `Client.unlock_with_pipe`, so the
passphrase never appears in a bus message; three tries, each wrong one counted by the agent's
rate limiter. Without a terminal, the agent's askpass (``askpass`` option) if it has one;
else the answer is one line naming the key and ``keyagent unlock NAME``.
"""

from __future__ import annotations

import os

from keyagent.lazy_client import LazyClient
from keyagent.plugin.framing import Channel
from keyagent.protocol import BadPassphrase, Failed, KeyAgentError, Locked, NoSuchKey

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final

    RawStanza = tuple[str, Sequence[str], bytes]

PASSPHRASE_TRIES: Final = 3
#: An UnwrapFileKey may wait for a person (a key's `confirm` question): as long as askpass.
PERSON_TIMEOUT: Final = 400.0


class PluginFailure(Exception):
    """An answer for the age client's ``error`` command: its arguments and one line of text."""

    def __init__(self, args: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.error_args = args
        self.message = message


def has_terminal() -> bool:
    """Whether a person is at a terminal (the one age would prompt on)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def unlock_hint(name: str) -> str:
    return f"key '{name}' is locked: run `keyagent unlock {name}`, then try again"


class AgentSession(LazyClient):
    """One connection to the agent for the plugin's lifetime (opened on first use, after
    phase 1: age is not kept waiting for the import)."""

    def __init__(self, chan: Channel) -> None:
        super().__init__()
        self.chan = chan

    def unwrap(self, stanzas: Sequence[RawStanza], pin: str | None) -> tuple[bytes, str]:
        """UnwrapFileKey, unlocking the locked candidates one by one as the agent names them."""
        asked: set[str] = set()
        while True:
            try:
                return self.client().unwrap_file_key(stanzas, key=pin, timeout=PERSON_TIMEOUT)
            except Locked as exc:
                todo = [n for n in exc.names if n not in asked] or ([pin] if pin else [])
                if not todo or todo[0] in asked:
                    raise
                asked.add(todo[0])
                if not has_terminal():
                    return self._by_askpass(stanzas, pin, todo[0])
                self.unlock_on_terminal(todo[0])

    def _by_askpass(
        self, stanzas: Sequence[RawStanza], pin: str | None, name: str
    ) -> tuple[bytes, str]:
        try:
            return self.client().unwrap_file_key(stanzas, key=pin, askpass=True)
        except BadPassphrase as exc:
            raise PluginFailure(
                ("internal",), f"key '{name}' was not unlocked: {exc.message.rstrip('.')}"
            ) from None
        except (Failed, Locked):  # no askpass program, or a further locked key
            raise PluginFailure(("internal",), unlock_hint(name)) from None

    def unlock_on_terminal(self, name: str) -> None:
        """Ask through the age client's prompt; up to three tries."""
        for attempt in range(PASSPHRASE_TRIES):
            prompt = f"Passphrase for keyagent key '{name}':"
            if attempt:
                prompt = f"Wrong passphrase. {prompt}"
            reply = self.chan.command("request-secret", body=prompt.encode())
            if reply.type != "ok":
                raise PluginFailure(("internal",), unlock_hint(name))
            try:
                passphrase = reply.body.decode("utf-8")
            except UnicodeDecodeError:
                continue
            try:
                self.client().unlock_with_pipe(name, passphrase)
                return
            except BadPassphrase:
                continue
            finally:
                del passphrase
        raise PluginFailure(
            ("internal",), f"key '{name}' was not unlocked: {PASSPHRASE_TRIES} wrong passphrases"
        )


def identity_failure(index: int, message: str) -> PluginFailure:
    """An ``error`` that blames the client's identity number ``index``."""
    return PluginFailure(("identity", str(index)), message)


def failure_from(exc: KeyAgentError, *, identity: int, name: str) -> PluginFailure:
    """An agent error on identity ``identity`` (key ``name``): a missing key blames that
    identity; any other error is the agent's own sentence, for the age client to print."""
    if isinstance(exc, NoSuchKey):
        return identity_failure(identity, f"there is no key named '{name}' in the agent")
    return PluginFailure(("internal",), exc.message.rstrip("."))
