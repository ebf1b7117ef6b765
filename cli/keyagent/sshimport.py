"""`keyagent import` of an OpenSSH or PEM private key: the agent opens the key file's text
itself; the command only asks for the passphrases.

A protected key's passphrase is asked here (terminal or ``--ssh-passphrase-fd``) and goes to
the agent through a pipe (ImportKey's ``ssh-passphrase-fd``), never in the message; the key
is decrypted inside the agent only. The command cannot check that passphrase itself, so on a
terminal a wrong one is asked again and ImportKey called again. What the command knows from
the key's text (`keyagent.sshtext`) refuses a type age cannot use before any prompt.
"""

from __future__ import annotations

from keyagent import sshtext
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


def _new_passphrase(ctx: Context, name: str) -> str:
    return ctx.passphrases.new(
        f"New passphrase for key '{name}': ", f"Confirm passphrase for key '{name}': "
    )


def _ssh_passphrase(passphrases: Passphrases, source: str, attempt: int) -> str:
    prompt = f"Passphrase of the SSH key {source}: "
    if attempt:
        prompt = f"Wrong passphrase, try again. {prompt}"
    try:
        return passphrases.get(prompt)
    except NoPassphraseSource:
        raise CommandError(
            f"The SSH key {source} is protected by a passphrase.",
            "run on a terminal, or give it with --ssh-passphrase-fd N",
        ) from None


def import_ssh_key(ctx: Context, name: str, text: str, source: str) -> None:
    """Seal the SSH private key ``text`` as ``name`` (KeyAgentError, CommandError)."""
    key_type = sshtext.private_key_type(text)
    if key_type is not None and key_type not in sshtext.SUPPORTED:
        raise CommandError(sshtext.unsupported_sentence(key_type))  # before any prompt
    client = ctx.client()
    client.owner()  # fail early, before asking for any passphrase
    label = ctx.args.label or ""
    passphrases = _source(ctx)
    if not sshtext.is_protected(text):
        if passphrases is ctx.passphrases:
            passphrases.get("")  # one fd: its first line is the SSH one, needed or not
        client.import_key(name, text, _new_passphrase(ctx, name), label=label)
        return
    tries = 1 if passphrases.from_fd else TTY_TRIES
    passphrase = ""
    for attempt in range(tries):
        secret = _ssh_passphrase(passphrases, source, attempt)
        passphrase = passphrase or _new_passphrase(ctx, name)
        try:
            client.import_key(name, text, passphrase, label=label, ssh_passphrase=secret)
            return
        except BadPassphrase:  # the agent's passphrase is not empty: the SSH one is wrong
            if attempt == tries - 1:
                raise
