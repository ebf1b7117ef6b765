"""`keyagent.Client`: a small synchronous client of the keyagent D-Bus service.

Built on the package's own small D-Bus code (wire.py, transport.py) so that the short-lived
`keyagent` command starts fast (no asyncio, no jeepney, no `typing`). Every call has a timeout;
streaming calls can poll a progress callback while they run. The connection, and the check
that the agent runs as our own uid before any secret is sent, are in connection.py.
"""

from __future__ import annotations

import os

from keyagent import protocol
from keyagent.connection import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from keyagent.connection import AgentConnection
from keyagent.connection import AgentUnavailable as AgentUnavailable
from keyagent.protocol import key_name_from_path, key_path

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, Final

    from keyagent.keyinfo import KeyInfo as KeyInfo


def __getattr__(name: str) -> Any:
    # KeyInfo loads on first use: only `list`, `status` and API users need it.
    if name == "KeyInfo":
        from keyagent.keyinfo import KeyInfo

        return KeyInfo
    raise AttributeError(f"module 'keyagent.client' has no attribute {name!r}")


#: An askpass unlock waits for a person: three dialogs of at most two minutes each.
ASKPASS_TIMEOUT: Final = 400.0

_MANAGER = protocol.MANAGER_PATH
_INTERFACE = protocol.MANAGER_INTERFACE
_PROPS = "org.freedesktop.DBus.Properties"
_OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


class Client(AgentConnection):
    """A connection to the keyagent service on a D-Bus session bus.

    ``bus`` is ``"SESSION"`` (from ``$DBUS_SESSION_BUS_ADDRESS``) or a D-Bus address. Use as a
    context manager, or call :meth:`close`. Errors are the classes of :mod:`keyagent.protocol`,
    plus :class:`AgentUnavailable`.
    """

    def _manager(
        self, member: str, signature: str | None = None, args: Sequence[Any] = (), **kw: Any
    ) -> tuple[Any, ...]:
        return self._call(
            protocol.MANAGER_PATH, protocol.MANAGER_INTERFACE, member, signature, args, **kw
        )

    def _key(
        self,
        name: str,
        member: str,
        signature: str | None = None,
        args: Sequence[Any] = (),
        **kw: Any,
    ) -> tuple[Any, ...]:
        return self._call(key_path(name), protocol.KEY_INTERFACE, member, signature, args, **kw)

    # -- manager -----------------------------------------------------------------------------

    def version(self) -> str:
        """The agent's version."""
        reply = self._call(
            protocol.MANAGER_PATH, _PROPS, "Get", "ss", (protocol.MANAGER_INTERFACE, "Version")
        )
        return str(reply[0][1])

    def key_names(self) -> list[str]:
        reply = self._call(
            protocol.MANAGER_PATH, _PROPS, "Get", "ss", (protocol.MANAGER_INTERFACE, "Keys")
        )
        return sorted(key_name_from_path(p) for p in reply[0][1])

    def keys(self) -> list[KeyInfo]:
        """Every key with its properties, sorted by name (one round trip)."""
        from keyagent.keyinfo import KeyInfo

        reply = self._call(protocol.MANAGER_PATH, _OBJECT_MANAGER, "GetManagedObjects")
        infos = [
            KeyInfo.from_properties(ifaces[protocol.KEY_INTERFACE])
            for path, ifaces in reply[0].items()
            if str(path).startswith(protocol.KEYS_PATH_PREFIX) and protocol.KEY_INTERFACE in ifaces
        ]
        return sorted(infos, key=lambda k: k.name)

    def key(self, name: str) -> KeyInfo:
        """One key's properties."""
        from keyagent.keyinfo import KeyInfo

        reply = self._key_props(name)
        return KeyInfo.from_properties(reply)

    def _key_props(self, name: str) -> dict[str, tuple[str, Any]]:
        reply = self._call(key_path(name), _PROPS, "GetAll", "s", (protocol.KEY_INTERFACE,))
        return dict(reply[0])

    def create_key(
        self, name: str, passphrase: str, *, type: str = protocol.KEY_TYPE_X25519, label: str = ""
    ) -> str:
        """Create a key sealed under ``passphrase`` (sent through a pipe); returns its
        recipient."""
        opts: dict[str, tuple[str, Any]] = {"type": ("s", type)}
        if label:
            opts["label"] = ("s", label)
        with self._secrets(passphrase=passphrase) as fds:
            reply = self._manager("CreateKey", "ssa{sv}", (name, "", {**opts, **fds}))
        return str(reply[1])

    def import_key(
        self,
        name: str,
        identity: str,
        passphrase: str,
        *,
        label: str = "",
        ssh_passphrase: str | None = None,
    ) -> str:
        """Seal an existing ``AGE-SECRET-KEY-…`` identity or OpenSSH/PEM private key file's
        text (ssh-ed25519, ssh-rsa); returns the key's object path. Every secret travels
        through a pipe, never in the message; ``ssh_passphrase`` opens a protected SSH key
        in the agent."""
        opts: dict[str, tuple[str, Any]] = {"label": ("s", label)} if label else {}
        secrets = {"identity": identity, "passphrase": passphrase}
        if ssh_passphrase is not None:
            secrets["ssh-passphrase"] = ssh_passphrase
        with self._secrets(**secrets) as fds:
            reply = self._manager("ImportKey", "sssa{sv}", (name, "", "", {**opts, **fds}))
        return str(reply[0])

    def delete_key(self, name: str, passphrase: str | None = None) -> None:
        """Delete a key: it must be unlocked, or ``passphrase`` (sent through a pipe) must be
        its own."""
        with self._secrets(passphrase=passphrase) as fds:
            self._manager("DeleteKey", "sa{sv}", (name, fds))

    def _secrets(self, **secrets: str | None) -> SecretPipes:
        """Pipes carrying ``secrets`` as `<name>-fd` options; the agent is checked first."""
        if any(v is not None for v in secrets.values()):
            self.owner()  # check the agent before a secret leaves this process
        return SecretPipes(secrets)

    def lock_all(self) -> None:
        self._manager("LockAll")

    def encrypt(
        self,
        recipients: Iterable[str],
        plaintext: bytes,
        *,
        armor: bool = False,
        passphrase: str | None = None,
    ) -> bytes:
        """Encrypt in one message (payloads up to the agent's cap, 16 MiB by default)."""
        if passphrase is None:  # no pipe to make: the short path of every small call
            opts = {"armor": ("b", True)} if armor else {}
            body = (list(recipients), plaintext, opts)
            reply = self._call(_MANAGER, _INTERFACE, "Encrypt", "asaya{sv}", body)
            return bytes(reply[0])
        with self._secrets(passphrase=passphrase) as fds:
            opts = {**_encrypt_options(armor, None), **fds}
            reply = self._manager("Encrypt", "asaya{sv}", (list(recipients), plaintext, opts))
        return bytes(reply[0])

    def decrypt(
        self, ciphertext: bytes, *, key: str | None = None, passphrase: str | None = None
    ) -> tuple[bytes, str]:
        """Decrypt in one message; returns (plaintext, key name or "" for passphrase files)."""
        if passphrase is None:  # no pipe to make: the short path of every small call
            opts = {"key": ("s", key)} if key else {}
            reply = self._call(_MANAGER, _INTERFACE, "Decrypt", "aya{sv}", (ciphertext, opts))
            return bytes(reply[0]), str(reply[1])
        with self._secrets(passphrase=passphrase) as fds:
            opts = {**_decrypt_options(key, None), **fds}
            reply = self._manager("Decrypt", "aya{sv}", (ciphertext, opts))
        return bytes(reply[0]), str(reply[1])

    def unwrap_file_key(
        self,
        stanzas: Sequence[tuple[str, Sequence[str], bytes]],
        *,
        key: str | None = None,
        askpass: bool = False,
        timeout: float | None = -1.0,
    ) -> tuple[bytes, str]:
        """The file key behind a header's recipient stanzas (type, args, body), and the name of
        the agent key that opened it. For age plugins: the caller checks the header MAC."""
        opts: dict[str, tuple[str, Any]] = {}
        if key is not None:
            opts["key"] = ("s", key)
        if askpass:
            opts["askpass"] = ("b", True)
            timeout = ASKPASS_TIMEOUT if timeout == -1.0 else timeout
        body = ([(t, list(a), bytes(b)) for t, a, b in stanzas], opts)
        reply = self._manager("UnwrapFileKey", "a(sasay)a{sv}", body, timeout=timeout)
        return bytes(reply[0]), str(reply[1])

    def encrypt_fd(
        self,
        recipients: Iterable[str],
        input_fd: int,
        output_fd: int,
        *,
        armor: bool = False,
        passphrase: str | None = None,
        timeout: float | None = None,
        progress: Callable[[], None] | None = None,
    ) -> int:
        """Stream ``input_fd`` to ``output_fd`` through the agent; returns bytes written.

        No timeout by default: the call lasts as long as the data. ``progress`` is called
        every few hundred milliseconds while the agent works.
        """
        with self._secrets(passphrase=passphrase) as fds:
            reply = self._manager(
                "EncryptFd",
                "ashha{sv}",
                (list(recipients), input_fd, output_fd, {**_encrypt_options(armor, None), **fds}),
                timeout=timeout,
                progress=progress,
            )
        return int(reply[0])

    def decrypt_fd(
        self,
        input_fd: int,
        output_fd: int,
        *,
        key: str | None = None,
        passphrase: str | None = None,
        askpass: bool = False,
        timeout: float | None = None,
        progress: Callable[[], None] | None = None,
    ) -> tuple[str, int]:
        """Stream-decrypt; returns (key name or "", bytes written). With ``askpass`` the
        agent asks at the desktop for a locked key that could open the input."""
        with self._secrets(passphrase=passphrase) as fds:
            opts = {**_decrypt_options(key, None), **fds}
            if askpass:
                opts["askpass"] = ("b", True)
            reply = self._manager(
                "DecryptFd",
                "hha{sv}",
                (input_fd, output_fd, opts),
                timeout=timeout,
                progress=progress,
            )
        return str(reply[0]), int(reply[1])

    # -- keys --------------------------------------------------------------------------------

    def unlock(
        self,
        name: str,
        passphrase: str,
        *,
        idle_timeout: int | None = None,
        max_timeout: int | None = None,
    ) -> None:
        """Unlock with the passphrase in the message; prefer :meth:`unlock_with_pipe`."""
        opts = _unlock_options(idle_timeout, max_timeout)
        self._key(name, "Unlock", "sa{sv}", (passphrase, opts))

    def unlock_by_askpass(
        self,
        name: str,
        *,
        idle_timeout: int | None = None,
        max_timeout: int | None = None,
        timeout: float | None = ASKPASS_TIMEOUT,
    ) -> None:
        """Have the agent ask the person at the desktop for the passphrase (askpass), then
        unlock. Waits for the dialog: up to three tries of two minutes each."""
        opts = _unlock_options(idle_timeout, max_timeout)
        opts["askpass"] = ("b", True)
        self._key(name, "Unlock", "sa{sv}", ("", opts), timeout=timeout)

    def unlock_from_fd(
        self,
        name: str,
        fd: int,
        *,
        idle_timeout: int | None = None,
        max_timeout: int | None = None,
    ) -> None:
        """Unlock with the passphrase the agent reads from ``fd`` (a pipe's read end)."""
        opts = _unlock_options(idle_timeout, max_timeout)
        self._key(name, "UnlockFromFd", "ha{sv}", (fd, opts))

    def unlock_with_pipe(
        self,
        name: str,
        passphrase: str,
        *,
        idle_timeout: int | None = None,
        max_timeout: int | None = None,
    ) -> None:
        """Unlock through a pipe, so the passphrase never appears in a bus message."""
        self.owner()  # check the agent before the passphrase leaves this process
        data = passphrase.encode()
        if len(data) >= 4096:
            raise protocol.BadPassphrase("The passphrase is too long (4 KiB at most).")
        r, w = os.pipe()
        try:
            try:
                os.write(w, data)  # fits in the pipe buffer: never blocks
            finally:
                os.close(w)
            self.unlock_from_fd(name, r, idle_timeout=idle_timeout, max_timeout=max_timeout)
        finally:
            os.close(r)

    def lock(self, name: str) -> None:
        self._key(name, "Lock")

    def change_passphrase(self, name: str, old: str, new: str) -> None:
        """Change the passphrase; both go through pipes."""
        with self._secrets(**{"old-passphrase": old, "new-passphrase": new}) as fds:
            self._key(name, "ChangePassphraseWithOptions", "ssa{sv}", ("", "", fds))

    def export(self, name: str, passphrase: str) -> bytes:
        """The identity as an armored age file encrypted to ``passphrase`` (the key's own).
        The passphrase goes through a pipe, and the file comes back through another."""
        with self._secrets(passphrase=passphrase) as fds:
            r, w = os.pipe()
            try:
                try:
                    opts = {**fds, "output-fd": ("h", w)}
                    self._key(name, "ExportWithOptions", "sa{sv}", ("", opts))
                finally:
                    os.close(w)
                # A few hundred bytes: the agent wrote them all into the pipe before replying.
                return _read_all(r)
            finally:
                os.close(r)


class SecretPipes:
    """A context manager: one pipe per secret, its read end passed as the `<name>-fd`
    option. Secrets are a few KiB at most, so each fits in its pipe's buffer."""

    def __init__(self, secrets: Mapping[str, str | None]) -> None:
        self._secrets = {k: v for k, v in secrets.items() if v is not None}
        self._fds: list[int] = []

    def __enter__(self) -> dict[str, tuple[str, Any]]:
        options: dict[str, tuple[str, Any]] = {}
        try:
            for name, value in self._secrets.items():
                data = value.encode()
                if len(data) > protocol.MAX_SECRET_BYTES:
                    raise protocol.BadPassphrase(
                        f"The {name} is too long ({protocol.MAX_SECRET_BYTES // 1024} KiB at most)."
                    )
                r, w = os.pipe()
                self._fds.append(r)
                try:
                    os.write(w, data)  # fits in the pipe buffer: never blocks
                finally:
                    os.close(w)
                options[name + "-fd"] = ("h", r)
        except BaseException:
            self.__exit__()
            raise
        return options

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _encrypt_options(armor: bool, passphrase: str | None) -> dict[str, tuple[str, Any]]:
    opts: dict[str, tuple[str, Any]] = {}
    if armor:
        opts["armor"] = ("b", True)
    if passphrase is not None:
        opts["passphrase"] = ("s", passphrase)
    return opts


def _decrypt_options(key: str | None, passphrase: str | None) -> dict[str, tuple[str, Any]]:
    opts: dict[str, tuple[str, Any]] = {}
    if key:
        opts["key"] = ("s", key)
    if passphrase is not None:
        opts["passphrase"] = ("s", passphrase)
    return opts


def _unlock_options(
    idle_timeout: int | None, max_timeout: int | None
) -> dict[str, tuple[str, Any]]:
    opts: dict[str, tuple[str, Any]] = {}
    if idle_timeout is not None:
        opts["idle-timeout"] = ("u", int(idle_timeout))
    if max_timeout is not None:
        opts["max-timeout"] = ("u", int(max_timeout))
    return opts
