"""Argon2id passphrase key derivation for sealed key files.

Parameters are stored per key file and read back from disk, so anything read
is checked against hard bounds before use: a crafted file must not make the
agent allocate unbounded memory or spin for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

ALGORITHM: Final = "argon2id"
#: Argon2 version 1.3 (0x13), the only one RFC 9106 describes.
VERSION: Final = 0x13
KEY_LEN: Final = 32
SALT_LEN: Final = 16

#: Upper bounds accepted from a file (1 GiB, 10 passes, 16 lanes).
MAX_MEMORY_KIB: Final = 1024 * 1024
MAX_TIME_COST: Final = 10
MAX_PARALLELISM: Final = 16
#: Argon2 itself needs at least 8 KiB per lane; lower bounds are Argon2's own minimums.
MIN_MEMORY_KIB_PER_LANE: Final = 8


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters. Defaults: 64 MiB, 3 passes, 4 lanes (about 0.15 s here)."""

    memory_kib: int = 65536
    time_cost: int = 3
    parallelism: int = 4


def check_params(params: KdfParams) -> None:
    """Raise ``ValueError`` (one sentence) unless ``params`` lie within the accepted bounds."""
    p, t, m = params.parallelism, params.time_cost, params.memory_kib
    if not all(type(v) is int for v in (p, t, m)):
        raise ValueError("Argon2id parameters must be integers.")
    if not 1 <= p <= MAX_PARALLELISM:
        raise ValueError(f"Argon2id parallelism {p} is outside 1..{MAX_PARALLELISM}.")
    if not 1 <= t <= MAX_TIME_COST:
        raise ValueError(f"Argon2id time cost {t} is outside 1..{MAX_TIME_COST}.")
    if not MIN_MEMORY_KIB_PER_LANE * p <= m <= MAX_MEMORY_KIB:
        raise ValueError(
            f"Argon2id memory {m} KiB is outside {MIN_MEMORY_KIB_PER_LANE * p}..{MAX_MEMORY_KIB}."
        )


def derive_key(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """The 32-byte sealing key for ``passphrase`` (checked parameters only)."""
    check_params(params)
    if len(salt) != SALT_LEN:
        raise ValueError(f"Argon2id salt must be {SALT_LEN} bytes.")
    # Imported on first use: argon2 (cffi) costs ~15 ms of start-up, and most activations
    # (a Decrypt with the key already unlocked... or a LockAll) never derive a key.
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_LEN,
        type=Type.ID,
        version=VERSION,
    )
