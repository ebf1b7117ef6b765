"""Argon2id: known-answer vectors and the parameter bounds applied to key files."""

from __future__ import annotations

import pytest
from argon2.low_level import ARGON2_VERSION, Type, core, ffi, hash_secret_raw, lib

from keyagentd import kdf
from keyagentd.kdf import KdfParams, check_params, derive_key


def argon2id_full(
    password: bytes, salt: bytes, secret: bytes, ad: bytes, *, t: int, m: int, p: int, n: int = 32
) -> bytes:
    """Argon2id with a secret and associated data: only the raw C context exposes those."""
    out = ffi.new("uint8_t[]", n)
    bufs = [ffi.new("uint8_t[]", x) if x else ffi.NULL for x in (password, salt, secret, ad)]
    ctx = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": n,
            "pwd": bufs[0],
            "pwdlen": len(password),
            "salt": bufs[1],
            "saltlen": len(salt),
            "secret": bufs[2],
            "secretlen": len(secret),
            "ad": bufs[3],
            "adlen": len(ad),
            "t_cost": t,
            "m_cost": m,
            "lanes": p,
            "threads": p,
            "version": ARGON2_VERSION,
            "allocate_cbk": ffi.NULL,
            "free_cbk": ffi.NULL,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    assert core(ctx, Type.ID.value) == lib.ARGON2_OK
    return bytes(ffi.buffer(out, n))


def test_rfc9106_argon2id_vector() -> None:
    # RFC 9106 section 5.3 (Argon2id, version 0x13).
    tag = argon2id_full(b"\x01" * 32, b"\x02" * 16, b"\x03" * 8, b"\x04" * 12, t=3, m=32, p=4)
    assert tag.hex() == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


def test_reference_implementation_vectors() -> None:
    # phc-winner-argon2 src/test.c, Argon2id v=0x13: t=2, m=2^8 and 2^16, p=1,
    # password "password", salt "somesalt".
    def h(m: int) -> str:
        return hash_secret_raw(
            b"password", b"somesalt", time_cost=2, memory_cost=m, parallelism=1,
            hash_len=32, type=Type.ID, version=0x13,
        ).hex()  # fmt: skip

    assert h(256) == "9dfeb910e80bad0311fee20f9c0e2b12c17987b4cac90c2ef54d5b3021c68bfe"
    assert h(65536) == "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"


@pytest.mark.parametrize("params", [KdfParams(256, 1, 1), KdfParams(64, 2, 4), KdfParams(8, 1, 1)])
def test_derive_key_is_plain_argon2id(params: KdfParams) -> None:
    salt = bytes(range(16))
    expected = argon2id_full(
        "pässword".encode(), salt, b"", b"", t=params.time_cost, m=params.memory_kib,
        p=params.parallelism,
    )  # fmt: skip
    assert derive_key("pässword".encode(), salt, params) == expected


def test_bounds() -> None:
    check_params(KdfParams())
    check_params(KdfParams(memory_kib=8, time_cost=1, parallelism=1))  # Argon2's own minimum
    check_params(KdfParams(memory_kib=kdf.MAX_MEMORY_KIB, time_cost=10, parallelism=16))
    for bad in (
        KdfParams(memory_kib=kdf.MAX_MEMORY_KIB + 1),
        KdfParams(memory_kib=31, parallelism=4),
        KdfParams(time_cost=0),
        KdfParams(time_cost=11),
        KdfParams(parallelism=0),
        KdfParams(parallelism=17),
        KdfParams(memory_kib=True),  # type: ignore[arg-type]
        KdfParams(time_cost=3.0),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError):
            check_params(bad)
        with pytest.raises(ValueError):
            derive_key(b"x", bytes(16), bad)


def test_salt_length_enforced() -> None:
    with pytest.raises(ValueError):
        derive_key(b"x", bytes(8), KdfParams(256, 1, 1))
