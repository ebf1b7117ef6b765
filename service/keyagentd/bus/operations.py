"""The manager's operations (keys, Encrypt/Decrypt and their Fd streams), for methods.py.

Each takes the agent and the call's values; options are checked here (`opts.parse`).
Stream operations return a job factory: ``job(input_fd, output_fd)`` is what the stream
runner runs in a worker thread, once the handler took the fds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

from keyagent.protocol import (
    KEY_TYPE_X25519,
    KEY_TYPES,
    InvalidName,
    KeyExists,
    Locked,
    TooLarge,
    Unsupported,
    is_valid_key_name,
)
from keyagentd import age, policy
from keyagentd.bus import crypto
from keyagentd.bus import options as opts
from keyagentd.bus.streams import Cancelled, FdSink, FdSource
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.keystore import KeyRecord
from keyagentd.overlap import OverlappedOutput
from keyagentd.secrets import wipe

if TYPE_CHECKING:
    from keyagentd.bus.service import Agent

#: Decrypt and DecryptFd also take ``askpass`` (b): ask at the desktop for a locked key.
DECRYPT_OPTIONS: Final = {**opts.DECRYPT, "askpass": "b"}
#: How often a stream waiting for an askpass unlock looks at its cancel flag (seconds).
CANCEL_POLL: Final = 0.25

StreamJob = Callable[[threading.Event], Any]


def ciphertext_limit(max_payload: int) -> int:
    """Decrypt accepts what Encrypt makes of a payload at the cap: armor adds a third,
    chunk tags and the header a little more."""
    return max_payload * 3 // 2 + 64 * 1024


def check_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise InvalidName(f"Invalid key name {name[:80]!r}: use 1-64 letters, digits, '_' or '-'.")


# --- keys ----------------------------------------------------------------------------------


async def create_key(
    agent: Agent, name: str, passphrase: str, options: Mapping[str, Any]
) -> tuple[str, str]:
    parsed = opts.parse(options, opts.CREATE_KEY)
    check_name(name)
    key_type = parsed.text("type", KEY_TYPE_X25519) or KEY_TYPE_X25519
    if key_type not in KEY_TYPES:
        raise Unsupported(f"Unknown key type {key_type!r}: use {' or '.join(KEY_TYPES)}.")
    _check_free(agent, name)
    record = await _seal_new_key(
        agent, name, age.generate_identity(key_type), passphrase, parsed.text("label", "")
    )
    return agent.key_added(record), record.recipient


async def import_key(
    agent: Agent, name: str, identity: str, passphrase: str, options: Mapping[str, Any]
) -> str:
    parsed = opts.parse(options, opts.IMPORT_KEY)
    check_name(name)
    _check_free(agent, name)
    record = await _seal_new_key(
        agent, name, age.parse_identity(identity), passphrase, parsed.text("label", "")
    )
    return agent.key_added(record)


async def delete_key(agent: Agent, name: str, options: Mapping[str, Any], pid: int) -> None:
    parsed = opts.parse(options, opts.DELETE_KEY)
    check_name(name)
    agent.require(name)
    passphrase = parsed.text("passphrase")
    if passphrase is not None:
        async with agent.limiter.attempt(name):
            seed = await agent.blocking(agent.store.unseal, name, passphrase)
        wipe(seed)
    elif not agent.cache.is_unlocked(name):
        raise Locked(
            f"Key '{name}' is locked: unlock it or give its passphrase to delete it.", (name,)
        )
    elif policy.is_restricted(name, agent.config.user):
        await agent.blocking(policy.check, name, pid, agent.config.user, operation="delete")
    await agent.blocking(agent.store.delete, name)
    agent.key_removed(name)


def _check_free(agent: Agent, name: str) -> None:
    if name in agent.records:
        raise KeyExists(f"A key named {name!r} already exists.")


async def _seal_new_key(
    agent: Agent,
    name: str,
    identity: age.X25519Identity | age.HybridIdentity,
    passphrase: str,
    label: str | None,
) -> KeyRecord:
    """Seal ``identity`` under ``passphrase`` as the new key ``name``, off the event loop.
    No reference to the identity is kept while the KDF runs: only a copy of its seed, which
    `_create` wipes. Callers pass the identity inline, so they hold none either."""
    key_type = identity.key_type
    seed = bytearray(identity.seed)
    recipient = identity.recipient().encode()
    del identity
    return await agent.blocking(_create, agent, name, key_type, seed, recipient, passphrase, label)


def _create(
    agent: Agent,
    name: str,
    key_type: str,
    seed: bytearray,
    recipient: str,
    passphrase: str,
    label: str | None,
) -> KeyRecord:
    try:
        return agent.store.create(name, key_type, seed, recipient, passphrase, label or "")
    finally:
        wipe(seed)


# --- data in messages ----------------------------------------------------------------------


async def encrypt(
    agent: Agent, recipients: list[str], plaintext: bytes, options: Mapping[str, Any]
) -> bytes:
    parsed = opts.parse(options, opts.ENCRYPT)
    _check_size(plaintext, agent.config.max_payload)
    targets = crypto.resolve_recipients(
        recipients, agent.records, parsed.text("passphrase"), agent.config.scrypt_work_factor
    )
    armor = parsed.flag("armor")
    if crypto.runs_inline(len(plaintext), parsed.text("passphrase")):
        return age.encrypt_bytes(targets, plaintext, armor=armor)
    return await agent.blocking(age.encrypt_bytes, targets, plaintext, armor=armor)


async def decrypt(
    agent: Agent, ciphertext: bytes, options: Mapping[str, Any], pid: int
) -> tuple[bytes, str]:
    parsed = opts.parse(options, DECRYPT_OPTIONS)
    _check_size(ciphertext, ciphertext_limit(agent.config.max_payload))
    try:
        name, plaintext = await _decrypt(agent, ciphertext, parsed, pid)
    except Locked as exc:
        if not parsed.flag("askpass") or not exc.names:
            raise
        # Ask for the first candidate, then try again: the data is all here.
        await agent.unlock_by_askpass(exc.names[0], opts.Options({}), pid)
        name, plaintext = await _decrypt(agent, ciphertext, parsed, pid)
    return plaintext, name


async def _decrypt(
    agent: Agent, ciphertext: bytes, parsed: opts.Options, pid: int
) -> tuple[str, bytes]:
    args = (
        ciphertext,
        agent.cache,
        dict(agent.records),
        parsed.text("key"),
        parsed.text("passphrase"),
        agent.config.user,
        pid,
    )
    inline = crypto.runs_inline(len(ciphertext), args[4], agent.cache)
    # A confirmation dialog may wait for minutes: never on the event loop.
    if inline and not policy.may_prompt(agent.config.user):
        return _decrypt_bytes(*args)
    return await agent.blocking(_decrypt_bytes, *args)


def _check_size(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise TooLarge(
            f"The data is larger than {limit} bytes: use EncryptFd/DecryptFd for big files."
        )


# --- streams -------------------------------------------------------------------------------


def encrypt_fd_job(
    agent: Agent, recipients: list[str], options: Mapping[str, Any]
) -> Callable[[int, int], StreamJob]:
    """Check the call; the job that streams ``input`` to ``output`` encrypted."""
    parsed = opts.parse(options, opts.ENCRYPT)
    targets = crypto.resolve_recipients(
        recipients, agent.records, parsed.text("passphrase"), agent.config.scrypt_work_factor
    )
    armor = parsed.flag("armor")

    def bind(input_: int, output: int) -> StreamJob:
        def job(cancel: threading.Event) -> int:
            src, dst = FdSource(input_, cancel), FdSink(output, cancel)
            return age.encrypt(targets, _io(src), _io(dst), armor=armor, output=OverlappedOutput)

        return job

    return bind


def decrypt_fd_job(
    agent: Agent, options: Mapping[str, Any], pid: int
) -> Callable[[int, int], StreamJob]:
    """Check the call; the job that streams ``input`` to ``output`` decrypted."""
    parsed = opts.parse(options, DECRYPT_OPTIONS)
    cache, records = agent.cache, dict(agent.records)
    pin, passphrase = parsed.text("key"), parsed.text("passphrase")
    user, ask, loop = agent.config.user, parsed.flag("askpass"), asyncio.get_running_loop()

    def bind(input_: int, output: int) -> StreamJob:
        def job(cancel: threading.Event) -> tuple[str, int]:
            dec = age.Decryptor(_io(FdSource(input_, cancel)))
            try:
                name = crypto.unwrap(dec, cache, records, pin=pin, passphrase=passphrase)
            except Locked as exc:
                if not ask or not exc.names:
                    raise
                # The header is read and the input cannot rewind: unlock (on the loop),
                # then unwrap again with the same decryptor.
                unlock = agent.unlock_by_askpass(exc.names[0], opts.Options({}), pid)
                _wait(asyncio.run_coroutine_threadsafe(unlock, loop), cancel)
                name = crypto.unwrap(dec, cache, records, pin=pin, passphrase=passphrase)
            _check_policy(name, pid, user)
            sink = _io(FdSink(output, cancel))
            return name, dec.decrypt_to(sink, output=OverlappedOutput)

        return job

    return bind


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
        policy.check(name, pid, user, operation="decrypt")


def _decrypt_bytes(
    data: bytes,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    pin: str | None,
    passphrase: str | None,
    user: UserConfig,
    pid: int,
) -> tuple[str, bytes]:
    dec = age.Decryptor(io.BytesIO(data))
    name = crypto.unwrap(dec, cache, records, pin=pin, passphrase=passphrase)
    _check_policy(name, pid, user)
    out = io.BytesIO()
    dec.decrypt_to(out)
    return name, out.getvalue()
