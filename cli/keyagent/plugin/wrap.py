"""Wrapping a file key to an agent key's public recipient (recipient-v1).

Public-key work only, so it runs in the plugin: the client must not import the agent's
package (docs/DESIGN.md). The formats are age's own (C2SP age: X25519; mlkem768x25519, HPKE
with X-Wing); the agent's tests decrypt what this makes.
"""

from __future__ import annotations

import binascii
import os

from keyagent import bech32
from keyagent.plugin.framing import Stanza
from keyagent.protocol import Malformed

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    from typing import Final

_X25519_INFO: Final = b"age-encryption.org/v1/X25519"
_PQ_INFO: Final = b"age-encryption.org/mlkem768x25519"
_MLKEM_PUBLIC: Final = 1184
_PQ_ENC: Final = 1120


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").decode("ascii")


def wrap(recipient: str, file_key: bytes) -> tuple[Stanza, bool]:
    """The stanza for ``recipient`` (``age1...``), and whether it is post-quantum."""
    hrp, public = bech32.decode(recipient)
    if hrp == "age" and len(public) == 32:
        return _x25519(public, file_key), False
    if hrp == "age1pq" and len(public) == _MLKEM_PUBLIC + 32:
        return _hybrid(public, file_key), True
    raise Malformed("The key's recipient is of a type this plugin cannot wrap to.")


def _x25519(public: bytes, file_key: bytes) -> Stanza:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ephemeral = X25519PrivateKey.from_private_bytes(os.urandom(32))
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
    salt = share + public
    key = HKDF(hashes.SHA256(), 32, salt, _X25519_INFO).derive(shared)
    body = ChaCha20Poly1305(key).encrypt(bytes(12), file_key, None)
    return Stanza("X25519", (_b64(share),), body)


def _hybrid(public: bytes, file_key: bytes) -> Stanza:
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    mlkem = MLKEM768PublicKey.from_public_bytes(public[:_MLKEM_PUBLIC])
    x25519 = X25519PublicKey.from_public_bytes(public[_MLKEM_PUBLIC:])
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    sealed = suite.encrypt(file_key, hpke.MLKEM768X25519PublicKey(mlkem, x25519), info=_PQ_INFO)
    return Stanza("mlkem768x25519", (_b64(sealed[:_PQ_ENC]),), sealed[_PQ_ENC:])
