"""UnwrapFileKey's core: which agent key opens a file's recipient stanzas (no D-Bus here).

An age plugin (age-plugin-keyagent) hands the agent the header's stanzas, not the file; the
agent returns the 16-byte file key of the key that opens one, and the key's name. The key
trial is Decrypt's own (`crypt.unwrap`), run on the bare stanzas instead of a parsed header,
and so is the choice between the event loop and the pool, the askpass retry and the per-key
policy. The header MAC is the client's to check (it has the header; the agent does not):
what leaves the agent is one file's key, which a Decrypt of the same file would have used on
behalf of the same caller anyway, never an identity.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from keyagent.protocol import Malformed, NoMatch
from keyagentd import age, policy
from keyagentd.cache import KeyCache
from keyagentd.config import Config
from keyagentd.crypt import (
    SCRYPT,
    Crypt,
    Tried,
    inline_keys,
    key_rules,
    loop_then_pool,
    retry_after_askpass,
)
from keyagentd.crypt import unwrap as try_keys
from keyagentd.keystore import KeyRecord

if TYPE_CHECKING:
    from keyagentd.age.format import Stanza

#: What arrives on the bus: (type, args, body) per stanza.
RawStanza = tuple[str, Sequence[str], bytes]
#: A stanza body of the recipient types the agent knows is 32 bytes; grease may be longer.
MAX_BODY: Final = 4096
PASSPHRASE_FILE: Final = "This file is encrypted with a passphrase, not to an agent key."


class StanzaUnwrapper:
    """`crypt.Unwrapper` over bare stanzas: keeps the file key the first identity finds."""

    def __init__(self, stanzas: tuple[Stanza, ...]) -> None:
        self.stanzas = stanzas
        self.stanza_types: frozenset[str] = frozenset(s.type for s in stanzas)
        self.file_key: bytes | None = None

    def unwrap(self, identities: Sequence[age.Identity]) -> age.Identity:
        for identity in identities:
            file_key = self._file_key(identity)
            if file_key is not None:
                self.file_key = file_key
                return identity
        raise age.NoMatchError()

    def opens(self, identity: age.Identity) -> bool:
        """Whether ``identity`` unwraps a file key (the header MAC is the client's to check)."""
        return self._file_key(identity) is not None

    def _file_key(self, identity: age.Identity) -> bytes | None:
        from keyagentd.age.format import FILE_KEY_SIZE  # here: the module is not needed at start

        file_key = identity.unwrap(self.stanzas)
        if file_key is not None and len(file_key) != FILE_KEY_SIZE:
            raise Malformed("A recipient stanza holds a file key of the wrong size.")
        return file_key


def parse_stanzas(raw: Sequence[RawStanza]) -> tuple[Stanza, ...]:
    """Check the stanzas as the header parser would (Malformed), and drop scrypt ones:
    a passphrase is age's business, and age never mixes it with other recipients."""
    from keyagentd.age.format import MAX_STANZAS, Stanza, is_valid_arg  # not at start

    if not raw:
        raise Malformed("No recipient stanza was given.")
    if len(raw) > MAX_STANZAS:
        raise Malformed(f"More than {MAX_STANZAS} recipient stanzas were given.")
    out: list[Stanza] = []
    for kind, args, body in raw:
        if not is_valid_arg(kind) or not all(is_valid_arg(a) for a in args):
            raise Malformed("A recipient stanza has a malformed type or argument.")
        if len(body) > MAX_BODY:
            raise Malformed("A recipient stanza body is too long.")
        if kind != SCRYPT:
            out.append(Stanza(kind, tuple(args), bytes(body)))
    if not out:
        raise NoMatch(PASSPHRASE_FILE)
    return tuple(out)


def unwrap_file_key(
    stanzas: tuple[Stanza, ...],
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    pin: str | None,
    user: Config,
    pid: int,
    via: str = "",
    tried: Tried | None = None,
    limit: int | None = None,
) -> tuple[bytes, str]:
    """The file key and the name of the key that opened it; per-key policy applies (it may
    ask at the desktop, so this blocks: run it off the event loop when it can).
    ``tried``/``limit``: as `crypt.unwrap`'s."""
    target = StanzaUnwrapper(stanzas)
    rules = key_rules(pid, user, via)
    name = try_keys(target, cache, records, pin=pin, tried=tried, limit=limit, **rules)
    assert target.file_key is not None  # try_keys returned a name: a key matched
    return target.file_key, name


async def file_key(
    crypt: Crypt,
    raw: Sequence[RawStanza],
    *,
    pin: str | None,
    askpass: bool,
    pid: int,
    via: str = "",
) -> tuple[bytes, str]:
    """UnwrapFileKey, as `Crypt.decrypt` does Decrypt: with ``askpass`` a locked candidate is
    unlocked at the desktop and the stanzas tried again. ``pid``/``via``: the judged caller."""
    stanzas = parse_stanzas(raw)
    attempt = functools.partial(_file_key, crypt, stanzas, pin, pid, via)
    return await retry_after_askpass(crypt.keys, askpass, pid, attempt)


async def _file_key(
    crypt: Crypt, stanzas: tuple[Stanza, ...], pin: str | None, pid: int, via: str
) -> tuple[bytes, str]:
    keys = crypt.keys
    # As Decrypt: the first few trials on the loop, any further ones (or a possible dialog)
    # in the pool.
    limit = 0 if policy.may_prompt(crypt.user) else inline_keys(StanzaUnwrapper(stanzas))

    return await loop_then_pool(
        keys,
        limit,
        unwrap_file_key,
        stanzas=stanzas,
        cache=keys.cache,
        pin=pin,
        user=crypt.user,
        pid=pid,
        via=via,
    )
