"""The ``recipient-v1`` state machine (C2SP age-plugin.md): ``age -e -i identity.txt``.

Phase 1: ``add-recipient``, ``add-identity``, ``wrap-file-key`` (body: a file key),
``extension-labels``, ``done``; anything else is ignored. Phase 2: a grease command, then per
file key one ``recipient-stanza FILE TYPE ARGS...`` per identity, ``labels postquantum`` for
a hybrid key when the client asked for labels, and ``done``. The stanzas are the agent key's
native ones (``X25519`` or ``mlkem768x25519``), so any age client decrypts them with the
plain identity, and age 1.1.1 writes post-quantum files it could not make itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyagent.plugin.encoding import BadIdentity, decode_identity
from keyagent.plugin.framing import Channel, only_arg
from keyagent.plugin.identity_v1 import fail, grease
from keyagent.plugin.session import AgentSession, PluginFailure, failure_from, identity_failure
from keyagent.plugin.wrap import wrap
from keyagent.protocol import KeyAgentError


@dataclass
class Request:
    recipients: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    file_keys: list[bytes] = field(default_factory=list)
    labels: bool = False


def read_phase1(chan: Channel) -> Request:
    req = Request()
    for s in chan.phase1():
        if s.type in ("add-recipient", "add-identity"):
            (req.recipients if s.type == "add-recipient" else req.identities).append(only_arg(s))
        elif s.type == "wrap-file-key":
            req.file_keys.append(s.body)
        elif s.type == "extension-labels":
            req.labels = True
    return req


def run(chan: Channel) -> int:
    req = read_phase1(chan)
    grease(chan)
    if req.recipients:
        message = "keyagent has no age1keyagent1 recipients: encrypt to the key's age1 recipient"
        return fail(chan, PluginFailure(("recipient", "0"), message))
    session = AgentSession(chan)
    try:
        try:
            recipients = [_recipient(session, i, text) for i, text in enumerate(req.identities)]
        except PluginFailure as exc:
            return fail(chan, exc)
        pq = False
        for index, file_key in enumerate(req.file_keys):
            for recipient in recipients:
                stanza, pq_key = wrap(recipient, file_key)
                pq = pq or pq_key
                chan.command(
                    "recipient-stanza", str(index), stanza.type, *stanza.args, body=stanza.body
                )
        if pq and req.labels:
            chan.command("labels", "postquantum")
    finally:
        session.close()
    chan.send("done")
    return 0


def _recipient(session: AgentSession, index: int, text: str) -> str:
    """The public recipient of the identity's key (no unlock needed: it is public)."""
    try:
        name = decode_identity(text)
    except BadIdentity as exc:
        raise identity_failure(index, str(exc).rstrip(".")) from None
    if not name:
        message = (
            "AGE-PLUGIN-KEYAGENT-1 without a key name only decrypts: use `keyagent identity NAME`"
        )
        raise identity_failure(index, message)
    try:
        return session.client().key(name).recipient
    except KeyAgentError as exc:
        raise failure_from(exc, identity=index, name=name) from None
