"""The manager object: /org/example/KeyAgent, interface org.example.KeyAgent."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, BinaryIO, TypedDict, cast

from dbus_fast.annotations import (
    DBusBytes,
    DBusDict,
    DBusSignature,
    DBusStr,
    DBusUInt64,
    DBusUnixFd,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

import keyagentd
from keyagent.protocol import (
    KEY_TYPE_X25519,
    KEY_TYPES,
    MANAGER_INTERFACE,
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
from keyagentd.bus.dbustypes import (
    DBusPathList,
    DBusStrList,
    KeyAndCount,
    KeyAndRecipient,
    PlainAndKey,
    Void,
)
from keyagentd.bus.fdpeer import check_fd_peers
from keyagentd.bus.gate import CURRENT_CALLER, current_sender
from keyagentd.bus.oplog import note_key, operation, sync_operation
from keyagentd.bus.secretfds import secret_arg, secret_option
from keyagentd.bus.streams import Cancelled, FdSink, FdSource, close_fds
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.keystore import KeyRecord
from keyagentd.secrets import PlainBuffer, wipe, wipe_after_reply

if TYPE_CHECKING:
    from keyagentd.bus.service import Agent

#: Decrypt and DecryptFd also take ``askpass`` (b): ask at the desktop for a locked key.
DECRYPT_OPTIONS = {**opts.DECRYPT, "askpass": "b"}
#: How often a stream waiting for an askpass unlock looks at its cancel flag (seconds).
CANCEL_POLL = 0.25


def ciphertext_limit(max_payload: int) -> int:
    """Decrypt accepts what Encrypt makes of a payload at the cap: armor adds a third,
    chunk tags and the header a little more."""
    return max_payload * 3 // 2 + 64 * 1024


def _check_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise InvalidName(f"Invalid key name {name[:80]!r}: use 1-64 letters, digits, '_' or '-'.")


class Manager(ServiceInterface):
    def __init__(self, agent: Agent) -> None:
        super().__init__(MANAGER_INTERFACE)
        self.agent = agent

    # --- properties ----------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Keys(self) -> DBusPathList:
        return self.agent.key_paths()

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return keyagentd.__version__

    # --- signals -------------------------------------------------------------------------

    @dbus_signal()
    def AccessLog(
        self, operation: str, key: str, pid: int, executable: str, result: str
    ) -> Annotated[tuple[str, str, int, str, str], DBusSignature("ssuss")]:
        return (operation, key, pid, executable, result)

    def emit_access(self, record: policy.AccessRecord) -> None:
        """Send one access record (accesslog.py) as the AccessLog signal."""
        self.AccessLog(record.operation, record.key, record.pid, record.executable, record.result)

    # --- keys ----------------------------------------------------------------------------

    @dbus_method()
    @operation("CreateKey")
    async def CreateKey(
        self, name: DBusStr, passphrase: DBusStr, options: DBusDict
    ) -> KeyAndRecipient:
        note_key(name[:64])
        parsed = opts.parse(options, opts.CREATE_KEY)
        _check_name(name)
        key_type = parsed.text("type", KEY_TYPE_X25519) or KEY_TYPE_X25519
        if key_type not in KEY_TYPES:
            raise Unsupported(f"Unknown key type {key_type!r}: use {' or '.join(KEY_TYPES)}.")
        self._check_free(name)
        passphrase = await secret_arg(self.agent, parsed, "passphrase", passphrase)
        record = await self._seal_new_key(
            name, age.generate_identity(key_type), passphrase, parsed.text("label", "")
        )
        path = self.agent.key_added(record)
        return (path, record.recipient)

    @dbus_method()
    @operation("ImportKey")
    async def ImportKey(
        self, name: DBusStr, identity: DBusStr, passphrase: DBusStr, options: DBusDict
    ) -> Annotated[str, DBusSignature("o")]:
        note_key(name[:64])
        parsed = opts.parse(options, opts.IMPORT_KEY)
        _check_name(name)
        self._check_free(name)
        identity = await secret_arg(self.agent, parsed, "identity", identity)
        passphrase = await secret_arg(self.agent, parsed, "passphrase", passphrase)
        record = await self._seal_new_key(
            name, age.parse_identity(identity), passphrase, parsed.text("label", "")
        )
        return self.agent.key_added(record)

    @dbus_method()
    @operation("DeleteKey")
    async def DeleteKey(self, name: DBusStr, options: DBusDict) -> Void:
        note_key(name[:64])
        parsed = opts.parse(options, opts.DELETE_KEY)
        _check_name(name)
        self.agent.require(name)
        passphrase = await secret_option(self.agent, parsed, "passphrase")
        if passphrase is not None:
            async with self.agent.limiter.attempt(name):
                seed = await self.agent.blocking(self.agent.store.unseal, name, passphrase)
            wipe(seed)
        elif not self.agent.cache.is_unlocked(name):
            raise Locked(
                f"Key '{name}' is locked: unlock it or give its passphrase to delete it.", (name,)
            )
        elif policy.is_restricted(name, self.agent.config.user):
            await self.agent.blocking(
                policy.check, name, _caller_pid(), self.agent.config.user, operation="delete"
            )
        await self.agent.blocking(self.agent.store.delete, name)
        self.agent.key_removed(name)

    @dbus_method()
    @sync_operation("LockAll")
    def LockAll(self) -> Void:
        self.agent.lock_all()

    def _check_free(self, name: str) -> None:
        if name in self.agent.records:
            raise KeyExists(f"A key named {name!r} already exists.")

    async def _seal_new_key(
        self,
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
        return await self.agent.blocking(
            _create, self.agent, name, key_type, seed, recipient, passphrase, label
        )

    # --- data in messages ----------------------------------------------------------------

    @dbus_method()
    @operation("Encrypt")
    async def Encrypt(
        self, recipients: DBusStrList, plaintext: DBusBytes, options: DBusDict
    ) -> DBusBytes:
        parsed = opts.parse(options, opts.ENCRYPT)
        self._check_size(plaintext)
        passphrase = await secret_option(self.agent, parsed, "passphrase")
        targets = crypto.resolve_recipients(
            recipients,
            self.agent.records,
            passphrase,
            self.agent.config.scrypt_work_factor,
            self.agent.verified,
        )
        note_key(",".join(r for r in recipients if r in self.agent.records))
        armor = parsed.flag("armor")
        if crypto.runs_inline(len(plaintext), passphrase):
            return age.encrypt_bytes(targets, plaintext, armor=armor)
        return await self.agent.blocking(age.encrypt_bytes, targets, plaintext, armor=armor)

    @dbus_method()
    @operation("Decrypt")
    async def Decrypt(self, ciphertext: DBusBytes, options: DBusDict) -> PlainAndKey:
        parsed = opts.parse(options, DECRYPT_OPTIONS)
        self._check_size(ciphertext, ciphertext_limit(self.agent.config.max_payload))
        passphrase = await secret_option(self.agent, parsed, "passphrase")
        try:
            name, plaintext = await self._decrypt(ciphertext, parsed, passphrase)
        except Locked as exc:
            if not parsed.flag("askpass") or not exc.names:
                raise
            # Ask for the first candidate, then try again: the data is all here.
            note_key(exc.names[0])
            await self.agent.unlock_by_askpass(exc.names[0], opts.Options({}), _caller_pid())
            name, plaintext = await self._decrypt(ciphertext, parsed, passphrase)
        note_key(name)
        wipe_after_reply(cast(bytearray, plaintext.obj))
        return (cast(bytes, plaintext), name)  # dbus-fast marshals any buffer as `ay`

    async def _decrypt(
        self, ciphertext: bytes, parsed: opts.Options, passphrase: str | None
    ) -> tuple[str, memoryview]:
        args = (
            ciphertext,
            self.agent.cache,
            dict(self.agent.records),
            parsed.text("key"),
            passphrase,
            self.agent.config.user,
            _caller_pid(),
        )
        inline = crypto.runs_inline(len(ciphertext), args[4], self.agent.cache)
        # A confirmation dialog may wait for minutes: never on the event loop.
        if inline and not policy.may_prompt(self.agent.config.user):
            return _decrypt_bytes(*args)
        return await self.agent.blocking(_decrypt_bytes, *args)

    def _check_size(self, data: bytes, limit: int | None = None) -> None:
        limit = self.agent.config.max_payload if limit is None else limit
        if len(data) > limit:
            raise TooLarge(
                f"The data is larger than {limit} bytes: use EncryptFd/DecryptFd for big files."
            )

    # --- streams -------------------------------------------------------------------------

    @dbus_method()
    @operation("EncryptFd")
    async def EncryptFd(
        self, recipients: DBusStrList, input: DBusUnixFd, output: DBusUnixFd, options: DBusDict
    ) -> DBusUInt64:
        fds = [input, output]
        try:
            parsed = opts.parse(options, opts.ENCRYPT)
            passphrase = await secret_option(self.agent, parsed, "passphrase")
            targets = crypto.resolve_recipients(
                recipients,
                self.agent.records,
                passphrase,
                self.agent.config.scrypt_work_factor,
                self.agent.verified,
            )
            check_fd_peers(fds)
        except Exception:
            close_fds(fds)
            raise
        armor = parsed.flag("armor")

        def job(cancel: threading.Event) -> int:
            src, dst = FdSource(input, cancel), FdSink(output, cancel)
            return age.encrypt(targets, _io(src), _io(dst), armor=armor, overlap=True)

        return await self.agent.stream(current_sender(), fds, job)

    @dbus_method()
    @operation("DecryptFd")
    async def DecryptFd(
        self, input: DBusUnixFd, output: DBusUnixFd, options: DBusDict
    ) -> KeyAndCount:
        fds = [input, output]
        try:
            parsed = opts.parse(options, DECRYPT_OPTIONS)
            check_fd_peers(fds)
            passphrase = await secret_option(self.agent, parsed, "passphrase")
        except Exception:
            close_fds(fds)
            raise
        cache, records = self.agent.cache, dict(self.agent.records)
        pin = parsed.text("key")
        user, pid = self.agent.config.user, _caller_pid()
        agent, ask, loop = self.agent, parsed.flag("askpass"), asyncio.get_running_loop()

        def job(cancel: threading.Event) -> tuple[str, int]:
            dec = age.Decryptor(_io(FdSource(input, cancel)))
            rules = _key_rules(pid, user)
            try:
                name = crypto.unwrap(dec, cache, records, pin=pin, passphrase=passphrase, **rules)
            except Locked as exc:
                if not ask or not exc.names:
                    raise
                # The header is read and the input cannot rewind: unlock (on the loop), then
                # unwrap again with the same decryptor.
                unlock = agent.unlock_by_askpass(exc.names[0], opts.Options({}), pid)
                _wait(asyncio.run_coroutine_threadsafe(unlock, loop), cancel)
                name = crypto.unwrap(dec, cache, records, pin=pin, passphrase=passphrase, **rules)
            return name, dec.decrypt_to(_io(FdSink(output, cancel)), overlap=True)

        name, written = await self.agent.stream(current_sender(), fds, job)
        note_key(name)
        return (name, written)


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


def _caller_pid() -> int:
    caller = CURRENT_CALLER.get()
    return caller.pid if caller is not None and caller.pid is not None else 0


class _KeyRules(TypedDict):
    restricted: Callable[[str], bool]
    permit: Callable[[str], None]


def _key_rules(pid: int, user: UserConfig) -> _KeyRules:
    """Per-key policy for `crypto.unwrap`: checked for a key that opens the file, before any
    plaintext (may ask; blocks); a refused key makes unwrap try the next one."""

    def restricted(name: str) -> bool:
        return policy.is_restricted(name, user)

    def permit(name: str) -> None:
        policy.check(name, pid, user, operation="decrypt")

    return {"restricted": restricted, "permit": permit}


def _decrypt_bytes(
    data: bytes,
    cache: KeyCache,
    records: Mapping[str, KeyRecord],
    pin: str | None,
    passphrase: str | None,
    user: UserConfig,
    pid: int,
) -> tuple[str, memoryview]:
    """The key's name and the plaintext, in a buffer of the agent's own that the caller wipes
    once the reply is sent (a failed decryption wipes it here)."""
    dec = age.Decryptor(io.BytesIO(data))
    rules = _key_rules(pid, user)
    name = crypto.unwrap(dec, cache, records, pin=pin, passphrase=passphrase, **rules)
    out = PlainBuffer(len(data))  # the plaintext is never longer than the file
    try:
        dec.decrypt_to(_io(out))
    except BaseException:
        wipe(out.buf)
        raise
    return name, out.view()
