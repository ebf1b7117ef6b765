"""SSH keys as age keys: public keys (``ssh-ed25519 AAAA...``) as recipients, OpenSSH and
PEM private keys as identities. The key text is read by `sshformat` and `sshload`."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyagentd.secrets import scrub_bytes

from . import sshformat, sshload
from .ssh import SshEd25519Identity, SshEd25519Recipient, SshRsaIdentity, SshRsaRecipient

SshRecipient = SshEd25519Recipient | SshRsaRecipient
SshIdentity = SshEd25519Identity | SshRsaIdentity


def parse_ssh_recipient(line: str) -> SshRecipient:
    """An ``authorized_keys``/``.pub`` line (options and comment skipped, as age does)."""
    key_type, blob = sshformat.parse_public_line(line)
    if key_type == sshformat.ED25519:
        return SshEd25519Recipient(blob)
    return SshRsaRecipient(blob)


def parse_ssh_identity(text: str, passphrase: bytes | None = None) -> SshIdentity:
    """An OpenSSH or PEM private key; ``passphrase`` opens a protected one (PassphraseError
    without it, or if wrong). Only the agent decrypts a key: ``keyagent import`` sends it as
    it is, with the passphrase through a pipe."""
    ask = None if passphrase is None else (lambda: passphrase)
    return identity_from_key(sshload.load_private_key(text, ask))


def identity_from_key(key: sshload.SshPrivateKey) -> SshIdentity:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        secret = key.private_bytes_raw()
        try:
            return SshEd25519Identity(secret)
        finally:
            scrub_bytes(secret)
    secret = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        return SshRsaIdentity(secret)
    finally:
        scrub_bytes(secret)
