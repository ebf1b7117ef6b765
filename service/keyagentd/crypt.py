"""Encrypt and decrypt, in messages and as streams; choosing keys for them. No D-Bus here.

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
payloads (up to the 16 MiB cap: ~10 ms+ of crypto) and passphrase (scrypt) work go to the
worker pool. A small Decrypt tries its first keys on the loop (stanzas x keys at most
`INLINE_MAX_TRIALS`) and hands any further ones to a worker, which skips those tried.

Finding keys costs the same with 1 or 1,000 stored: only unlocked keys are walked, in the
order the cache keeps them sorted, and lookups do not scan (cache.py); the records are
copied only for a worker (so they cannot change under it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import io
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, Final, cast

from keyagent.protocol import (
    AccessDenied,
    BadPassphrase,
    InvalidArgs,
    InvalidName,
    Locked,
    NoMatch,
    NoSuchKey,
    TooLarge,
    is_valid_key_name,
)
from keyagentd import age, policy
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.keys import Keys
from keyagentd.keystore import KeyRecord
from keyagentd.overlap import OverlappedOutput
from keyagentd.streams import Cancelled, FdSink, FdSource

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
#: An inline Decrypt's header is parsed on the loop (linear in its size, at most 64 KiB);
#: unwrapping costs ~60-300 us per stanza and key tried, so it stays inline only while
#: stanzas x unlocked keys of a matching type is at most this (one normal file: 1 x 8).
INLINE_MAX_TRIALS: Final = 8


def runs_inline(size: int, passphrase: str | None, cache: KeyCache | None = None) -> bool:
    """Whether an Encrypt/Decrypt of ``size`` bytes is cheap enough for the event loop."""
    if passphrase is not None or size > INLINE_MAX:
        return False  # scrypt takes ~1 s by design; big payloads take milliseconds
    return cache is None or cache.unlocked_count() <= INLINE_MAX_KEYS


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
            out.append(parse_recipient(item))
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


class _Deferred(Exception):
    """`unwrap` tried its ``limit`` of keys and more remain (the rest goes to a worker)."""


def unwrap(
    dec: age.Decryptor,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    *,
    pin: str | None = None,
    passphrase: str | None = None,
    tried: set[str] | None = None,
    limit: int | None = None,
) -> str:
    """Unwrap ``dec``'s file key; returns the key name that opened it ("" for a passphrase).

    Keys are tried in name order, skipping those in ``tried`` (and adding each one tried);
    with ``limit``, `_Deferred` is raised before trying more than that many."""
    types = dec.stanza_types
    if SCRYPT in types:
        if passphrase is None:
            raise BadPassphrase(PASSPHRASE_NEEDED)
        try:
            dec.unwrap([age.ScryptIdentity(passphrase)])
        except age.NoMatchError:
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
    tried = set() if tried is None else tried
    # Only unlocked keys are walked (kept sorted by the cache): the cost does not grow with
    # the number of stored keys, and stops at the first key that opens the file.
    for name in [pin] if pin is not None else cache.unlocked_names():
        record = records.get(name)
        if name in tried or record is None or STANZA_TYPE.get(record.key_type) not in types:
            continue
        if limit is not None and len(tried) >= limit:
            raise _Deferred()
        tried.add(name)
        # One key at a time: each identity exists (and is wiped) within its own `use`.
        try:
            with cache.use(name) as identity:
                dec.unwrap([identity])
        except Locked:  # locked, or expired since we looked: named in the answer below
            tried.discard(name)
            continue
        except age.NoMatchError:
            continue
        return name
    names = [pin] if pin is not None else records
    locked = sorted(
        n for n in names if n not in tried and STANZA_TYPE.get(records[n].key_type) in types
    )
    if locked:
        raise Locked.for_keys(locked)
    if pin is not None:
        raise NoMatch(f"Key {pin!r} does not match this file.")
    raise NoMatch()


#: How often a stream waiting for an askpass unlock looks at its cancel flag (seconds).
CANCEL_POLL: Final = 0.25

#: What the stream runner runs in a worker thread: ``job(cancel)``.
StreamJob = Callable[[threading.Event], Any]
#: A stream job still to be given its fds: ``bind(input_fd, output_fd)``.
BindFds = Callable[[int, int], StreamJob]


def ciphertext_limit(max_payload: int) -> int:
    """Decrypt accepts what Encrypt makes of a payload at the cap: armor adds a third,
    chunk tags and the header a little more."""
    return max_payload * 3 // 2 + 64 * 1024


class Crypt:
    """Encrypt/Decrypt and their streams, with the agent's keys."""

    def __init__(self, keys: Keys, *, max_payload: int, scrypt_work_factor: int | None) -> None:
        self.keys = keys
        self.max_payload = max_payload
        self.work_factor = scrypt_work_factor

    @property
    def user(self) -> UserConfig:
        return self.keys.user

    def recipients(self, items: Sequence[str], passphrase: str | None) -> list[age.Recipient]:
        return resolve_recipients(items, self.keys.records, passphrase, self.work_factor)

    async def encrypt(
        self, recipients: Sequence[str], plaintext: bytes, *, armor: bool, passphrase: str | None
    ) -> bytes:
        _check_size(plaintext, self.max_payload)
        targets = self.recipients(recipients, passphrase)
        if runs_inline(len(plaintext), passphrase):
            return age.encrypt_bytes(targets, plaintext, armor=armor)
        return await self.keys.work.blocking(age.encrypt_bytes, targets, plaintext, armor=armor)

    async def decrypt(
        self,
        ciphertext: bytes,
        *,
        pin: str | None,
        passphrase: str | None,
        askpass: bool,
        pid: int,
    ) -> tuple[bytes, str]:
        """The plaintext and the key that opened it; with ``askpass`` a locked candidate is
        unlocked at the desktop and the file tried again (the data is all here)."""
        _check_size(ciphertext, ciphertext_limit(self.max_payload))
        try:
            name, plaintext = await self._decrypt(ciphertext, pin, passphrase, pid)
        except Locked as exc:
            if not askpass or not exc.names:
                raise
            await self.keys.unlock_by_askpass(exc.names[0], pid)
            name, plaintext = await self._decrypt(ciphertext, pin, passphrase, pid)
        return plaintext, name

    async def _decrypt(
        self, ciphertext: bytes, pin: str | None, passphrase: str | None, pid: int
    ) -> tuple[str, bytes]:
        keys = self.keys
        tried: set[str] = set()
        # A confirmation dialog may wait for minutes: never on the event loop.
        if runs_inline(len(ciphertext), passphrase) and not policy.may_prompt(self.user):
            dec = age.Decryptor(io.BytesIO(ciphertext))
            # Hundreds of bogus stanzas x several keys must not hold the loop either: the
            # first few keys are tried here, any further ones in a worker.
            limit = INLINE_MAX_TRIALS // max(1, len(dec.stanzas))
            if limit:
                try:
                    args = (dec, keys.cache, keys.records, pin, passphrase, self.user, pid)
                    return _finish_decrypt(*args, tried, limit)
                except _Deferred:
                    pass
        else:
            dec = await keys.work.blocking(age.Decryptor, io.BytesIO(ciphertext))
        # A worker must not see the records change under it: its own copy.
        args = (dec, keys.cache, dict(keys.records), pin, passphrase, self.user, pid)
        return await keys.work.blocking(_finish_decrypt, *args, tried)

    def encrypt_job(
        self, recipients: Sequence[str], *, armor: bool, passphrase: str | None
    ) -> BindFds:
        """Check the call now; the job that streams ``input`` to ``output`` encrypted."""
        targets = self.recipients(recipients, passphrase)

        def bind(input_: int, output: int) -> StreamJob:
            def job(cancel: threading.Event) -> int:
                src, dst = _io(FdSource(input_, cancel)), _io(FdSink(output, cancel))
                return age.encrypt(targets, src, dst, armor=armor, output=OverlappedOutput)

            return job

        return bind

    def decrypt_job(
        self, *, pin: str | None, passphrase: str | None, askpass: bool, pid: int
    ) -> BindFds:
        """The job that streams ``input`` to ``output`` decrypted: (key name, bytes)."""
        keys, user = self.keys, self.user
        cache, records = keys.cache, dict(keys.records)
        loop = asyncio.get_running_loop()

        def bind(input_: int, output: int) -> StreamJob:
            def job(cancel: threading.Event) -> tuple[str, int]:
                dec = age.Decryptor(_io(FdSource(input_, cancel)))
                try:
                    name = unwrap(dec, cache, records, pin=pin, passphrase=passphrase)
                except Locked as exc:
                    if not askpass or not exc.names:
                        raise
                    # The header is read and the input cannot rewind: unlock (on the loop),
                    # then unwrap again with the same decryptor.
                    unlock = keys.unlock_by_askpass(exc.names[0], pid)
                    _wait(asyncio.run_coroutine_threadsafe(unlock, loop), cancel)
                    name = unwrap(dec, cache, records, pin=pin, passphrase=passphrase)
                _check_policy(name, pid, user)
                sink = _io(FdSink(output, cancel))
                return name, dec.decrypt_to(sink, output=OverlappedOutput)

            return job

        return bind


def _check_size(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise TooLarge(
            f"The data is larger than {limit} bytes: use EncryptFd/DecryptFd for big files."
        )


def _wait(future: concurrent.futures.Future[None], cancel: threading.Event) -> None:
    """Wait in a stream thread for work on the loop; give up if the stream is cancelled."""
    while True:
        try:
            return future.result(timeout=CANCEL_POLL)
        except concurrent.futures.TimeoutError:
            if cancel.is_set():
                future.cancel()
                raise Cancelled("The operation was cancelled.") from None


def _io(obj: object) -> BinaryIO:
    # The engine needs only readinto/write, which FdSource/FdSink provide.
    return cast(BinaryIO, obj)


def _check_policy(name: str, pid: int, user: UserConfig) -> None:
    """Per-key policy, once the key is known and before any plaintext (may ask; blocks)."""
    if name and policy.is_restricted(name, user):
        try:
            policy.check(name, pid, user, operation="decrypt")
        except AccessDenied as exc:
            exc.key = name  # the audit names the key that was refused
            raise


def _finish_decrypt(
    dec: age.Decryptor,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    pin: str | None,
    passphrase: str | None,
    user: UserConfig,
    pid: int,
    tried: set[str] | None = None,
    limit: int | None = None,
) -> tuple[str, bytes]:
    name = unwrap(dec, cache, records, pin=pin, passphrase=passphrase, tried=tried, limit=limit)
    _check_policy(name, pid, user)
    out = io.BytesIO()
    dec.decrypt_to(out)
    return name, out.getvalue()
