"""`typing.Annotated` D-Bus types for method signatures that dbus-fast lacks."""

from __future__ import annotations

from typing import Annotated

from dbus_fast.annotations import DBusSignature

#: A method with no reply values (dbus-fast would read `-> None` as a missing signature).
Void = Annotated[None, DBusSignature("")]
DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]
KeyAndRecipient = Annotated[tuple[str, str], DBusSignature("os")]
PlainAndKey = Annotated[tuple[bytes, str], DBusSignature("ays")]
KeyAndCount = Annotated[tuple[str, int], DBusSignature("st")]
