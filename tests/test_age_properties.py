"""Property tests: round trips of any size and recipient mix; no single bit flip
ever yields plaintext other than the original."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyagentd import age
from keyagentd.age.stream import CHUNK

X_IDS = [age.generate_identity("x25519", rng=random.Random(i).randbytes) for i in range(3)]
PQ_IDS = [
    age.generate_identity("mlkem768x25519", rng=random.Random(10 + i).randbytes) for i in range(2)
]

sizes = st.one_of(
    st.integers(0, 300),
    st.sampled_from([CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1]),
    st.integers(0, 3 * CHUNK),
)


@st.composite
def recipient_sets(draw: st.DrawFn) -> tuple[list[age.Recipient], list[age.Identity]]:
    kind = draw(st.sampled_from(["x25519", "pq", "scrypt"]))
    if kind == "scrypt":
        pw = draw(st.text(min_size=1, max_size=20))
        return [age.ScryptRecipient(pw, work_factor=2)], [age.ScryptIdentity(pw)]
    pool = X_IDS if kind == "x25519" else PQ_IDS
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=len(pool), unique_by=id))
    opener = draw(st.sampled_from(chosen))
    decoys = [i for i in [*X_IDS, *PQ_IDS] if i not in chosen][:1]
    recipients: list[age.Recipient] = [i.recipient() for i in chosen]
    identities: list[age.Identity] = [*decoys, opener]
    return recipients, identities


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, seed=st.integers(0, 2**32), mix=recipient_sets(), armor=st.booleans())
def test_round_trip(
    size: int, seed: int, mix: tuple[list[age.Recipient], list[age.Identity]], armor: bool
) -> None:
    recipients, identities = mix
    data = random.Random(seed).randbytes(size)
    ct = age.encrypt_bytes(recipients, data, armor=armor)
    assert age.decrypt_bytes(identities, ct) == data


def _flip_all(ct: bytes, identities: list[age.Identity], data: bytes, armored: bool) -> None:
    for bit in range(len(ct) * 8):
        damaged = bytearray(ct)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            out = age.decrypt_bytes(identities, bytes(damaged))
        except age.AgeError:
            continue
        # Only armor whitespace outside the block may change without an error.
        assert armored, f"bit {bit} flipped silently"
        assert out == data


def test_every_single_bit_flip_is_caught_x25519() -> None:
    data = b"attack at dawn"
    ct = age.encrypt_bytes([X_IDS[0].recipient()], data)
    _flip_all(ct, [X_IDS[0], X_IDS[1]], data, armored=False)


def test_every_single_bit_flip_is_caught_armored() -> None:
    data = b"attack at dusk"
    ct = age.encrypt_bytes([X_IDS[0].recipient()], data, armor=True)
    _flip_all(ct, [X_IDS[0]], data, armored=True)


def test_every_single_bit_flip_is_caught_scrypt() -> None:
    data = b"x"
    ct = age.encrypt_bytes([age.ScryptRecipient("pw", work_factor=1)], data)
    _flip_all(ct, [age.ScryptIdentity("pw", max_work_factor=4)], data, armored=False)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 2 * CHUNK + 10), seed=st.integers(0, 2**32), where=st.floats(0, 1))
def test_random_bit_flip_in_larger_files(size: int, seed: int, where: float) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    pq = rng.random() < 0.3
    ident = PQ_IDS[0] if pq else X_IDS[0]
    ct = bytearray(age.encrypt_bytes([ident.recipient()], data))
    bit = min(int(where * len(ct) * 8), len(ct) * 8 - 1)
    ct[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(age.AgeError):
        age.decrypt_bytes([ident], bytes(ct))
