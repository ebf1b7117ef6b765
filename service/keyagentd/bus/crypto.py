"""Choosing keys for age operations (no D-Bus here; on the event loop or in worker threads).

Decrypt matching: age stanzas are anonymous, so which keys "could" open a file is known only
by type. The agent tries every unlocked key whose type matches a stanza; if none opens the
file and some *locked* key has a matching type, the answer is ``Locked`` naming those locked
keys (the client unlocks one and retries); otherwise ``NoMatch``. A passphrase (scrypt) file
needs the ``passphrase`` option; without it the answer is ``BadPassphrase`` with a text
telling the client to ask for one.

Where small calls run (`runs_inline`): Encrypt/Decrypt of a payload of at most `INLINE_MAX`
bytes run directly on the event loop. Handing them to a thread costs more than the work
(measured: a 312 us p50 hop for 145 us of work on 1 KiB), while 64 KiB of ChaCha20-Poly1305
plus the key agreement takes well under 1 ms, so other callers wait at most that long. Bigger
payloads (up to the 16 MiB cap: ~10 ms+ of crypto), passphrase (scrypt) work, and a Decrypt
that might try many unlocked keys go to the worker pool.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Final

from keyagent.protocol import (
    BadPassphrase,
    InvalidArgs,
    InvalidName,
    Locked,
    Malformed,
    NoMatch,
    NoSuchKey,
    Unsupported,
    is_valid_key_name,
)
from keyagentd import age
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord

#: How much of a bad recipient an error shows (an age1pq1 one has 1,959 characters).
RECIPIENT_SHOWN: Final = 40
#: The stanza type each key type answers to.
STANZA_TYPE: Final = {"x25519": "X25519", "mlkem768x25519": "mlkem768x25519"}
SCRYPT: Final = "scrypt"
PASSPHRASE_NEEDED: Final = "This file is encrypted with a passphrase: give the passphrase option."
WRONG_FILE_PASSPHRASE: Final = "The passphrase does not open this file."
#: Payloads up to this size are encrypted/decrypted on the event loop (see the module text).
INLINE_MAX: Final = 64 * 1024
#: A Decrypt may try every unlocked key of a matching type (~60-300 us each): inline only
#: while there are few.
INLINE_MAX_KEYS: Final = 8


def runs_inline(size: int, passphrase: str | None, cache: KeyCache | None = None) -> bool:
    """Whether an Encrypt/Decrypt of ``size`` bytes is cheap enough for the event loop."""
    if passphrase is not None or size > INLINE_MAX:
        return False  # scrypt takes ~1 s by design; big payloads take milliseconds
    return cache is None or len(cache.unlocked_names()) <= INLINE_MAX_KEYS


@functools.lru_cache(maxsize=256)
def parse_recipient(text: str) -> age.Recipient:
    """`age.parse_recipient`, remembered: recipients are public, and parsing costs ~40 us
    (X25519) to ~1.3 ms (ML-KEM: bech32 of 1,216 bytes in Python) per call. Errors are
    not remembered; the bounded size keeps a caller from growing it."""
    return age.parse_recipient(text)


def resolve_recipients(
    items: Sequence[str],
    records: Mapping[str, KeyRecord],
    passphrase: str | None,
    work_factor: int | None,
) -> list[age.Recipient]:
    """Recipients from ``age1...`` strings and key names, or the scrypt passphrase."""
    if passphrase is not None:
        if items:
            raise InvalidArgs("Give either recipients or the passphrase option, not both.")
        if not passphrase:
            raise BadPassphrase("The passphrase must not be empty.")
        return [age.ScryptRecipient(passphrase, work_factor)]
    if not items:
        raise InvalidArgs("Give at least one recipient (age1... or a key name).")
    out: list[age.Recipient] = []
    for item in items:
        if item.startswith("age1"):
            out.append(_named_recipient(item))
        elif is_valid_key_name(item):
            record = records.get(item)
            if record is None:
                raise NoSuchKey(f"There is no key named {item!r}.")
            out.append(parse_recipient(record.recipient))
        else:
            raise InvalidName(
                f"{item[:80]!r} is neither an age recipient (age1...) nor a key name."
            )
    return out


def _named_recipient(text: str) -> age.Recipient:
    """`parse_recipient`, with the recipient (shortened) named in its error, as age does:
    with several -r, "invalid characters" alone does not say which one is wrong."""
    try:
        return parse_recipient(text)
    except (Malformed, Unsupported) as e:
        shown = text if len(text) <= RECIPIENT_SHOWN else text[: RECIPIENT_SHOWN - 1] + "…"
        reason = e.message[:1].lower() + e.message[1:]
        raise type(e)(f"Recipient {shown!r} is not usable: {reason}") from None


def unwrap(
    dec: age.Decryptor,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    *,
    pin: str | None = None,
    passphrase: str | None = None,
) -> str:
    """Unwrap ``dec``'s file key; returns the key name that opened it ("" for a passphrase)."""
    types = dec.stanza_types
    if SCRYPT in types:
        if passphrase is None:
            raise BadPassphrase(PASSPHRASE_NEEDED)
        try:
            dec.unwrap([age.ScryptIdentity(passphrase)])
        except NoMatch:
            raise BadPassphrase(WRONG_FILE_PASSPHRASE) from None
        return ""
    if pin is not None:
        if not is_valid_key_name(pin):
            raise InvalidName(f"Invalid key name {pin[:80]!r}.")
        record = records.get(pin)
        if record is None:
            raise NoSuchKey(f"There is no key named {pin!r}.")
        if STANZA_TYPE.get(record.key_type) not in types:
            raise NoMatch(f"Key {pin!r} does not match this file.")
        names = [pin]
    else:
        names = sorted(n for n, r in records.items() if STANZA_TYPE.get(r.key_type) in types)
    locked = [n for n in names if not cache.is_unlocked(n)]
    for name in names:
        if name in locked:
            continue
        # One key at a time: each identity exists (and is wiped) within its own `use`, and
        # the search stops at the first key that opens the file.
        try:
            with cache.use(name) as identity:
                dec.unwrap([identity])
        except Locked:  # expired since we looked
            locked.append(name)
            continue
        except NoMatch:
            continue
        return name
    if locked:
        raise Locked.for_keys(sorted(locked))
    if pin is not None:
        raise NoMatch(f"Key {pin!r} does not match this file.")
    raise NoMatch()
