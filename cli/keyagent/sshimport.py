"""`keyagent import` of an OpenSSH or PEM private key: the OpenSSH passphrase is asked here
(terminal or ``--ssh-passphrase-fd``), and the agent gets the key in the clear, to seal it
under its own passphrase, the way an ``AGE-SECRET-KEY-`` line travels.

The key text is read by the age engine's own modules (`keyagentd.age.sshformat`,
`keyagentd.age.sshload`), which the agent runs too: one set of checks and sentences. Their
errors are the engine's; `keyagentd.errors.wire_error` gives the agent's error for each, so
the command reports them as it reports the agent's. Imported only by ``import`` and by an
SSH line of a ``-R`` file: the engine loads cryptography.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from keyagent.context import CommandError, Context
from keyagent.prompt import NoPassphraseSource, Passphrases
from keyagentd.age import errors as age_errors
from keyagentd.age import sshformat, sshload
from keyagentd.errors import wire_error

TTY_TRIES = 3


@contextmanager
def engine_errors() -> Iterator[None]:
    """The engine's errors as the agent's (what the command's error handling knows)."""
    try:
        yield
    except age_errors.AgeError as exc:
        raise wire_error(exc) from None


def is_private_key(text: str) -> bool:
    return sshformat.looks_like_private_key(text)


def is_public_key(text: str) -> bool:
    return sshformat.is_ssh_recipient(text)


def public_line(line: str) -> str:
    """One ``authorized_keys``/``.pub`` line as ``type base64`` (engine errors)."""
    return sshformat.encode_public(sshformat.parse_public_line(line)[1])


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
    with engine_errors():
        return _ssh_identity(ctx, text, source)


def _ssh_identity(ctx: Context, text: str, source: str) -> str:
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
        except age_errors.PassphraseError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")
