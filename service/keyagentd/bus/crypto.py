"""Choosing keys for age operations (runs in worker threads; no D-Bus here).

Decrypt matching: age stanzas are anonymous, so which keys "could" open a file is known only
by type. The agent tries every unlocked key whose type matches a stanza; if none opens the
file and some *locked* key has a matching type, the answer is ``Locked`` naming those locked
keys (the client unlocks one and retries); otherwise ``NoMatch``. A passphrase (scrypt) file
needs the ``passphrase`` option; without it the answer is ``BadPassphrase`` with a text
telling the client to ask for one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Final

from keyagent.protocol import (
    BadPassphrase,
    InvalidArgs,
    InvalidName,
    Locked,
    NoMatch,
    NoSuchKey,
    is_valid_key_name,
)
from keyagentd import age
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord

#: The stanza type each key type answers to.
STANZA_TYPE: Final = {"x25519": "X25519", "mlkem768x25519": "mlkem768x25519"}
SCRYPT: Final = "scrypt"
PASSPHRASE_NEEDED: Final = "This file is encrypted with a passphrase: give the passphrase option."
WRONG_FILE_PASSPHRASE: Final = "The passphrase does not open this file."


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
            out.append(age.parse_recipient(item))
        elif is_valid_key_name(item):
            record = records.get(item)
            if record is None:
                raise NoSuchKey(f"There is no key named {item!r}.")
            out.append(age.parse_recipient(record.recipient))
        else:
            raise InvalidName(
                f"{item[:80]!r} is neither an age recipient (age1...) nor a key name."
            )
    return out


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
    unlocked = [n for n in names if n not in locked]
    if unlocked:
        with contextlib.ExitStack() as stack:
            by_identity: dict[int, str] = {}
            identities = []
            for name in unlocked:
                try:
                    identity = stack.enter_context(cache.use(name))
                except Locked:  # expired since we looked
                    locked.append(name)
                    continue
                by_identity[id(identity)] = name
                identities.append(identity)
            if identities:
                try:
                    return by_identity[id(dec.unwrap(identities))]
                except NoMatch:
                    pass
    if locked:
        raise Locked.for_keys(sorted(locked))
    if pin is not None:
        raise NoMatch(f"Key {pin!r} does not match this file.")
    raise NoMatch()
