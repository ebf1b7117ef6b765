"""Key objects: /org/example/KeyAgent/keys/<name>, interface org.example.KeyAgent.Key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
    DBusUnixFd,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from keyagent.protocol import KEY_INTERFACE, BadPassphrase, InvalidArgs, key_path
from keyagentd import age
from keyagentd.bus import options as opts
from keyagentd.bus.dbustypes import Void
from keyagentd.bus.fdpeer import check_fd_peers
from keyagentd.bus.gate import CURRENT_CALLER
from keyagentd.bus.oplog import operation, sync_operation
from keyagentd.bus.secretfds import read_passphrase, secret_arg, write_output
from keyagentd.bus.streams import close_fds
from keyagentd.keystore import KeyRecord
from keyagentd.secrets import wipe

if TYPE_CHECKING:
    from keyagentd.bus.service import Agent

#: Unlock also takes ``askpass`` (b): the agent asks at the desktop (passphrase "").
UNLOCK_OPTIONS: Final = {**opts.UNLOCK, "askpass": "b", "passphrase-fd": "h"}


class KeyObject(ServiceInterface):
    """One stored key; `Locked` and friends reflect the agent's cache."""

    def __init__(self, agent: Agent, record: KeyRecord) -> None:
        super().__init__(KEY_INTERFACE)
        self.agent = agent
        self.record = record
        self.key_name = record.name
        self.path = key_path(record.name)

    # --- properties ----------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.record.name

    @dbus_property(access=PropertyAccess.READ)
    def Label(self) -> DBusStr:
        return self.record.label

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return self.record.key_type

    @dbus_property(access=PropertyAccess.READ)
    def Recipient(self) -> DBusStr:
        return self.record.recipient

    @dbus_property(access=PropertyAccess.READ)
    def Created(self) -> DBusUInt64:
        return max(0, self.record.created)

    @dbus_property(access=PropertyAccess.READ)
    def Locked(self) -> DBusBool:
        return not self.agent.cache.is_unlocked(self.key_name)

    @dbus_property(access=PropertyAccess.READ)
    def UnlockedUntil(self) -> DBusUInt64:
        return self.agent.cache.unlocked_until(self.key_name)

    @dbus_property(access=PropertyAccess.READ)
    def IdleTimeout(self) -> DBusUInt32:
        return self.agent.cache.timeouts(self.key_name)[0]

    @dbus_property(access=PropertyAccess.READ)
    def MaxTimeout(self) -> DBusUInt32:
        return self.agent.cache.timeouts(self.key_name)[1]

    def state(self) -> dict[str, object]:
        """The properties that change when the key locks or unlocks."""
        cache = self.agent.cache
        idle, maximum = cache.timeouts(self.key_name)
        return {
            "Locked": not cache.is_unlocked(self.key_name),
            "UnlockedUntil": cache.unlocked_until(self.key_name),
            "IdleTimeout": idle,
            "MaxTimeout": maximum,
        }

    # --- methods -------------------------------------------------------------------------

    @dbus_method()
    @operation("Unlock")
    async def Unlock(self, passphrase: DBusStr, options: DBusDict) -> Void:
        parsed = opts.parse(options, UNLOCK_OPTIONS)
        if parsed.flag("askpass"):
            if passphrase:
                raise InvalidArgs("Give a passphrase or the askpass option, not both.")
            caller = CURRENT_CALLER.get()
            pid = caller.pid if caller is not None and caller.pid is not None else 0
            await self.agent.unlock_by_askpass(self.key_name, parsed, pid)
            return
        passphrase = await secret_arg(self.agent, parsed, "passphrase", passphrase)
        await self.agent.unlock(self.key_name, passphrase, parsed)

    @dbus_method()
    @operation("UnlockFromFd")
    async def UnlockFromFd(self, fd: DBusUnixFd, options: DBusDict) -> Void:
        try:
            parsed = opts.parse(options, opts.UNLOCK)
            check_fd_peers([fd])
        except Exception:
            close_fds([fd])
            raise
        passphrase = await self.agent.read_fd(fd, read_passphrase)
        await self.agent.unlock(self.key_name, passphrase, parsed)

    @dbus_method()
    @sync_operation("Lock")
    def Lock(self) -> Void:
        self.agent.require(self.key_name)
        if self.agent.cache.lock(self.key_name):
            self.agent.key_changed(self.key_name)

    @dbus_method()
    @operation("ChangePassphrase")
    async def ChangePassphrase(self, old: DBusStr, new: DBusStr) -> Void:
        await self._change_passphrase(old, new)

    @dbus_method()
    @operation("ChangePassphrase")
    async def ChangePassphraseWithOptions(
        self, old: DBusStr, new: DBusStr, options: DBusDict
    ) -> Void:
        parsed = opts.parse(options, opts.CHANGE_PASSPHRASE)
        old = await secret_arg(self.agent, parsed, "old-passphrase", old)
        new = await secret_arg(self.agent, parsed, "new-passphrase", new)
        await self._change_passphrase(old, new)

    async def _change_passphrase(self, old: str, new: str) -> None:
        self.agent.require(self.key_name)
        if not new:  # checked first: a bad new passphrase is not a wrong guess of the old one
            raise BadPassphrase("The new passphrase must not be empty.")
        async with self.agent.limiter.attempt(self.key_name):
            await self.agent.blocking(self.agent.store.change_passphrase, self.key_name, old, new)

    @dbus_method()
    @operation("Export")
    async def Export(self, passphrase: DBusStr) -> DBusBytes:
        return await self._export(passphrase)

    @dbus_method()
    @operation("Export")
    async def ExportWithOptions(self, passphrase: DBusStr, options: DBusDict) -> DBusBytes:
        """Export; with ``output-fd`` the file goes there and the reply is empty."""
        parsed = opts.parse(options, opts.EXPORT)
        self.agent.require(self.key_name)
        passphrase = await secret_arg(self.agent, parsed, "passphrase", passphrase)
        data = await self._export(passphrase)
        if "output-fd" not in parsed:
            return data
        await write_output(self.agent, parsed, data)
        return b""

    async def _export(self, passphrase: str) -> bytes:
        record = self.agent.require(self.key_name)
        async with self.agent.limiter.attempt(self.key_name):
            seed = await self.agent.blocking(self.agent.store.unseal, self.key_name, passphrase)
        work_factor = self.agent.config.scrypt_work_factor
        return await self.agent.blocking(_export, record.key_type, seed, passphrase, work_factor)


def _export(key_type: str, seed: bytearray, passphrase: str, work_factor: int | None) -> bytes:
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
