"""The method table: every method of the agent's two interfaces, one `Method` entry each.

A handler is an adapter: options in, a core call, the reply out. It gets the checked caller,
the arguments (key methods: the key's name first, from the object path) and the call's
`ReceivedFds`; it `take`s an fd only when handing it to whatever closes it (a stream).
The argument names are the contract's (dbus/org.example.KeyAgent.xml; a test compares).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from keyagent.protocol import KEY_INTERFACE as KI
from keyagent.protocol import MANAGER_INTERFACE as MI
from keyagent.protocol import BadPassphrase, InvalidArgs
from keyagentd.auth import Caller
from keyagentd.bus import operations as ops
from keyagentd.bus import options as opts
from keyagentd.bus.dispatch import Method, Reply
from keyagentd.bus.fdpeer import check_fd_peers
from keyagentd.bus.fds import ReceivedFds
from keyagentd.bus.key import UNLOCK_OPTIONS, export_identity, read_passphrase

if TYPE_CHECKING:
    from keyagentd.bus.service import Agent

OPTIONS: Final = ("options", "a{sv}")


def pid_of(caller: Caller) -> int:
    return caller.pid if caller.pid is not None else 0


class Handlers:
    """The handlers, bound to the agent they serve."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    # --- manager: keys -------------------------------------------------------------------

    async def create_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, passphrase, options = args
        path, recipient = await ops.create_key(self.agent, name, passphrase, options)
        return Reply((path, recipient), key=name)

    async def import_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, identity, passphrase, options = args
        path = await ops.import_key(self.agent, name, identity, passphrase, options)
        return Reply((path,), key=name)

    async def delete_key(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, options = args
        await ops.delete_key(self.agent, name, options, pid_of(caller))
        return Reply()

    def lock_all(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        # Synchronous: it takes effect before the caller's next message is dispatched.
        self.agent.lock_all()
        return Reply()

    # --- manager: data -------------------------------------------------------------------

    async def encrypt(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        recipients, plaintext, options = args
        return Reply((await ops.encrypt(self.agent, recipients, plaintext, options),))

    async def decrypt(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        ciphertext, options = args
        plaintext, name = await ops.decrypt(self.agent, ciphertext, options, pid_of(caller))
        return Reply((plaintext, name), key=name)

    async def encrypt_fd(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        recipients, input_, output, options = args
        job = ops.encrypt_fd_job(self.agent, recipients, options)
        check_fd_peers([fds.get(input_), fds.get(output)], caller.uid)
        streams = [fds.take(input_), fds.take(output)]  # the stream closes them
        return Reply((await self.agent.stream(caller.sender, streams, job(*streams)),))

    async def decrypt_fd(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        input_, output, options = args
        job = ops.decrypt_fd_job(self.agent, options, pid_of(caller))
        check_fd_peers([fds.get(input_), fds.get(output)], caller.uid)
        streams = [fds.take(input_), fds.take(output)]
        name, written = await self.agent.stream(caller.sender, streams, job(*streams))
        return Reply((name, written), key=name)

    # --- key objects ---------------------------------------------------------------------

    async def unlock(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, passphrase, options = args
        parsed = opts.parse(options, UNLOCK_OPTIONS)
        if parsed.flag("askpass"):
            if passphrase:
                raise InvalidArgs("Give a passphrase or the askpass option, not both.")
            await self.agent.unlock_by_askpass(name, parsed, pid_of(caller))
        else:
            await self.agent.unlock(name, passphrase, parsed)
        return Reply()

    async def unlock_from_fd(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, index, options = args
        parsed = opts.parse(options, opts.UNLOCK)
        check_fd_peers([fds.get(index)], caller.uid)
        fd = fds.take(index)
        passphrase = await self.agent.stream(
            caller.sender, [fd], lambda cancel: read_passphrase(fd, cancel)
        )
        await self.agent.unlock(name, passphrase, parsed)
        return Reply()

    def lock(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        (name,) = args
        self.agent.require(name)
        if self.agent.cache.lock(name):
            self.agent.key_changed(name)
        return Reply()

    async def change_passphrase(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, old, new = args
        self.agent.require(name)
        if not new:  # checked first: a bad new passphrase is not a wrong guess of the old one
            raise BadPassphrase("The new passphrase must not be empty.")
        async with self.agent.limiter.attempt(name):
            await self.agent.blocking(self.agent.store.change_passphrase, name, old, new)
        return Reply()

    async def export(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        name, passphrase = args
        record = self.agent.require(name)
        async with self.agent.limiter.attempt(name):
            seed = await self.agent.blocking(self.agent.store.unseal, name, passphrase)
        work_factor = self.agent.config.scrypt_work_factor
        data = await self.agent.blocking(
            export_identity, record.key_type, seed, passphrase, work_factor
        )
        return Reply((data,))

    # --- audit keys ----------------------------------------------------------------------

    def known_recipients(self, args: Sequence[Any]) -> str:
        """The key names among an Encrypt's recipients (as the audit names them)."""
        return ",".join(r for r in args[0] if isinstance(r, str) and r in self.agent.records)


def _first(args: Sequence[Any]) -> str:
    """The key a call names first (bounded: it may not be a valid name)."""
    return str(args[0])[:64] if args else ""


def method_table(agent: Agent) -> list[Method]:
    """Every method, as the contract names it."""
    h = Handlers(agent)
    return [
        Method(MI, "CreateKey", (("name", "s"), ("passphrase", "s"), OPTIONS),
               (("key", "o"), ("recipient", "s")), h.create_key, _first),
        Method(MI, "ImportKey", (("name", "s"), ("identity", "s"), ("passphrase", "s"), OPTIONS),
               (("key", "o"),), h.import_key, _first),
        Method(MI, "DeleteKey", (("name", "s"), OPTIONS), (), h.delete_key, _first),
        Method(MI, "LockAll", (), (), h.lock_all),
        Method(MI, "Encrypt", (("recipients", "as"), ("plaintext", "ay"), OPTIONS),
               (("ciphertext", "ay"),), h.encrypt, h.known_recipients),
        Method(MI, "Decrypt", (("ciphertext", "ay"), OPTIONS),
               (("plaintext", "ay"), ("key", "s")), h.decrypt),
        Method(MI, "EncryptFd", (("recipients", "as"), ("input", "h"), ("output", "h"), OPTIONS),
               (("written", "t"),), h.encrypt_fd, h.known_recipients),
        Method(MI, "DecryptFd", (("input", "h"), ("output", "h"), OPTIONS),
               (("key", "s"), ("written", "t")), h.decrypt_fd),
        Method(KI, "Unlock", (("passphrase", "s"), OPTIONS), (), h.unlock, _first),
        Method(KI, "UnlockFromFd", (("fd", "h"), OPTIONS), (), h.unlock_from_fd, _first),
        Method(KI, "Lock", (), (), h.lock, _first),
        Method(KI, "ChangePassphrase", (("old", "s"), ("new", "s")), (),
               h.change_passphrase, _first),
        Method(KI, "Export", (("passphrase", "s"),), (("file", "ay"),), h.export, _first),
    ]  # fmt: skip
