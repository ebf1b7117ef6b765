"""Parsing and generating age keys (identities and recipients)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from . import bech32, hybrid, ssh, sshformat, x25519
from .errors import ParseError, UnsupportedError
from .format import Stanza
from .hybrid import HybridIdentity, HybridRecipient
from .ssh import SshEd25519Identity, SshRsaIdentity
from .sshkey import SshRecipient, parse_ssh_identity, parse_ssh_recipient
from .x25519 import X25519Identity, X25519Recipient

KeyType = Literal["x25519", "mlkem768x25519"]
#: The types `generate_identity` makes; SSH keys are imported only.
KEY_TYPES: tuple[KeyType, ...] = ("x25519", "mlkem768x25519")
#: Every stored key type and the stanza type it opens.
STANZA_TYPES: dict[str, str] = {
    "x25519": x25519.STANZA_TYPE,
    "mlkem768x25519": hybrid.STANZA_TYPE,
    "ssh-ed25519": sshformat.ED25519,
    "ssh-rsa": sshformat.RSA,
}

AnyRecipient = X25519Recipient | HybridRecipient | SshRecipient
AnyIdentity = X25519Identity | HybridIdentity | SshEd25519Identity | SshRsaIdentity


class Recipient(Protocol):
    """Something a file can be encrypted to."""

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]: ...


class Identity(Protocol):
    """Something that can open files: ``unwrap`` returns the file key, None if no
    stanza is for it, and raises ParseError on a malformed stanza of its type.

    The key-pair identities (X25519, hybrid) also have ``wipe()``: after it, their
    secret buffers are zeroed and ``unwrap`` raises ValueError."""

    @property
    def stanza_type(self) -> str: ...

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None: ...


def may_open(key_type: str, recipient: str, stanzas: Sequence[Stanza]) -> bool:
    """Whether a key could open a file with these stanzas, before it is unlocked: a stanza of
    its type, and for an SSH key one carrying its tag (other stanzas are anonymous)."""
    stanza_type = STANZA_TYPES.get(key_type)
    if key_type not in sshformat.SUPPORTED:
        return stanza_type in [s.type for s in stanzas]  # per Decrypt: no generator
    tag = _ssh_tag(recipient)
    return any(s.type == stanza_type and s.args[:1] == (tag,) for s in stanzas)


@functools.lru_cache(maxsize=256)
def _ssh_tag(recipient: str) -> str:
    return ssh.tag(sshformat.parse_public_line(recipient)[1])


def is_recipient_text(s: str) -> bool:
    """Whether ``s`` is meant as a recipient (``age1...`` or an SSH public key line), not a
    key name; it may still be malformed."""
    return s.startswith("age1") or sshformat.is_ssh_recipient(s)


def parse_recipient(s: str) -> AnyRecipient:
    """An ``age1...`` (X25519), ``age1pq1...`` (hybrid) or SSH public key (``ssh-ed25519
    AAAA...``, ``ssh-rsa AAAA...``: an ``authorized_keys`` line) recipient."""
    if sshformat.is_ssh_recipient(s):
        return parse_ssh_recipient(s)
    hrp, data = bech32.decode(s.strip())
    if hrp == x25519.RECIPIENT_HRP and len(data) == 32 and s.strip().islower():
        return X25519Recipient(data)
    if hrp == hybrid.RECIPIENT_HRP and s.strip().islower():
        return HybridRecipient(data)
    if hrp.startswith("age1") and hrp != hybrid.RECIPIENT_HRP:
        raise UnsupportedError("This kind of age recipient (a plugin?) is not supported.")
    raise ParseError("The recipient is not a valid age public key (age1...).")


def parse_identity(s: str, ssh_passphrase: bytes | None = None) -> AnyIdentity:
    """An ``AGE-SECRET-KEY-1...`` or ``AGE-SECRET-KEY-PQ-1...`` identity, or an OpenSSH or
    PEM private key (ssh-ed25519, ssh-rsa); ``ssh_passphrase`` opens a protected one (it is
    not used for any other key)."""
    if sshformat.looks_like_private_key(s):
        return parse_ssh_identity(s, ssh_passphrase)
    s = s.strip()
    hrp, data = bech32.decode(s)
    if not s.isupper():
        raise ParseError("The secret key is not valid: age secret keys are upper case.")
    if hrp == x25519.IDENTITY_HRP and len(data) == 32:
        return X25519Identity(data)
    if hrp == hybrid.IDENTITY_HRP and len(data) == 32:
        return HybridIdentity(data)
    if hrp.startswith("age-plugin-"):
        raise UnsupportedError("Plugin identities are not supported.")
    raise ParseError("The secret key is not a valid age identity (AGE-SECRET-KEY-...).")


def parse_identities(text: str) -> list[AnyIdentity]:
    """Every identity of an age identity file (blank lines and ``#`` comments skipped), or
    the one key of an unencrypted SSH private key file."""
    if sshformat.looks_like_private_key(text):
        return [parse_ssh_identity(text)]
    out: list[AnyIdentity] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(parse_identity(line))
    if not out:
        raise ParseError("No age secret key found.")
    return out


def identity_from_seed(
    key_type: str, seed: bytes | bytearray | memoryview, public: bytes | None = None
) -> AnyIdentity:
    """The identity of a stored secret (a 32-byte seed; an ssh-rsa key's PKCS#8 DER). It
    copies it into its own ``bytearray`` (the caller still wipes ``seed``); call its
    ``wipe()`` when the operation is done. ``public``: an X25519 seed's public key if the
    caller kept it (`public_of_seed`); the other types take none."""
    if key_type == "x25519":
        return X25519Identity(seed, public)
    if key_type == "mlkem768x25519":
        return HybridIdentity(seed)
    if key_type == "ssh-ed25519":
        return SshEd25519Identity(seed)
    if key_type == "ssh-rsa":
        return SshRsaIdentity(seed)
    raise UnsupportedError(f"Unknown key type {key_type!r}: use x25519 or mlkem768x25519.")


def public_of_seed(key_type: str, seed: bytearray) -> bytes | None:
    """What `identity_from_seed` may be handed back as ``public`` (None: nothing to keep)."""
    if key_type != "x25519":
        return None
    identity = X25519Identity(seed)
    try:
        return identity.public_bytes
    finally:
        identity.wipe()


def generate_identity(
    key_type: str = "x25519", rng: Callable[[int], bytes] = os.urandom
) -> X25519Identity | HybridIdentity:
    if key_type not in KEY_TYPES:
        raise UnsupportedError(f"Unknown key type {key_type!r}: use x25519 or mlkem768x25519.")
    # ``rng`` returns bytes, a copy that cannot be wiped: generating is rare (CreateKey),
    # and the decrypt path never comes here.
    seed = rng(32)
    return X25519Identity(seed) if key_type == "x25519" else HybridIdentity(seed)
