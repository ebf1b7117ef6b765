"""Sealed age identities on disk, one passphrase-protected file per key.

Key file ``<root>/<name>.key`` (mode 0600, directory 0700) holds one sealed
seed in the format of ``keyagentd.keyfile``; this module does the directory
and file handling: permission checks, atomic writes, strict reads.

The keystore stores whatever seed and recipient it is given; making sure they
belong together is the caller's job (it has the age code).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from keyagent.protocol import (
    STORED_KEY_TYPES,
    Failed,
    InvalidName,
    KeyAgentError,
    KeyExists,
    Malformed,
    NoSuchKey,
    Unsupported,
    is_valid_key_name,
)
from keyagentd.atomic import AtomicWriter, FileOps
from keyagentd.kdf import KdfParams, check_params
from keyagentd.keyfile import (
    MAX_FILE_SIZE,
    KeyRecord,
    SealedKey,
    check_label,
    check_recipient,
    encode_key_file,
    encode_passphrase,
    open_sealed,
    parse_key_file,
    seal,
    secret_len_ok,
)
from keyagentd.secrets import wipe

# KeyRecord lives with the format but is re-exported: the bus layer imports it from here.
__all__ = ["SUFFIX", "KeyRecord", "KeyStore"]

log = logging.getLogger(__name__)

SUFFIX: Final = ".key"


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
        if key_type not in STORED_KEY_TYPES:
            raise Unsupported(
                f"Key type {key_type!r} is not supported: use one of {', '.join(STORED_KEY_TYPES)}."
            )
        if not secret_len_ok(key_type, len(seed)):
            raise Malformed(f"The secret has the wrong size for a {key_type} key.")
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
        """The key's secret (a 32-byte seed; an ssh-rsa key's DER), which the caller wipes;
        ``BadPassphrase`` if wrong."""
        return open_sealed(self._read(name), passphrase)

    def change_passphrase(self, name: str, old: str, new: str) -> None:
        """Re-seal under ``new`` with a fresh salt and nonce and the store's KDF parameters."""
        encode_passphrase(new)
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
