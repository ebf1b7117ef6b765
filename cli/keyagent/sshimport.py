"""`keyagent import` of an OpenSSH or PEM private key: the OpenSSH passphrase is asked here
(terminal or ``--ssh-passphrase-fd``), and the agent gets the key in the clear, to seal it
under its own passphrase, the way an ``AGE-SECRET-KEY-`` line travels."""

from __future__ import annotations

from collections.abc import Callable

from keyagent import sshformat
from keyagent.context import CommandError, Context
from keyagent.prompt import NoPassphraseSource, Passphrases
from keyagent.protocol import BadPassphrase

TTY_TRIES = 3


def _source(ctx: Context) -> Passphrases:
    fd = ctx.args.ssh_passphrase_fd
    if fd is None:  # the terminal: --passphrase-fd holds the agent's passphrase
        return Passphrases(tty_path=ctx.passphrases.tty_path)
    if fd == ctx.passphrases.fd:
        return ctx.passphrases  # one fd: the SSH passphrase is its first line
    return Passphrases(fd)


def _given(secret: bytes) -> Callable[[], bytes]:
    return lambda: secret


def ssh_identity(ctx: Context, text: str, source: str) -> str:
    """The key of ``text`` as an unencrypted OpenSSH key (KeyAgentError if it cannot be)."""
    from keyagent import sshload  # cryptography: only for an SSH key

    info = sshformat.private_key_info(text)  # refuse an unusable key before asking
    passphrases = _source(ctx)
    if not info.encrypted:
        if passphrases is ctx.passphrases:
            passphrases.get("")  # one fd: its first line is the SSH one, needed or not
        return sshload.to_openssh(sshload.load_private_key(text, None))
    tries = 1 if passphrases.from_fd else TTY_TRIES
    for attempt in range(tries):
        prompt = f"Passphrase of the SSH key {source}: "
        if attempt:
            prompt = f"Wrong passphrase, try again. Passphrase of the SSH key {source}: "
        try:
            secret = passphrases.get(prompt).encode("utf-8")
        except NoPassphraseSource:
            raise CommandError(
                f"The SSH key {source} is protected by a passphrase.",
                "run on a terminal, or give it with --ssh-passphrase-fd N",
            ) from None
        try:
            return sshload.to_openssh(sshload.load_private_key(text, _given(secret)))
        except BadPassphrase:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")
