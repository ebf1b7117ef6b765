"""Loading an OpenSSH or PEM private key with cryptography (bcrypt for protected OpenSSH keys).

Only the agent runs it: ImportKey gets the key file's text and, for a protected key, its
passphrase (``keyagent import`` asks for it and sends it through a pipe). Errors are the
engine's (a wrong or missing passphrase is `PassphraseError`).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import sshformat
from .errors import ParseError, PassphraseError, UnsupportedError

SshPrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
WRONG_PASSPHRASE = "The SSH key's passphrase is wrong."


def load_private_key(text: str, ask: Callable[[], bytes] | None) -> SshPrivateKey:
    """The key in ``text``. ``ask`` gives the passphrase of a protected key (called at most
    once, only when one is needed); without it a protected key is refused.

    ParseError (not a key, truncated), UnsupportedError (type, RSA size), PassphraseError."""
    info = sshformat.private_key_info(text)  # type and protection, before any prompt
    password = None
    if info.encrypted:
        if ask is None:
            raise PassphraseError("The SSH key is protected by a passphrase: give its passphrase.")
        password = ask()
        if not password:
            raise PassphraseError(WRONG_PASSPHRASE)
    data = text.encode("utf-8")
    key: object
    try:
        if sshformat.OPENSSH_BEGIN in text:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except UnsupportedAlgorithm:
        raise UnsupportedError(
            "The SSH key uses a cipher or key type this agent does not support."
        ) from None
    except (ValueError, TypeError) as exc:
        raise _load_error(info.encrypted, str(exc)) from None
    if isinstance(key, rsa.RSAPrivateKey):
        sshformat.check_rsa_bits(key.key_size)
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    kind = "ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
    raise sshformat.unsupported_type(kind)


def _load_error(encrypted: bool, text: str) -> ParseError | PassphraseError:
    # cryptography says "broken checksum" (OpenSSH) or "Bad decrypt" (PEM) for a wrong
    # passphrase; anything else is a damaged file.
    lowered = text.lower()
    if encrypted and ("checksum" in lowered or "decrypt" in lowered or "password" in lowered):
        return PassphraseError(WRONG_PASSPHRASE)
    return sshformat.truncated()


def to_openssh(key: SshPrivateKey) -> str:
    """The key as an unencrypted ``-----BEGIN OPENSSH PRIVATE KEY-----`` text."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return pem.decode("ascii")
