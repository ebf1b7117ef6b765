"""A sans-IO age v1 engine (C2SP age): header, STREAM payload, armor, and the
X25519, post-quantum hybrid (mlkem768x25519), scrypt and SSH (ssh-ed25519,
ssh-rsa) recipient types.

Errors are the engine's own (errors.py, no D-Bus and no agent names): ParseError
(not age, bad header, bad armor), HeaderMacError, PayloadError (a payload chunk
failed or the file is cut short), NoMatchError (no identity opens the file),
UnsupportedError (a format or feature not handled), PassphraseError (an OpenSSH
key's own passphrase is wrong or missing); the agent maps them to its
wire errors in one table. I/O errors of the caller's file objects (OSError) pass
through unchanged. Streams work on any object with ``readinto``/``write``.

Choices where the spec leaves room (each matches age/rage unless noted):
- Behaviour follows the C2SP conformance vectors, including what is released
  on a damaged payload: every chunk that authenticated, nothing after.
- A scrypt work factor above the identity's cap (default 22) is UnsupportedError,
  refused before any key derivation; one above 64 or not canonical decimal
  is ParseError. ``ScryptRecipient(work_factor=None)`` targets ~1 s, 18..20.
- A header larger than 1 MiB or with more than 1024 stanzas is a ParseError;
  encrypting to more than that (or ~670+ hybrid recipients) is a TooLargeError.
- Armor is detected when the first non-blank byte is ``-``; LF or CRLF lines
  and up to 1 KiB of whitespace around the block are accepted.
- A file with an scrypt stanza must have exactly one stanza (ParseError
  otherwise), whatever identities are tried.
- The hybrid's encapsulation randomness comes from OpenSSL (``rng`` is used
  for file keys, nonces, X25519 shares and scrypt salts only).
- ``Decryptor.decrypt_to(progress=...)`` reports the running plaintext total
  after each batch written: batches of 1, 2, 4... up to 16 chunks of 64 KiB
  by default, the batches of the runner passed as ``output`` otherwise
  (age/batches.py).
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Decryptor, check_recipient_count, decrypt, encrypt
    from .errors import (
        AgeError,
        ArmorError,
        HeaderMacError,
        NoMatchError,
        ParseError,
        PassphraseError,
        PayloadError,
        TooLargeError,
        UnsupportedError,
    )
    from .format import Stanza
    from .hybrid import HybridIdentity, HybridRecipient
    from .keys import (
        KEY_TYPES,
        STANZA_TYPES,
        AnyIdentity,
        AnyRecipient,
        Identity,
        KeyType,
        Recipient,
        generate_identity,
        identity_from_seed,
        is_recipient_text,
        may_open,
        parse_identities,
        parse_identity,
        parse_recipient,
        public_of_seed,
    )
    from .scrypt import ScryptIdentity, ScryptRecipient
    from .ssh import SshEd25519Identity, SshEd25519Recipient, SshRsaIdentity, SshRsaRecipient
    from .x25519 import X25519Identity, X25519Recipient

#: Where each public name lives: the package loads a submodule on first use (PEP 562), so
#: importing `keyagentd.age` (the agent does so at start) costs nothing until a key or file
#: is handled; the SSH and hybrid types pull in most of `cryptography`.
_LAZY: dict[str, str] = {
    "Decryptor": "engine",
    "check_recipient_count": "engine",
    "decrypt": "engine",
    "encrypt": "engine",
    "AgeError": "errors",
    "ArmorError": "errors",
    "HeaderMacError": "errors",
    "NoMatchError": "errors",
    "ParseError": "errors",
    "PassphraseError": "errors",
    "PayloadError": "errors",
    "TooLargeError": "errors",
    "UnsupportedError": "errors",
    "Stanza": "format",
    "HybridIdentity": "hybrid",
    "HybridRecipient": "hybrid",
    "KEY_TYPES": "keys",
    "STANZA_TYPES": "keys",
    "AnyIdentity": "keys",
    "AnyRecipient": "keys",
    "Identity": "keys",
    "KeyType": "keys",
    "Recipient": "keys",
    "generate_identity": "keys",
    "identity_from_seed": "keys",
    "is_recipient_text": "keys",
    "may_open": "keys",
    "parse_identities": "keys",
    "parse_identity": "keys",
    "parse_recipient": "keys",
    "public_of_seed": "keys",
    "ScryptIdentity": "scrypt",
    "ScryptRecipient": "scrypt",
    "SshEd25519Identity": "ssh",
    "SshEd25519Recipient": "ssh",
    "SshRsaIdentity": "ssh",
    "SshRsaRecipient": "ssh",
    "X25519Identity": "x25519",
    "X25519Recipient": "x25519",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module("." + module, __name__), name)
        globals()[name] = value
        return value


__all__ = [
    "KEY_TYPES",
    "STANZA_TYPES",
    "AgeError",
    "AnyIdentity",
    "AnyRecipient",
    "ArmorError",
    "Decryptor",
    "HeaderMacError",
    "HybridIdentity",
    "HybridRecipient",
    "Identity",
    "KeyType",
    "NoMatchError",
    "ParseError",
    "PassphraseError",
    "PayloadError",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "SshEd25519Identity",
    "SshEd25519Recipient",
    "SshRsaIdentity",
    "SshRsaRecipient",
    "Stanza",
    "TooLargeError",
    "UnsupportedError",
    "X25519Identity",
    "X25519Recipient",
    "check_recipient_count",
    "decrypt",
    "decrypt_bytes",
    "encrypt",
    "encrypt_bytes",
    "generate_identity",
    "identity_from_seed",
    "is_recipient_text",
    "may_open",
    "parse_identities",
    "parse_identity",
    "parse_recipient",
    "public_of_seed",
]


def encrypt_bytes(
    recipients: Sequence[Recipient],
    data: bytes,
    *,
    armor: bool = False,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    from .engine import encrypt

    out = io.BytesIO()
    encrypt(recipients, io.BytesIO(data), out, armor=armor, rng=rng)
    return out.getvalue()


def decrypt_bytes(identities: Sequence[Identity], data: bytes) -> bytes:
    """Decrypt a whole file in memory; no plaintext is returned unless all of it
    authenticated."""
    from .engine import decrypt

    out = io.BytesIO()
    decrypt(identities, io.BytesIO(data), out)
    return out.getvalue()
