"""The key-file format: parse, encode, seal and open (sans-IO: bytes in, bytes out).

A key file (stored by ``keyagentd.keystore``) is four ASCII lines,
each ending in ``\\n``, and nothing else::

    keyagent-key/v1
    {"aead":{"alg":"chacha20poly1305","nonce":"<b64>"},"created":1700000000,"kdf":{...},...}
    <base64 of the sealed secret + 16-byte tag: a 32-byte seed; for ssh-rsa, PKCS#8 DER>
    <lowercase hex SHA-256 of the three lines above, newlines included>

Line 1 is the format version. Line 2 is the header as canonical JSON (sorted
keys, no spaces, ASCII only) with exactly these fields::

    name       the key name (must match the file name)
    label      free text, at most 256 characters, no control characters
    type       "x25519", "mlkem768x25519", "ssh-ed25519" or "ssh-rsa"
    recipient  the public age1... string, or for an SSH key its authorized_keys
               form without comment ("ssh-ed25519 AAAA...")
    created    unix seconds
    kdf        {"alg": "argon2id", "version": 19, "memory_kib", "time_cost",
                "parallelism", "salt": base64 of 16 bytes}
    aead       {"alg": "chacha20poly1305", "nonce": base64 of 12 bytes}

The sealed box is ChaCha20-Poly1305 under the Argon2id key of the passphrase,
with the exact bytes of lines 1 and 2 as associated data: editing any header
field makes the box fail to open. The checksum line is not a security measure
(anyone who can edit the file can recompute it); it tells corruption apart from
a wrong passphrase, so a damaged file reports ``Integrity`` and the store can
skip it without a passphrase. A deliberate edit that also fixes the checksum
fails the AEAD tag, which is indistinguishable from a wrong passphrase and
reported as ``BadPassphrase``; it never yields a seed.

Parsing is strict: unknown versions (``Unsupported``), missing, extra or
duplicate fields, non-canonical JSON or base64, wrong lengths, trailing data,
and KDF parameters outside ``keyagentd.kdf``'s bounds are all rejected
(``Malformed``) before any key derivation runs.

Passphrases are UTF-8 encoded as given (no normalisation, like age) and must
not be empty: unlike ssh-agent, an empty passphrase would leave the key in
the clear in all but name, and age refuses it for ``-p`` too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from keyagent.protocol import (
    KEY_TYPE_SSH_RSA,
    STORED_KEY_TYPES,
    BadPassphrase,
    Integrity,
    Malformed,
    Unsupported,
    is_valid_key_name,
)
from keyagentd import age, kdf
from keyagentd.age import sshformat
from keyagentd.errors import wire_error
from keyagentd.kdf import KdfParams, check_params
from keyagentd.secrets import wipe

MAGIC: Final = b"keyagent-key/v1"
_MAGIC_FAMILY: Final = b"keyagent-key/"
SEED_LEN: Final = 32
#: An ssh-rsa key's PKCS#8 DER: 2048 bits take ~1.2 KB, 8192 bits ~4.8 KB.
RSA_SECRET_LEN: Final = range(64, 12 * 1024 + 1)
NONCE_LEN: Final = 12
TAG_LEN: Final = 16
BOX_LEN: Final = SEED_LEN + TAG_LEN
MAX_LABEL_LEN: Final = 256
MAX_RECIPIENT_LEN: Final = 4096
#: Far above any real key file (a hybrid recipient is ~2 KB); bounds what a read may allocate.
MAX_FILE_SIZE: Final = 32 * 1024
AEAD_ALG: Final = "chacha20poly1305"

_RECIPIENT_RE: Final = re.compile(r"age1[a-z0-9]+|ssh-(ed25519|rsa) [A-Za-z0-9+/]+={0,2}")
_HEX64_RE: Final = re.compile(rb"[0-9a-f]{64}")
_TOP_FIELDS: Final = frozenset({"name", "label", "type", "recipient", "created", "kdf", "aead"})
_KDF_FIELDS: Final = frozenset({"alg", "version", "memory_kib", "time_cost", "parallelism", "salt"})
_AEAD_FIELDS: Final = frozenset({"alg", "nonce"})


@dataclass(frozen=True)
class KeyRecord:
    """The public facts about a stored key (everything but the sealed seed)."""

    name: str
    label: str
    key_type: str
    recipient: str
    created: int


@dataclass(frozen=True)
class SealedKey:
    """A parsed key file: ``header`` is the associated data of ``box``."""

    record: KeyRecord
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    header: bytes
    box: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, length: int | range, what: str) -> bytes:
    if not isinstance(text, str):
        raise Malformed(f"The key file's {what} is not a string.")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Malformed(f"The key file's {what} is not valid base64.") from None
    sizes = length if isinstance(length, range) else range(length, length + 1)
    if len(raw) not in sizes or _b64(raw) != text:
        raise Malformed(f"The key file's {what} has the wrong length or encoding.")
    return raw


def _canonical_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_label(label: str) -> None:
    """Raise ``Malformed`` unless ``label`` is short, printable text."""
    if len(label) > MAX_LABEL_LEN:
        raise Malformed(f"A key label may have at most {MAX_LABEL_LEN} characters.")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in label):
        raise Malformed("A key label must not contain control characters.")


def check_recipient(recipient: str) -> None:
    if len(recipient) > MAX_RECIPIENT_LEN or not _RECIPIENT_RE.fullmatch(recipient):
        raise Malformed("The recipient is not an age1... or SSH public key.")
    if recipient.startswith("ssh-"):
        try:
            sshformat.parse_public_line(recipient)  # the type inside must match the prefix
        except age.AgeError as exc:
            raise wire_error(exc) from None


def secret_len_ok(key_type: str, size: int) -> bool:
    """Whether ``size`` bytes can be the sealed secret of a ``key_type`` key."""
    return size in RSA_SECRET_LEN if key_type == KEY_TYPE_SSH_RSA else size == SEED_LEN


def _header_bytes(record: KeyRecord, params: KdfParams, salt: bytes, nonce: bytes) -> bytes:
    header = {
        "name": record.name,
        "label": record.label,
        "type": record.key_type,
        "recipient": record.recipient,
        "created": record.created,
        "kdf": {
            "alg": kdf.ALGORITHM,
            "version": kdf.VERSION,
            "memory_kib": params.memory_kib,
            "time_cost": params.time_cost,
            "parallelism": params.parallelism,
            "salt": _b64(salt),
        },
        "aead": {"alg": AEAD_ALG, "nonce": _b64(nonce)},
    }
    return MAGIC + b"\n" + _canonical_json(header) + b"\n"


def encode_key_file(sealed: SealedKey) -> bytes:
    body = sealed.header + _b64(sealed.box).encode() + b"\n"
    return body + hashlib.sha256(body).hexdigest().encode() + b"\n"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Malformed("The key file's header repeats a field.")
    return obj


def _reject_constant(token: str) -> None:
    raise Malformed("The key file's header holds a non-numeric number.")


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj[key]
    if type(value) is not kind:  # exact: bool is an int subclass, and floats are not ints
        raise Malformed(f"The key file's {key!r} field has the wrong type.")
    return value


def parse_key_file(data: bytes, expected_name: str | None = None) -> SealedKey:
    """Parse and validate a key file; raises Malformed, Integrity or Unsupported."""
    if len(data) > MAX_FILE_SIZE:
        raise Malformed("The key file is too large.")
    lines = data.split(b"\n")
    if lines[0] != MAGIC:
        if lines[0].startswith(_MAGIC_FAMILY) and len(lines[0]) < 64:
            version = lines[0][len(_MAGIC_FAMILY) :].decode("ascii", "replace")
            raise Unsupported(f"Key file format {version!r} is not supported by this agent.")
        raise Malformed("This is not a keyagent key file.")
    if len(lines) != 5 or lines[4] != b"":
        raise Malformed("The key file is truncated or has extra data.")
    body = b"\n".join(lines[:3]) + b"\n"
    digest = hashlib.sha256(body).hexdigest().encode()
    if not _HEX64_RE.fullmatch(lines[3]) or not hmac.compare_digest(digest, lines[3]):
        raise Integrity("The key file is damaged: its checksum does not match.")

    try:
        header = json.loads(
            lines[1].decode("ascii"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Malformed("The key file's header is not valid JSON.") from None
    if not isinstance(header, dict) or _canonical_json(header) != lines[1]:
        raise Malformed("The key file's header is not in canonical form.")
    if set(header) != _TOP_FIELDS:
        raise Malformed("The key file's header has missing or unknown fields.")
    kdf_obj, aead_obj = _field(header, "kdf", dict), _field(header, "aead", dict)
    if set(kdf_obj) != _KDF_FIELDS or set(aead_obj) != _AEAD_FIELDS:
        raise Malformed("The key file's kdf or aead entry has missing or unknown fields.")
    if kdf_obj["alg"] != kdf.ALGORITHM or _field(kdf_obj, "version", int) != kdf.VERSION:
        raise Unsupported("The key file uses a key derivation this agent does not support.")
    if aead_obj["alg"] != AEAD_ALG:
        raise Unsupported("The key file uses a cipher this agent does not support.")

    params = KdfParams(
        memory_kib=_field(kdf_obj, "memory_kib", int),
        time_cost=_field(kdf_obj, "time_cost", int),
        parallelism=_field(kdf_obj, "parallelism", int),
    )
    try:
        check_params(params)
    except ValueError as exc:
        raise Malformed(f"The key file's {exc}") from None
    record = KeyRecord(
        name=_field(header, "name", str),
        label=_field(header, "label", str),
        key_type=_field(header, "type", str),
        recipient=_field(header, "recipient", str),
        created=_field(header, "created", int),
    )
    if not is_valid_key_name(record.name):
        raise Malformed("The key file names an invalid key.")
    if expected_name is not None and record.name != expected_name:
        raise Malformed(f"The key file for {expected_name!r} names another key.")
    if record.key_type not in STORED_KEY_TYPES:
        raise Unsupported(f"Key type {record.key_type!r} is not supported by this agent.")
    if not 0 <= record.created < 2**63:
        raise Malformed("The key file's creation time is out of range.")
    check_label(record.label)
    check_recipient(record.recipient)
    prefix = record.key_type + " " if record.key_type.startswith("ssh-") else "age1"
    if not record.recipient.startswith(prefix):
        raise Malformed("The key file's recipient does not fit its type.")
    box_sizes = range(SEED_LEN + TAG_LEN, SEED_LEN + TAG_LEN + 1)
    if record.key_type == KEY_TYPE_SSH_RSA:
        box_sizes = range(RSA_SECRET_LEN.start + TAG_LEN, RSA_SECRET_LEN.stop + TAG_LEN)
    return SealedKey(
        record=record,
        kdf=params,
        salt=_unb64(kdf_obj["salt"], kdf.SALT_LEN, "salt"),
        nonce=_unb64(aead_obj["nonce"], NONCE_LEN, "nonce"),
        header=body[: len(lines[0]) + len(lines[1]) + 2],
        box=_unb64(lines[2].decode("ascii", "replace"), box_sizes, "sealed key"),
    )


def encode_passphrase(passphrase: str) -> bytes:
    """The passphrase as UTF-8; ``BadPassphrase`` if it is empty or not encodable."""
    if not passphrase:
        raise BadPassphrase("The passphrase must not be empty.")
    try:
        return passphrase.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPassphrase("The passphrase is not valid text.") from None


def seal(
    record: KeyRecord,
    seed: bytes | bytearray,
    passphrase: str,
    params: KdfParams,
    rng: Callable[[int], bytes],
) -> SealedKey:
    """Seal ``seed`` (the key's secret) under ``passphrase`` with a fresh salt and nonce."""
    secret = encode_passphrase(passphrase)
    salt, nonce = rng(kdf.SALT_LEN), rng(NONCE_LEN)
    header = _header_bytes(record, params, salt, nonce)
    box = bytearray(len(seed) + TAG_LEN)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # not at start

    ChaCha20Poly1305(kdf.derive_key(secret, salt, params)).encrypt_into(nonce, seed, header, box)
    return SealedKey(record, params, salt, nonce, header, bytes(box))


def open_sealed(sealed: SealedKey, passphrase: str) -> bytearray:
    """The secret in ``sealed``; ``BadPassphrase`` if the tag does not verify."""
    key = kdf.derive_key(encode_passphrase(passphrase), sealed.salt, sealed.kdf)
    seed = bytearray(len(sealed.box) - TAG_LEN)
    from cryptography.exceptions import InvalidTag  # here: cryptography is not needed at start
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    try:
        ChaCha20Poly1305(key).decrypt_into(sealed.nonce, sealed.box, sealed.header, seed)
    except InvalidTag:
        wipe(seed)
        raise BadPassphrase() from None
    return seed
