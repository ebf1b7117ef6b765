"""The agent's keys: what is stored, what is unlocked, and every change to either.

No D-Bus here. `Keys` owns the records read from the keystore, the cache of unlocked keys,
the failure limiter and the expiry timer; whoever shows keys to the world (the bus objects)
listens through `KeyEvents`. Slow work (Argon2, disk) runs in `Work`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from keyagent.protocol import (
    BadPassphrase,
    Failed,
    InvalidArgs,
    InvalidName,
    KeyExists,
    Locked,
    NoSuchKey,
    is_valid_key_name,
)
from keyagentd import age, askpass, policy
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.failcounts import FailureFiles
from keyagentd.keystore import KeyRecord, KeyStore
from keyagentd.ratelimit import FailureLimiter
from keyagentd.recipients import VerifiedRecipients
from keyagentd.secrets import wipe
from keyagentd.work import Work

log = logging.getLogger("keyagentd.bus.service")  # these messages were always the service's

#: An askpass unlock asks again after a wrong passphrase, like a terminal prompt.
ASKPASS_TRIES: Final = 3


class KeyEvents(Protocol):
    """What `Keys` tells its listener (the bus objects)."""

    def added(self, record: KeyRecord) -> None: ...
    def removed(self, name: str) -> None: ...
    def changed(self, name: str) -> None:
        """Locked or unlocked (by a call, a timeout or a desktop trigger)."""


def check_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise InvalidName(f"Invalid key name {name[:80]!r}: use 1-64 letters, digits, '_' or '-'.")


class Keys:
    def __init__(
        self, store: KeyStore, cache: KeyCache, user: UserConfig, work: Work, events: KeyEvents
    ) -> None:
        self.store = store
        self.cache = cache
        self.user = user
        self.work = work
        self.events = events
        # Counters next to the key files: a restart (anyone of the user can kill the agent)
        # does not forget a lock-out; their fsyncing writes run in the pool.
        self.limiter = FailureLimiter(store=FailureFiles(store.root), offload=work.blocking)
        self.records: dict[str, KeyRecord] = {}
        #: Key names whose recipient this process derived from the identity (recipients.py).
        self.verified = VerifiedRecipients()
        self._expiry: asyncio.TimerHandle | None = None

    def load(self) -> list[KeyRecord]:
        """Read the keystore (creating its directory); the records found."""
        self.store.prepare()
        for record in self.store.list():
            self.records[record.name] = record
        return list(self.records.values())

    def require(self, name: str) -> KeyRecord:
        record = self.records.get(name)
        if record is None:
            raise NoSuchKey(f"There is no key named {name!r}.")
        return record

    # --- creating and deleting -------------------------------------------------------------

    def check_new(self, name: str) -> None:
        """``name`` is valid and free (before any slow work for a new key)."""
        check_name(name)
        if name in self.records:
            raise KeyExists(f"A key named {name!r} already exists.")

    async def create(
        self,
        name: str,
        identity: age.AnyIdentity,
        passphrase: str,
        label: str,
    ) -> KeyRecord:
        """Seal ``identity`` under ``passphrase`` as the new key ``name``, off the event loop.
        No reference to the identity is kept while the KDF runs: only a copy of its seed,
        which `_create` wipes. Callers pass the identity inline, so they hold none either."""
        self.check_new(name)
        key_type = identity.key_type
        seed = bytearray(identity.seed)
        recipient = identity.recipient().encode()
        del identity
        record = await self.work.blocking(
            _create, self.store, name, key_type, seed, recipient, passphrase, label
        )
        self.records[name] = record
        self.verified.mark(name)  # created or imported here: derived from the identity
        self.events.added(record)
        return record

    async def delete(self, name: str, passphrase: str | None, pid: int) -> None:
        """Delete ``name``: it must be unlocked (and pass its policy) or ``passphrase`` given."""
        check_name(name)
        self.require(name)
        if passphrase is not None:
            async with self.limiter.attempt(name):
                seed = await self.work.blocking(self.store.unseal, name, passphrase)
            wipe(seed)
        elif not self.cache.is_unlocked(name):
            raise Locked(
                f"Key '{name}' is locked: unlock it or give its passphrase to delete it.", (name,)
            )
        elif policy.is_restricted(name, self.user):
            await self.work.blocking(policy.check, name, pid, self.user, operation="delete")

        await self.work.blocking(self.store.delete, name)
        self.cache.forget(name)
        self.limiter.forget(name)
        self.verified.forget(name)
        self.records.pop(name, None)
        self.events.removed(name)
        self._schedule_expiry()

    async def change_passphrase(self, name: str, old: str, new: str) -> None:
        self.require(name)
        if not new:  # checked first: a bad new passphrase is not a wrong guess of the old one
            raise BadPassphrase("The new passphrase must not be empty.")
        async with self.limiter.attempt(name):
            await self.work.blocking(self.store.change_passphrase, name, old, new)

    async def export(self, name: str, passphrase: str, work_factor: int | None) -> bytes:
        """The identity as an armored age file encrypted to its own passphrase (scrypt)."""
        record = self.require(name)
        async with self.limiter.attempt(name):
            seed = await self.work.blocking(self.store.unseal, name, passphrase)
        return await self.work.blocking(
            export_identity, record.key_type, seed, passphrase, work_factor
        )

    # --- locking and unlocking -------------------------------------------------------------

    async def unlock(
        self, name: str, passphrase: str, idle: int | None = None, maximum: int | None = None
    ) -> None:
        record = self.require(name)
        key_idle, key_max = self.user.timeouts_for(name)
        idle = key_idle if idle is None else idle
        maximum = key_max if maximum is None else maximum
        for value, what in ((idle, "idle-timeout"), (maximum, "max-timeout")):
            if value is not None and value < 1:
                raise InvalidArgs(f"The {what} option must be at least 1 second.")
        async with self.limiter.attempt(name):
            seed = await self.work.blocking(self.store.unseal, name, passphrase)
        if name not in self.records:  # deleted meanwhile
            wipe(seed)
            raise NoSuchKey(f"There is no key named {name!r}.")
        self.cache.unlock(name, record.key_type, seed, idle, maximum)
        try:
            self.verified.verify(self.cache, name, record.recipient)  # locks it on a mismatch
        finally:
            self._changed(name)

    async def unlock_by_askpass(
        self, name: str, pid: int, idle: int | None = None, maximum: int | None = None
    ) -> None:
        """Ask the person at the desktop for ``name``'s passphrase (askpass.py) and unlock.

        Up to ``ASKPASS_TRIES`` dialogs; each wrong passphrase counts in the rate limiter.
        Cancel or timeout: BadPassphrase; no askpass program at all: Failed.
        """
        self.require(name)
        self.limiter.check(name)  # a locked-out key does not bother the person
        if askpass.find_askpass(self.user.askpass) is None:
            raise Failed(
                f"Key '{name}' is locked and there is no askpass program to ask for its "
                f"passphrase: run 'keyagent unlock {name}' on a terminal, or set "
                "$KEYAGENT_ASKPASS or askpass in config.toml."
            )
        retry = False
        for attempt in range(ASKPASS_TRIES):
            passphrase = await self.work.dialog(_ask_unlock, name, pid, self.user.askpass, retry)
            if passphrase is None:
                raise BadPassphrase(
                    f"No passphrase was entered for key '{name}': "
                    "the prompt was cancelled or timed out."
                )
            try:
                await self.unlock(name, passphrase, idle, maximum)
                return
            except BadPassphrase:
                if attempt == ASKPASS_TRIES - 1:
                    raise
            retry = True

    def lock(self, name: str) -> None:
        self.require(name)
        if self.cache.lock(name):
            self._changed(name)

    def lock_all(self, reason: str = "LockAll") -> list[str]:
        """Wipe every unlocked key (LockAll, or a desktop lock trigger); the names locked."""
        names = self.cache.lock_all()
        if names:
            log.info("locked %s (%s)", ", ".join(names), reason)
        for name in names:
            self._changed(name)
        return names

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.cache.lock_all()

    # --- the expiry timer ------------------------------------------------------------------

    def _changed(self, name: str) -> None:
        self.events.changed(name)
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self.cache.next_deadline()  # time.monotonic(), the loop's clock too
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(deadline + 0.01, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        for name in self.cache.expire_due():
            log.info("key %s locked: its timeout passed", name)
            self.events.changed(name)
        self._schedule_expiry()


def _create(
    store: KeyStore,
    name: str,
    key_type: str,
    seed: bytearray,
    recipient: str,
    passphrase: str,
    label: str,
) -> KeyRecord:
    try:
        return store.create(name, key_type, seed, recipient, passphrase, label)
    finally:
        wipe(seed)


def _ask_unlock(name: str, pid: int, program: str | None, retry: bool) -> str | None:
    # In the dialog thread: unlock_prompt reads /proc, the dialog waits for a person.
    prompt = askpass.unlock_prompt(name, pid)
    if retry:
        prompt += " (wrong passphrase: try again)"
    return askpass.ask_passphrase(prompt, config_askpass=program, key_name=name)


def export_identity(
    key_type: str, seed: bytearray, passphrase: str, work_factor: int | None
) -> bytes:
    """The identity as an armored age file encrypted to ``passphrase`` (scrypt)."""
    try:
        identity = age.identity_from_seed(key_type, seed)
        # The identity string is an immutable str for a moment: unavoidable, never logged.
        text = bytearray(identity.encode().encode("ascii") + b"\n")
    finally:
        wipe(seed)
    try:
        recipient = age.ScryptRecipient(passphrase, work_factor)
        return age.encrypt_bytes([recipient], bytes(text), armor=True)
    finally:
        wipe(text)
