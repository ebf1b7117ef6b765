"""Sealed age identities on disk, one passphrase-protected file per key.

Key file ``<root>/<name>.key`` (mode 0600, directory 0700) is four ASCII lines,
each ending in ``\\n``, and nothing else::

    keyagent-key/v1
    {"aead":{"alg":"chacha20poly1305","nonce":"<b64>"},"created":1700000000,"kdf":{...},...}
    <base64 of the sealed seed: 32 bytes + 16-byte tag>
    <lowercase hex SHA-256 of the three lines above, newlines included>

Line 1 is the format version. Line 2 is the header as canonical JSON (sorted
keys, no spaces, ASCII only) with exactly these fields::

    name       the key name (must match the file name)
    label      free text, at most 256 characters, no control characters
    type       "x25519" or "mlkem768x25519"
    recipient  the public age1... string
    created    unix seconds
    kdf        {"alg": "argon2id", "version": 19, "memory_kib", "time_cost",
                "parallelism", "salt": base64 of 16 bytes}
    aead       {"alg": "chacha20poly1305", "nonce": base64 of 12 bytes}

The sealed box is ChaCha20-Poly1305 under the Argon2id key of the passphrase,
with the exact bytes of lines 1 and 2 as associated data: editing any header
field makes the box fail to open. The checksum line is not a security measure
(anyone who can edit the file can recompute it); it tells corruption apart from
a wrong passphrase, so a damaged file reports ``Integrity`` and ``list()`` can
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

The keystore stores whatever seed and recipient it is given; making sure they
belong together is the caller's job (it has the age code).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyagent.protocol import (
    KEY_TYPES,
    BadPassphrase,
    Failed,
    Integrity,
    InvalidName,
    KeyAgentError,
    KeyExists,
    Malformed,
    NoSuchKey,
    Unsupported,
    is_valid_key_name,
)
from keyagentd import kdf
from keyagentd.atomic import AtomicWriter, FileOps
from keyagentd.kdf import KdfParams, check_params
from keyagentd.secrets import wipe

log = logging.getLogger(__name__)

MAGIC: Final = b"keyagent-key/v1"
_MAGIC_FAMILY: Final = b"keyagent-key/"
SUFFIX: Final = ".key"
SEED_LEN: Final = 32
NONCE_LEN: Final = 12
BOX_LEN: Final = SEED_LEN + 16
MAX_LABEL_LEN: Final = 256
MAX_RECIPIENT_LEN: Final = 4096
#: Far above any real key file (a hybrid recipient is ~2 KB); bounds what a read may allocate.
MAX_FILE_SIZE: Final = 32 * 1024
AEAD_ALG: Final = "chacha20poly1305"

_RECIPIENT_RE: Final = re.compile(r"age1[a-z0-9]+")
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


# --- the file format ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, length: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise Malformed(f"The key file's {what} is not a string.")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Malformed(f"The key file's {what} is not valid base64.") from None
    if len(raw) != length or _b64(raw) != text:
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
        raise Malformed("The recipient is not an age1... public key.")


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
    if record.key_type not in KEY_TYPES:
        raise Unsupported(f"Key type {record.key_type!r} is not supported by this agent.")
    if not 0 <= record.created < 2**63:
        raise Malformed("The key file's creation time is out of range.")
    check_label(record.label)
    check_recipient(record.recipient)
    return SealedKey(
        record=record,
        kdf=params,
        salt=_unb64(kdf_obj["salt"], kdf.SALT_LEN, "salt"),
        nonce=_unb64(aead_obj["nonce"], NONCE_LEN, "nonce"),
        header=body[: len(lines[0]) + len(lines[1]) + 2],
        box=_unb64(lines[2].decode("ascii", "replace"), BOX_LEN, "sealed key"),
    )


def _encode_passphrase(passphrase: str) -> bytes:
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
    """Seal ``seed`` under ``passphrase`` with a fresh salt and nonce."""
    secret = _encode_passphrase(passphrase)
    salt, nonce = rng(kdf.SALT_LEN), rng(NONCE_LEN)
    header = _header_bytes(record, params, salt, nonce)
    box = bytearray(BOX_LEN)
    ChaCha20Poly1305(kdf.derive_key(secret, salt, params)).encrypt_into(nonce, seed, header, box)
    return SealedKey(record, params, salt, nonce, header, bytes(box))


def open_sealed(sealed: SealedKey, passphrase: str) -> bytearray:
    """The seed in ``sealed``; ``BadPassphrase`` if the tag does not verify."""
    key = kdf.derive_key(_encode_passphrase(passphrase), sealed.salt, sealed.kdf)
    seed = bytearray(SEED_LEN)
    try:
        ChaCha20Poly1305(key).decrypt_into(sealed.nonce, sealed.box, sealed.header, seed)
    except InvalidTag:
        wipe(seed)
        raise BadPassphrase() from None
    return seed


# --- the store ------------------------------------------------------------------------------


class KeyStore:
    """The directory of sealed key files. Mutations are serialised within the process."""

    def __init__(
        self,
        root: Path,
        *,
        kdf: KdfParams = KdfParams(),  # noqa: B008 - frozen, so a shared default is safe
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
        ops: FileOps | None = None,
    ) -> None:
        check_params(kdf)
        self.root = root
        self.kdf = kdf
        self._rng = rng
        self._clock = clock
        self._writer = AtomicWriter(root, ops=ops, rng=rng)
        self._lock = threading.Lock()

    @staticmethod
    def default_root() -> Path:
        """$KEYAGENT_HOME, else $XDG_DATA_HOME/keyagent, else ~/.local/share/keyagent."""
        home = os.environ.get("KEYAGENT_HOME")
        if home:
            return Path(home)
        data = os.environ.get("XDG_DATA_HOME")
        # The XDG spec says a relative $XDG_DATA_HOME is invalid and must be ignored.
        if data and os.path.isabs(data):
            return Path(data) / "keyagent"
        return Path.home() / ".local" / "share" / "keyagent"

    def prepare(self) -> None:
        """Create the directory (0700) or check it is private; clear interrupted writes."""
        path = self.root
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # lost a race: checked below
                path.mkdir(mode=0o700)
        try:
            st = path.stat()
        except OSError as exc:
            raise Failed(f"Cannot use the keystore directory {path}: {exc.strerror}.") from None
        if not stat.S_ISDIR(st.st_mode):
            raise Failed(
                f"The keystore path {path} is not a directory: move it aside or set KEYAGENT_HOME."
            )
        if st.st_uid != os.geteuid():
            raise Failed(
                f"The keystore directory {path} belongs to uid {st.st_uid}, not to you "
                f"(uid {os.geteuid()}): run 'chown {os.geteuid()} {path}' or set KEYAGENT_HOME."
            )
        if st.st_mode & 0o077:
            raise Failed(
                f"The keystore directory {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to "
                f"other users: run 'chmod 700 {path}'."
            )
        for leftover in self._writer.remove_leftovers():
            log.info("Removed %s left by an interrupted write in %s", leftover, path)
        for entry in os.scandir(path):
            # Not fatal (the directory is private), but a copied-in file may be world-readable.
            if entry.name.endswith(SUFFIX) and entry.stat(follow_symlinks=False).st_mode & 0o077:
                log.warning(
                    "Key file %s is readable by others: run 'chmod 600 %s'", entry.path, entry.path
                )

    def list(self) -> list[KeyRecord]:
        """Every readable key, sorted by name; damaged files are skipped with a warning."""
        records = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.name.endswith(SUFFIX) or entry.name.startswith("."):
                continue
            name = entry.name[: -len(SUFFIX)]
            if not is_valid_key_name(name):
                log.warning("Skipping %s: not a valid key name", entry.path)
                continue
            try:
                records.append(self._read(name).record)
            except KeyAgentError as exc:
                log.warning("Skipping key file %s: %s", entry.path, exc.message)
        return records

    def get(self, name: str) -> KeyRecord:
        return self._read(name).record

    def create(
        self,
        name: str,
        key_type: str,
        seed: bytes | bytearray,
        recipient: str,
        passphrase: str,
        label: str = "",
    ) -> KeyRecord:
        """Seal and store a new key; never replaces an existing one (``KeyExists``)."""
        path = self._path(name)
        if key_type not in KEY_TYPES:
            raise Unsupported(
                f"Key type {key_type!r} is not supported: use one of {', '.join(KEY_TYPES)}."
            )
        if len(seed) != SEED_LEN:
            raise Malformed(f"A key seed must be {SEED_LEN} bytes.")
        check_label(label)
        check_recipient(recipient)
        if os.path.lexists(
            path
        ):  # fail fast, before the slow KDF; the link below is the real check
            raise KeyExists(f"A key named {name!r} already exists.")
        record = KeyRecord(name, label, key_type, recipient, int(self._clock()))
        data = encode_key_file(seal(record, seed, passphrase, self.kdf, self._rng))
        with self._lock:
            try:
                self._writer.create(path.name, data)
            except FileExistsError:
                raise KeyExists(f"A key named {name!r} already exists.") from None
            except OSError as exc:
                raise Failed(
                    f"Could not write the key file for {name!r}: {exc.strerror}."
                ) from None
        return record

    def unseal(self, name: str, passphrase: str) -> bytearray:
        """The key's 32-byte seed (the caller wipes it); ``BadPassphrase`` if wrong."""
        return open_sealed(self._read(name), passphrase)

    def change_passphrase(self, name: str, old: str, new: str) -> None:
        """Re-seal under ``new`` with a fresh salt and nonce and the store's KDF parameters."""
        _encode_passphrase(new)
        with self._lock:  # so a concurrent delete cannot be undone by our rename
            sealed = self._read(name)
            seed = open_sealed(sealed, old)
            try:
                data = encode_key_file(seal(sealed.record, seed, new, self.kdf, self._rng))
            finally:
                wipe(seed)
            try:
                self._writer.replace(self._path(name).name, data)
            except OSError as exc:
                raise Failed(
                    f"Could not rewrite the key file for {name!r}: {exc.strerror}."
                ) from None

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self._lock:
            try:
                self._writer.remove(path.name)
            except FileNotFoundError:
                raise NoSuchKey(f"There is no key named {name!r}.") from None
            except OSError as exc:
                raise Failed(
                    f"Could not delete the key file for {name!r}: {exc.strerror}."
                ) from None

    def _path(self, name: str) -> Path:
        if not is_valid_key_name(name):
            raise InvalidName(f"Invalid key name {name!r}: use 1-64 letters, digits, '_' or '-'.")
        return self.root / (name + SUFFIX)

    def _read(self, name: str) -> SealedKey:
        path = self._path(name)
        try:
            # O_NOFOLLOW: a key file is a regular file in our own directory, never a symlink.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NoSuchKey(f"There is no key named {name!r}.") from None
        except OSError as exc:
            raise Failed(f"Cannot open the key file for {name!r}: {exc.strerror}.") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Malformed(f"The key file for {name!r} is not a regular file.")
            data = b""
            while len(data) <= MAX_FILE_SIZE:
                chunk = os.read(fd, MAX_FILE_SIZE + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise Failed(f"Cannot read the key file for {name!r}: {exc.strerror}.") from None
        finally:
            os.close(fd)
        return parse_key_file(data, expected_name=name)
