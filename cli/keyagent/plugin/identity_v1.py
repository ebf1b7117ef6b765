"""The ``identity-v1`` state machine (C2SP age-plugin.md): unwrap file keys through the agent.

Phase 1, client to plugin: ``add-identity``, ``recipient-stanza FILE TYPE ARGS...`` with
body, then ``done``; anything else (grease, newer commands) is ignored. Phase 2, plugin to
client, each command answered by ``ok``/``fail``/``unsupported``: a grease command, then per
file ``file-key FILE`` or ``error ...``, then ``done``. The agent checks no header MAC: age
does, with the file key it gets.
"""

from __future__ import annotations

import os

from keyagent.plugin.encoding import BadIdentity, decode_identity
from keyagent.plugin.framing import Channel, ProtocolError, only_arg
from keyagent.plugin.session import (
    AgentSession,
    PluginFailure,
    failure_from,
    identity_failure,
)
from keyagent.protocol import KeyAgentError, NoMatch

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    from keyagent.plugin.session import RawStanza

NO_KEY = "no key in the agent opens this file"


class Request:
    """What phase 1 brought: identities, and each file's stanzas (no dataclass: start-up)."""

    def __init__(self) -> None:
        self.identities: list[str] = []
        self.files: dict[int, list[RawStanza]] = {}


def read_phase1(chan: Channel) -> Request:
    req = Request()
    for s in chan.phase1():
        if s.type == "add-identity":
            req.identities.append(only_arg(s))
        elif s.type == "recipient-stanza":
            if len(s.args) < 2 or not s.args[0].isdigit():
                raise ProtocolError("The age client sent a malformed recipient-stanza command.")
            req.files.setdefault(int(s.args[0]), []).append((s.args[1], s.args[2:], s.body))
    return req


def grease(chan: Channel) -> None:
    """A command the client cannot know: it must answer ``unsupported`` (the spec's grease)."""
    chan.command(f"keyagent-grease-{os.urandom(4).hex()}", body=os.urandom(os.urandom(1)[0] % 8))


def run(chan: Channel) -> int:
    req = read_phase1(chan)
    grease(chan)
    names: list[str] = []
    for i, text in enumerate(req.identities):
        try:
            names.append(decode_identity(text))
        except BadIdentity as exc:
            return fail(chan, identity_failure(i, str(exc).rstrip(".")))
    session = AgentSession(chan)
    try:
        for index in sorted(req.files):
            try:
                file_key = unwrap_file(session, names, req.files[index])
            except PluginFailure as exc:
                return fail(chan, exc)
            chan.command("file-key", str(index), body=file_key)
    finally:
        session.close()
    chan.send("done")
    return 0


def unwrap_file(session: AgentSession, names: list[str], stanzas: list[RawStanza]) -> bytes:
    """The file key from the first identity whose key opens the file."""
    for i, name in enumerate(names):
        try:
            return session.unwrap(stanzas, name or None)[0]
        except NoMatch:
            continue
        except KeyAgentError as exc:
            raise failure_from(exc, identity=i, name=name) from None
    raise PluginFailure(("internal",), NO_KEY)


def fail(chan: Channel, exc: PluginFailure) -> int:
    """The spec's ``error``, then ``done``: age stops at the error, rage waits for the end."""
    chan.command("error", *exc.error_args, body=exc.message.encode())
    try:  # noqa: SIM105 - not contextlib.suppress: `contextlib` costs milliseconds at start
        chan.send("done")
    except BrokenPipeError:  # age has closed the conversation already
        pass
    return 1
