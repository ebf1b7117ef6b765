"""Key objects: /org/example/KeyAgent/keys/<name>, interface org.example.KeyAgent.Key."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusBool, DBusStr, DBusUInt32, DBusUInt64
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

from keyagent.protocol import KEY_INTERFACE, BadPassphrase, TooLarge, key_path
from keyagentd import age
from keyagentd.bus import options as opts
from keyagentd.bus.dispatch import Method
from keyagentd.bus.manager import with_methods
from keyagentd.bus.streams import FdSource
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord
from keyagentd.secrets import wipe

#: UnlockFromFd reads at most this much (a passphrase, not a file).
MAX_PASSPHRASE_BYTES: Final = 4096
PASSPHRASE_READ_TIMEOUT: Final = 30.0
#: Unlock also takes ``askpass`` (b): the agent asks at the desktop (passphrase "").
UNLOCK_OPTIONS: Final = {**opts.UNLOCK, "askpass": "b"}


def read_passphrase(fd: int, cancel: threading.Event) -> str:
    """The passphrase written to ``fd`` up to EOF, minus one trailing newline."""
    src = FdSource(fd, cancel, timeout=PASSPHRASE_READ_TIMEOUT)
    buf = bytearray(MAX_PASSPHRASE_BYTES + 1)
    view = memoryview(buf)
    try:
        total = 0
        while total < len(buf):
            n = src.readinto(view[total:])
            if n == 0:
                break
            total += n
        if total > MAX_PASSPHRASE_BYTES:
            raise TooLarge(f"A passphrase is at most {MAX_PASSPHRASE_BYTES} bytes.")
        end = total - 1 if total and buf[total - 1] == 0x0A else total
        try:
            return bytes(view[:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPassphrase("The passphrase is not valid UTF-8.") from None
    finally:
        view.release()
        wipe(buf)


class KeyObject(ServiceInterface):
    """One stored key: properties only, reflecting the cache. Its methods are answered by
    the dispatcher (dispatch.py, table in methods.py); `introspect` lists them."""

    def __init__(self, cache: KeyCache, record: KeyRecord, methods: Sequence[Method] = ()) -> None:
        super().__init__(KEY_INTERFACE)
        self.cache = cache
        self.record = record
        self.key_name = record.name
        self.path = key_path(record.name)
        self._methods = [m for m in methods if m.interface == KEY_INTERFACE]

    def introspect(self) -> intr.Interface:
        return with_methods(super().introspect(), self._methods)

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
        return not self.cache.is_unlocked(self.key_name)

    @dbus_property(access=PropertyAccess.READ)
    def UnlockedUntil(self) -> DBusUInt64:
        return self.cache.unlocked_until(self.key_name)

    @dbus_property(access=PropertyAccess.READ)
    def IdleTimeout(self) -> DBusUInt32:
        return self.cache.timeouts(self.key_name)[0]

    @dbus_property(access=PropertyAccess.READ)
    def MaxTimeout(self) -> DBusUInt32:
        return self.cache.timeouts(self.key_name)[1]

    def state(self) -> dict[str, object]:
        """The properties that change when the key locks or unlocks."""
        cache = self.cache
        idle, maximum = cache.timeouts(self.key_name)
        return {
            "Locked": not cache.is_unlocked(self.key_name),
            "UnlockedUntil": cache.unlocked_until(self.key_name),
            "IdleTimeout": idle,
            "MaxTimeout": maximum,
        }


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
