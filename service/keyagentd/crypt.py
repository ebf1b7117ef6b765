"""Encrypt and decrypt, in messages and as streams; choosing keys for them. No D-Bus here.

Decrypt matching: age stanzas are anonymous, so which keys "could" open a file is known only
by type (`age.may_open`; an SSH stanza carries its key's tag, which narrows it to that key).
The agent tries every unlocked key whose type matches a stanza; if none opens the
file and some *locked* key has a matching type, the answer is ``Locked`` naming those locked
keys (the client unlocks one and retries); otherwise ``NoMatch``. A passphrase (scrypt) file
needs the ``passphrase`` option; without it the answer is ``BadPassphrase`` with a text
telling the client to ask for one.

Where small calls run (`runs_inline`): Encrypt/Decrypt of a payload of at most `INLINE_MAX`
bytes run directly on the event loop. Handing them to a thread costs more than the work
(measured: a 312 us p50 hop for 145 us of work on 1 KiB), while 64 KiB of ChaCha20-Poly1305
plus the key agreement takes well under 1 ms, so other callers wait at most that long. Bigger
payloads (up to the 16 MiB cap: ~10 ms+ of crypto) and passphrase (scrypt) work go to the
worker pool. A small Decrypt (or UnwrapFileKey) tries its first keys on the loop (stanzas x
keys at most `INLINE_MAX_TRIALS`) and hands any further ones to a worker, which skips those
tried.

Finding keys costs the same with 1 or 1,000 stored: only unlocked keys are walked, in the
order the cache keeps them sorted, lazily (the walk stops at the first key that opens the
file), and lookups do not scan (cache.py); the records are copied only for a worker (so they
cannot change under it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Final, Protocol, TypedDict, TypeVar, cast

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
from keyagentd.age.batches import IntoRun
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.keys import Keys
from keyagentd.keystore import KeyRecord
from keyagentd.overlap import ParallelRun
from keyagentd.recipients import VerifiedRecipients
from keyagentd.secrets import PlainBuffer, wipe
from keyagentd.streams import Cancelled, FdSink, FdSource

T = TypeVar("T")

SCRYPT: Final = "scrypt"
#: How much of a bad recipient an error shows (an age1pq1 one has 1,959 characters).
RECIPIENT_SHOWN: Final = 40
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
    verified: VerifiedRecipients | None = None,
) -> list[age.Recipient]:
    """Recipients from ``age1...``/SSH strings and key names, or the scrypt passphrase. With
    ``verified``, a key name whose recipient the agent has not verified is `Locked`."""
    if passphrase is not None:
        if items:
            raise InvalidArgs("Give either recipients or the passphrase option, not both.")
        if not passphrase:
            raise BadPassphrase("The passphrase must not be empty.")
        return [age.ScryptRecipient(passphrase, work_factor)]
    if not items:
        raise InvalidArgs("Give at least one recipient (age1... or a key name).")
    age.check_recipient_count(len(items))  # before parsing them all
    out: list[age.Recipient] = []
    for item in items:
        if age.is_recipient_text(item):
            # age1 errors are terse ("invalid characters"): name the recipient; SSH key
            # errors already say what is wrong with the key
            out.append(_named_recipient(item) if item.startswith("age1") else parse_recipient(item))
        elif is_valid_key_name(item):
            record = records.get(item)
            if record is None:
                raise NoSuchKey(f"There is no key named {item!r}.")
            if verified is not None:
                verified.require(item)
            out.append(parse_recipient(record.recipient))
        else:
            raise InvalidName(
                f"{item[:80]!r} is neither an age or SSH recipient (age1..., ssh-...) "
                "nor a key name."
            )
    return out


def _named_recipient(text: str) -> age.Recipient:
    """`parse_recipient`, with the recipient (shortened) named in its error, as age does:
    with several -r, "invalid characters" alone does not say which one is wrong."""
    try:
        return parse_recipient(text)
    except (age.ParseError, age.UnsupportedError) as e:
        shown = text if len(text) <= RECIPIENT_SHOWN else text[: RECIPIENT_SHOWN - 1] + "…"
        reason = str(e)
        reason = reason[:1].lower() + reason[1:]
        raise type(e)(f"Recipient {shown!r} is not usable: {reason}") from None


class Unwrapper(Protocol):
    """What `unwrap` tries keys on: an `age.Decryptor`, or UnwrapFileKey's bare stanzas
    (unwrap.py)."""

    @property
    def stanza_types(self) -> frozenset[str]: ...

    @property
    def stanzas(self) -> Sequence[Any]: ...

    def unwrap(self, identities: Sequence[age.Identity]) -> age.Identity: ...

    def opens(self, identity: age.Identity) -> bool: ...


def _no_key_restricted(name: str) -> bool:
    return False


class Deferred(Exception):
    """`unwrap` tried its ``limit`` of keys and more remain (the rest goes to a worker)."""


#: The keys `unwrap` tried, in order, each with the refusal its per-key policy gave (None:
#: not refused). Handed from the loop's first trials to the worker's, which skips them.
Tried = dict[str, AccessDenied | None]


def unwrap(
    dec: Unwrapper,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    *,
    pin: str | None = None,
    passphrase: str | None = None,
    restricted: Callable[[str], bool] = _no_key_restricted,
    permit: Callable[[str], None] | None = None,
    tried: Tried | None = None,
    limit: int | None = None,
) -> str:
    """Unwrap ``dec``'s file key; returns the key name that opened it ("" for a passphrase).

    Per-key policy: keys for which ``restricted`` is true are tried after the others, and
    one that opens the file is used only if ``permit(name)`` (which may ask a person, so it
    runs with no identity in hand) does not raise AccessDenied; else the next key is tried.

    Keys already in ``tried`` are skipped (each one tried is added); with ``limit``,
    `Deferred` is raised before trying more than that many.
    """
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
        if not age.may_open(record.key_type, record.recipient, dec.stanzas):
            raise NoMatch(f"Key {pin!r} does not match this file.")
    tried = {} if tried is None else tried
    for name in _candidates(dec, cache, records, pin, restricted):
        if name in tried:
            continue
        if limit is not None and len(tried) >= limit:
            raise Deferred()
        tried[name] = None
        # One key at a time: each identity exists (and is wiped) within its own `use`.
        try:
            if permit is not None and restricted(name):
                with cache.use(name) as identity:
                    opens = dec.opens(identity)
                if not opens:
                    continue
                try:
                    permit(name)
                except AccessDenied as exc:
                    exc.key = name  # the audit names the key that was refused
                    tried[name] = exc
                    continue
            with cache.use(name) as identity:
                dec.unwrap([identity])
        except Locked:  # locked, or expired since we looked: named in the answer below
            del tried[name]
            continue
        except age.NoMatchError:
            continue
        return name
    # The failure path alone looks at every stored key: which locked ones could open it.
    names = [pin] if pin is not None else records
    locked = sorted(n for n in names if n not in tried and _may_open(records.get(n), dec))
    if locked:
        raise Locked.for_keys(locked)
    denied = next((exc for exc in tried.values() if exc is not None), None)
    if denied is not None:
        raise denied
    if pin is not None:
        raise NoMatch(f"Key {pin!r} does not match this file.")
    raise NoMatch()


def _candidates(
    dec: Unwrapper,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    pin: str | None,
    restricted: Callable[[str], bool],
) -> Iterator[str]:
    """The keys to try, lazily: the unlocked ones that may open ``dec`` (kept sorted by the
    cache, so no stored key is looked at), unrestricted first, each group by name."""
    if pin is not None:
        yield pin
        return
    later: list[str] = []
    for name in cache.unlocked_names():
        if not _may_open(records.get(name), dec):
            continue
        if restricted(name):
            later.append(name)
        else:
            yield name
    yield from later


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
        keys = self.keys
        return resolve_recipients(items, keys.records, passphrase, self.work_factor, keys.verified)

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
    ) -> tuple[memoryview, str]:
        """The plaintext and the key that opened it; with ``askpass`` a locked candidate is
        unlocked at the desktop and the file tried again (the data is all here). The
        plaintext is a view of a buffer of the agent's own: the caller wipes it once the
        reply is sent (`Reply.wipe`)."""
        _check_size(ciphertext, ciphertext_limit(self.max_payload))
        attempt = functools.partial(self._decrypt, ciphertext, pin, passphrase, pid)
        name, plaintext = await retry_after_askpass(self.keys, askpass, pid, attempt)
        return plaintext, name

    async def _decrypt(
        self, ciphertext: bytes, pin: str | None, passphrase: str | None, pid: int
    ) -> tuple[str, memoryview]:
        keys, user = self.keys, self.keys.user
        limit = 0
        # A confirmation dialog may wait for minutes: never on the event loop.
        if runs_inline(len(ciphertext), passphrase) and not policy.may_prompt(user):
            dec = age.Decryptor(ciphertext)
            # Hundreds of bogus stanzas x several keys must not hold the loop either.
            limit = inline_keys(dec)
        else:
            dec = await keys.work.blocking(age.Decryptor, ciphertext)

        return await loop_then_pool(
            keys,
            limit,
            _finish_decrypt,
            dec=dec,
            cache=keys.cache,
            pin=pin,
            passphrase=passphrase,
            user=user,
            pid=pid,
            size=len(ciphertext),
        )

    def encrypt_job(
        self, recipients: Sequence[str], *, armor: bool, passphrase: str | None
    ) -> BindFds:
        """Check the call now; the job that streams ``input`` to ``output`` encrypted."""
        targets = self.recipients(recipients, passphrase)

        def bind(input_: int, output: int) -> StreamJob:
            def job(cancel: threading.Event) -> int:
                src, dst = _io(FdSource(input_, cancel)), _io(FdSink(output, cancel))
                return age.encrypt(targets, src, dst, armor=armor, output=ParallelRun)

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
                rules = key_rules(pid, user)
                try:
                    name = unwrap(dec, cache, records, pin=pin, passphrase=passphrase, **rules)
                except Locked as exc:
                    if not askpass or not exc.names:
                        raise
                    # The header is read and the input cannot rewind: unlock (on the loop),
                    # then unwrap again with the same decryptor.
                    unlock = keys.unlock_by_askpass(exc.names[0], pid)
                    _wait(asyncio.run_coroutine_threadsafe(unlock, loop), cancel)
                    name = unwrap(dec, cache, records, pin=pin, passphrase=passphrase, **rules)
                sink = _io(FdSink(output, cancel))
                return name, dec.decrypt_to(sink, output=ParallelRun)

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


class KeyRules(TypedDict):
    restricted: Callable[[str], bool]
    permit: Callable[[str], None]


def key_rules(pid: int, user: UserConfig, via: str = "") -> KeyRules:
    """Per-key policy for `unwrap`: checked for a key that opens the file, before any
    plaintext (may ask; blocks); a refused key makes unwrap try the next one. ``via``: a
    program acting for the caller (age-plugin-keyagent), named in a question."""

    def restricted(name: str) -> bool:
        return policy.is_restricted(name, user)

    def permit(name: str) -> None:
        policy.check(name, pid, user, operation="decrypt", via=via)

    # No per-key policy at all (the usual config): no key is restricted, and asking costs
    # one call per key tried, not three.
    return {"restricted": restricted if user.keys else _no_key_restricted, "permit": permit}


def inline_keys(dec: Unwrapper) -> int:
    """How many keys a small call may try on the event loop: (stanza, key) trials at most
    `INLINE_MAX_TRIALS` (0: hundreds of stanzas, try none there)."""
    return INLINE_MAX_TRIALS // max(1, len(dec.stanzas))


def _may_open(record: KeyRecord | None, dec: Unwrapper) -> bool:
    return record is not None and age.may_open(record.key_type, record.recipient, dec.stanzas)


async def retry_after_askpass(
    keys: Keys, askpass: bool, pid: int, attempt: Callable[[], Awaitable[T]]
) -> T:
    """``attempt()``; with ``askpass``, a `Locked` answer has the first locked candidate
    unlocked at the desktop, then one more ``attempt()`` (the data is all in hand)."""
    try:
        return await attempt()
    except Locked as exc:
        if not askpass or not exc.names:
            raise
        await keys.unlock_by_askpass(exc.names[0], pid)
        return await attempt()


async def loop_then_pool(keys: Keys, limit: int, trial: Callable[..., T], **kwargs: Any) -> T:
    """Run a key ``trial`` (`_finish_decrypt`, `unwrap.unwrap_file_key`: it takes ``records``,
    ``tried`` and ``limit`` besides ``kwargs``) on the event loop for its first ``limit`` keys
    (0: none); if keys remain, in the pool, skipping the keys already tried, on a copy of the
    records (a worker must not see them change under it)."""
    tried: Tried = {}
    if limit:
        try:
            return trial(records=keys.records, tried=tried, limit=limit, **kwargs)
        except Deferred:
            pass
    return await keys.work.blocking(trial, records=dict(keys.records), tried=tried, **kwargs)


def _finish_decrypt(
    dec: age.Decryptor,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    pin: str | None,
    passphrase: str | None,
    user: UserConfig,
    pid: int,
    size: int,
    tried: Tried | None = None,
    limit: int | None = None,
) -> tuple[str, memoryview]:
    """The key's name and the plaintext, in a buffer of the agent's own that the caller
    wipes once the reply is sent (a failed decryption wipes it here). ``tried``/``limit``:
    as `unwrap`'s."""
    rules = key_rules(pid, user)
    name = unwrap(
        dec, cache, records, pin=pin, passphrase=passphrase, tried=tried, limit=limit, **rules
    )
    out = PlainBuffer(size)  # the plaintext is never longer than the file
    try:  # decrypted in place, no chunk buffer
        n = dec.decrypt_to(_io(out), output=functools.partial(IntoRun, into=out.view(size)))
    except BaseException:
        wipe(out.buf)
        raise
    return name, out.view(n)
