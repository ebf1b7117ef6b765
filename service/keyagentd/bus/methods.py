"""The method table: every method of the agent's two interfaces, one `Method` entry each.

A handler is an adapter: options in, a core call, the reply out. It gets the checked caller,
the arguments (key methods: the key's name first, from the object path) and the call's
`ReceivedFds`; it `take`s an fd only when handing it to whatever closes it (a stream).
The argument names are the contract's (dbus/org.example.KeyAgent.xml; a test compares).

Options (`a{sv}`): unknown option names and values of the wrong D-Bus type are refused with
InvalidArgs: a typo must not silently fall back to a default (an Encrypt that forgot
`armor`, an Unlock that kept the default timeout).

Secrets off the bus: a passphrase or identity in a message body is visible to every
same-user bus monitor. Every method that takes one also accepts it as an `h` option named
after it plus ``-fd`` (``passphrase-fd``, ``identity-fd``, ``old-passphrase-fd``,
``new-passphrase-fd``; ChangePassphrase and Export through their ``WithOptions`` forms):
the agent reads that fd (a pipe's read end) to EOF on the event loop, drops one trailing
newline, at most 4 KiB. Export's ``output-fd`` is where the file goes instead of the reply.
The fds stay the call's (`ReceivedFds`); `keyagent` sends secrets only this way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from dbus_fast import Variant

from keyagent.protocol import KEY_INTERFACE as KI
from keyagent.protocol import (
    KEY_TYPE_X25519,
    KEY_TYPES,
    MANAGER_PATH,
    InvalidArgs,
    Unsupported,
    is_valid_key_name,
    key_path,
)
from keyagent.protocol import MANAGER_INTERFACE as MI
from keyagentd import age, unwrap
from keyagentd.auth import Caller
from keyagentd.bus.dispatch import Method, Reply, in_task
from keyagentd.crypt import Crypt
from keyagentd.fds import ReceivedFds
from keyagentd.keys import Keys
from keyagentd.streams import check_fd_peers, read_passphrase_async, write_secret_async
from keyagentd.work import Work

# --- options ---------------------------------------------------------------------------

#: The D-Bus type of every option each method accepts; `<secret>-fd` (h): see above.
CREATE_KEY = {"type": "s", "label": "s", "passphrase-fd": "h"}
#: ImportKey: a protected OpenSSH/PEM key's passphrase in the message (``ssh-passphrase``,
#: for scripts: a bus monitor sees it) or read from a pipe (``ssh-passphrase-fd``).
IMPORT_KEY = {
    "label": "s",
    "identity-fd": "h",
    "passphrase-fd": "h",
    "ssh-passphrase": "s",
    "ssh-passphrase-fd": "h",
}
DELETE_KEY = {"passphrase": "s", "passphrase-fd": "h"}
ENCRYPT = {"armor": "b", "passphrase": "s", "passphrase-fd": "h"}
DECRYPT = {"key": "s", "passphrase": "s", "passphrase-fd": "h"}
UNLOCK = {"idle-timeout": "u", "max-timeout": "u"}
CHANGE_PASSPHRASE = {"old-passphrase-fd": "h", "new-passphrase-fd": "h"}
EXPORT = {"passphrase-fd": "h", "output-fd": "h"}
FD_SUFFIX: Final = "-fd"


class Options:
    """Typed access to a checked option dictionary."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name, default)
        assert value is None or isinstance(value, str)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._values.get(name, default)
        assert isinstance(value, bool)
        return value

    def number(self, name: str) -> int | None:
        value = self._values.get(name)
        assert value is None or isinstance(value, int)
        return value

    def __contains__(self, name: str) -> bool:
        return name in self._values


def shown(text: str, limit: int = 64) -> str:
    """Caller input quoted in an error sentence: bounded (an option name may be megabytes)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def parse_options(options: Mapping[str, Variant], schema: Mapping[str, str]) -> Options:
    """Check ``options`` against ``schema`` (name -> D-Bus type); InvalidArgs if they differ."""
    values: dict[str, Any] = {}
    for name, variant in options.items():
        expected = schema.get(name)
        if expected is None:
            known = ", ".join(sorted(schema)) or "none"
            raise InvalidArgs(f"Unknown option {shown(name)} (known options: {known}).")
        if variant.signature != expected:
            raise InvalidArgs(
                f"Option {name!r} must have D-Bus type '{expected}', not '{variant.signature}'."
            )
        values[name] = variant.value
    return Options(values)


# --- the handlers --------------------------------------------------------------------------

OPTIONS: Final = ("options", "a{sv}")
#: Decrypt and DecryptFd also take ``askpass`` (b): ask at the desktop for a locked key.
DECRYPT_OPTIONS: Final = {**DECRYPT, "askpass": "b"}
#: UnwrapFileKey takes ``key`` (s) and ``askpass`` (b), as Decrypt does.
UNWRAP_OPTIONS: Final = {"key": "s", "askpass": "b"}
#: Unlock also takes ``askpass`` (b): the agent asks at the desktop (passphrase "").
UNLOCK_OPTIONS: Final = {**UNLOCK, "askpass": "b", "passphrase-fd": "h"}


def pid_of(caller: Caller) -> int:
    return caller.pid if caller.pid is not None else 0


class Handlers:
    """The handlers, bound to the core they call."""

    def __init__(self, keys: Keys, crypt: Crypt, work: Work, used: Callable[[str], None]) -> None:
        self.keys = keys
        self.crypt = crypt
        self.work = work
        self.used = used  # a key opened a file: its UnlockedUntil may have moved

    # --- manager: keys -------------------------------------------------------------------

    async def create_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, passphrase, options = args
        parsed = parse_options(options, CREATE_KEY)
        self.keys.check_new(name)
        key_type = parsed.text("type", KEY_TYPE_X25519) or KEY_TYPE_X25519
        if key_type not in KEY_TYPES:
            raise Unsupported(f"Unknown key type {shown(key_type)}: use {' or '.join(KEY_TYPES)}.")
        label = parsed.text("label", "") or ""
        passphrase = await self.secret_arg(parsed, "passphrase", passphrase, fds, caller)
        record = await self.keys.create(name, age.generate_identity(key_type), passphrase, label)
        return Reply((key_path(name), record.recipient), key=name)

    async def import_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, identity, passphrase, options = args
        parsed = parse_options(options, IMPORT_KEY)
        label = parsed.text("label", "") or ""
        self.keys.check_new(name)
        identity = await self.secret_arg(parsed, "identity", identity, fds, caller)
        passphrase = await self.secret_arg(parsed, "passphrase", passphrase, fds, caller)
        ssh_passphrase = await self.secret_option(parsed, "ssh-passphrase", fds, caller)
        secret = None if ssh_passphrase is None else ssh_passphrase.encode("utf-8")
        # In a worker thread: an RSA key's full check takes ~100-300 ms, a protected OpenSSH
        # key's bcrypt KDF about as long (age/sshload.py).
        key = await self.keys.work.blocking(age.parse_identity, identity, ssh_passphrase=secret)
        await self.keys.create(name, key, passphrase, label)
        return Reply((key_path(name),), key=name)

    async def delete_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, options = args
        parsed = parse_options(options, DELETE_KEY)
        passphrase = await self.secret_option(parsed, "passphrase", fds, caller)
        await self.keys.delete(name, passphrase, pid_of(caller))
        return Reply()

    def lock_all(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        # Synchronous: it takes effect before the caller's next message is dispatched.
        self.keys.lock_all()
        return Reply()

    # --- manager: data -------------------------------------------------------------------

    async def encrypt(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        recipients, plaintext, options = args
        armor, passphrase = False, None  # no options (the usual call): the defaults, unparsed
        if options:
            parsed = parse_options(options, ENCRYPT)
            armor = parsed.flag("armor")
            passphrase = await self.secret_option(parsed, "passphrase", fds, caller)
        data = await self.crypt.encrypt(recipients, plaintext, armor=armor, passphrase=passphrase)
        return Reply((data,))

    async def decrypt(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        ciphertext, options = args
        pin, passphrase, askpass = None, None, False  # no options (the usual call): unparsed
        if options:
            parsed = parse_options(options, DECRYPT_OPTIONS)
            pin, askpass = parsed.text("key"), parsed.flag("askpass")
            passphrase = await self.secret_option(parsed, "passphrase", fds, caller)
        plaintext, name = await self.crypt.decrypt(
            ciphertext, pin=pin, passphrase=passphrase, askpass=askpass, pid=pid_of(caller)
        )
        self.used(name)
        # The plaintext is the agent's own buffer: wiped once the reply is sent.
        return Reply((plaintext, name), key=name, wipe=cast(bytearray, plaintext.obj))

    async def unwrap_file_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        stanzas, options = args
        parsed = parse_options(options, UNWRAP_OPTIONS)
        # ``caller`` is the judged one: for age-plugin-keyagent, the program that started it.
        file_key, name = await unwrap.file_key(
            self.crypt,
            stanzas,
            pin=parsed.text("key"),
            askpass=parsed.flag("askpass"),
            pid=pid_of(caller),
            via=caller.via,
        )
        self.used(name)
        return Reply((file_key, name), key=name)

    async def encrypt_fd(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        recipients, input_, output, options = args
        parsed = parse_options(options, ENCRYPT)
        passphrase = await self.secret_option(parsed, "passphrase", fds, caller)
        bind = self.crypt.encrypt_job(recipients, armor=parsed.flag("armor"), passphrase=passphrase)
        check_fd_peers([fds.get(input_), fds.get(output)], caller.uid)
        streams = [fds.take(input_), fds.take(output)]  # the stream closes them
        return Reply((await self.work.stream(caller.sender, streams, bind(*streams)),))

    async def decrypt_fd(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        input_, output, options = args
        parsed = parse_options(options, DECRYPT_OPTIONS)
        bind = self.crypt.decrypt_job(
            pin=parsed.text("key"),
            passphrase=await self.secret_option(parsed, "passphrase", fds, caller),
            askpass=parsed.flag("askpass"),
            pid=pid_of(caller),
        )
        check_fd_peers([fds.get(input_), fds.get(output)], caller.uid)
        streams = [fds.take(input_), fds.take(output)]
        name, written = await self.work.stream(caller.sender, streams, bind(*streams))
        self.used(name)
        return Reply((name, written), key=name)

    # --- secrets passed through fds (`<secret>-fd` options, UnlockFromFd) -----------------

    async def read_secret_fd(self, caller: Caller, fd: int) -> str:
        """A secret (passphrase, identity) from a pipe the caller passed: read on the loop,
        never in a stream thread (so it never queues behind streams), counted as running."""
        check_fd_peers([fd], caller.uid)
        await in_task()  # an eager handler's (Decrypt's) first part runs outside one
        return await self.work.track(read_passphrase_async(fd))

    async def secret_option(
        self, parsed: Options, name: str, fds: ReceivedFds, caller: Caller
    ) -> str | None:
        """The secret option ``name``, or what its ``-fd`` option's fd holds (not both)."""
        key = name + FD_SUFFIX
        if key not in parsed:
            return parsed.text(name)
        if name in parsed:
            raise InvalidArgs(f"Give the {name} or the {key} option, not both.")
        return await self.read_secret_fd(caller, fds.get(parsed.number(key)))

    async def secret_arg(
        self, parsed: Options, name: str, inline: str, fds: ReceivedFds, caller: Caller
    ) -> str:
        """The secret argument ``name`` (``inline``), or its ``-fd`` option's (then ``inline``
        must be empty)."""
        key = name + FD_SUFFIX
        if key not in parsed:
            return inline
        if inline:
            raise InvalidArgs(f"Give the {name} argument or the {key} option, not both.")
        return await self.read_secret_fd(caller, fds.get(parsed.number(key)))

    # --- key objects ---------------------------------------------------------------------

    async def unlock(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, passphrase, options = args
        parsed = parse_options(options, UNLOCK_OPTIONS)
        idle, maximum = parsed.number("idle-timeout"), parsed.number("max-timeout")
        if parsed.flag("askpass"):
            if passphrase:
                raise InvalidArgs("Give a passphrase or the askpass option, not both.")
            await self.keys.unlock_by_askpass(name, pid_of(caller), idle, maximum)
        else:
            passphrase = await self.secret_arg(parsed, "passphrase", passphrase, fds, caller)
            await self.keys.unlock(name, passphrase, idle, maximum)
        return Reply()

    async def unlock_from_fd(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, index, options = args
        parsed = parse_options(options, UNLOCK)
        passphrase = await self.read_secret_fd(caller, fds.get(index))
        idle, maximum = parsed.number("idle-timeout"), parsed.number("max-timeout")
        await self.keys.unlock(name, passphrase, idle, maximum)
        return Reply()

    def lock(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        (name,) = args
        self.keys.lock(name)
        return Reply()

    async def change_passphrase(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, old, new = args
        await self.keys.change_passphrase(name, old, new)
        return Reply()

    async def change_passphrase_with_options(
        self, caller: Caller, args: list[Any], fds: ReceivedFds
    ) -> Reply:
        name, old, new, options = args
        parsed = parse_options(options, CHANGE_PASSPHRASE)
        self.keys.require(name)
        old = await self.secret_arg(parsed, "old-passphrase", old, fds, caller)
        new = await self.secret_arg(parsed, "new-passphrase", new, fds, caller)
        await self.keys.change_passphrase(name, old, new)
        return Reply()

    async def export(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, passphrase = args
        return Reply((await self.keys.export(name, passphrase, self.crypt.work_factor),))

    async def export_with_options(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        """Export; with ``output-fd`` the file goes there and the reply is empty."""
        name, passphrase, options = args
        parsed = parse_options(options, EXPORT)
        self.keys.require(name)
        output = None
        if "output-fd" in parsed:
            output = fds.get(parsed.number("output-fd"))
            check_fd_peers([output], caller.uid)
        passphrase = await self.secret_arg(parsed, "passphrase", passphrase, fds, caller)
        data = await self.keys.export(name, passphrase, self.crypt.work_factor)
        if output is None:
            return Reply((data,))
        await write_secret_async(output, data)
        return Reply((b"",))

    # --- audit keys ----------------------------------------------------------------------

    def known_recipients(self, args: Sequence[Any]) -> str:
        """The key names among an Encrypt's recipients (as the audit names them)."""
        return ",".join(r for r in args[0] if isinstance(r, str) and r in self.keys.records)


def manager_target(path: str) -> list[Any] | None:
    """The dispatcher's target for manager methods: the manager's path, no leading args."""
    return [] if path == MANAGER_PATH else None


def _first(args: Sequence[Any]) -> str:
    """The key a call names first, for the audit: only a valid key name (a name with a
    newline would forge log lines and AccessLog fields); an invalid one is reported as ""."""
    name = args[0] if args else ""
    return name if isinstance(name, str) and is_valid_key_name(name) else ""


def method_table(
    keys: Keys, crypt: Crypt, work: Work, used: Callable[[str], None] = lambda name: None
) -> list[Method]:
    """Every method, as the contract names it; ``used(name)``: a key opened a file."""
    h = Handlers(keys, crypt, work, used)
    return [
        Method(MI, "CreateKey", (("name", "s"), ("passphrase", "s"), OPTIONS),
               (("key", "o"), ("recipient", "s")), h.create_key, _first),
        Method(MI, "ImportKey", (("name", "s"), ("identity", "s"), ("passphrase", "s"), OPTIONS),
               (("key", "o"),), h.import_key, _first),
        Method(MI, "DeleteKey", (("name", "s"), OPTIONS), (), h.delete_key, _first),
        Method(MI, "LockAll", (), (), h.lock_all, orphan_safe=True),
        Method(MI, "Encrypt", (("recipients", "as"), ("plaintext", "ay"), OPTIONS),
               (("ciphertext", "ay"),), h.encrypt, h.known_recipients, eager=True),
        Method(MI, "Decrypt", (("ciphertext", "ay"), OPTIONS),
               (("plaintext", "ay"), ("key", "s")), h.decrypt, eager=True),
        Method(MI, "UnwrapFileKey", (("stanzas", "a(sasay)"), OPTIONS),
               (("file_key", "ay"), ("key", "s")), h.unwrap_file_key, eager=True),
        Method(MI, "EncryptFd", (("recipients", "as"), ("input", "h"), ("output", "h"), OPTIONS),
               (("written", "t"),), h.encrypt_fd, h.known_recipients),
        Method(MI, "DecryptFd", (("input", "h"), ("output", "h"), OPTIONS),
               (("key", "s"), ("written", "t")), h.decrypt_fd),
        Method(KI, "Unlock", (("passphrase", "s"), OPTIONS), (), h.unlock, _first),
        Method(KI, "UnlockFromFd", (("fd", "h"), OPTIONS), (), h.unlock_from_fd, _first),
        Method(KI, "Lock", (), (), h.lock, _first),
        Method(KI, "ChangePassphrase", (("old", "s"), ("new", "s")), (),
               h.change_passphrase, _first),
        Method(KI, "ChangePassphraseWithOptions", (("old", "s"), ("new", "s"), OPTIONS), (),
               h.change_passphrase_with_options, _first),
        Method(KI, "Export", (("passphrase", "s"),), (("file", "ay"),), h.export, _first),
        Method(KI, "ExportWithOptions", (("passphrase", "s"), OPTIONS), (("file", "ay"),),
               h.export_with_options, _first),
    ]  # fmt: skip
