"""Unit tests of the age engine: keys, recipient rules, streaming, armor, limits."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
from collections.abc import Callable

import pytest

from keyagentd import age
from keyagentd.age import bech32, scrypt
from keyagentd.age.armor import BEGIN, END
from keyagentd.age.format import b64decode, b64encode
from keyagentd.age.stream import CHUNK

# Examples from the C2SP age specification.
SPEC_X25519_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_X25519_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
SPEC_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
SPEC_PQ_RECIPIENT_SHA256 = "a091dd7e0ee9d62b75173dcc98441a0424baa941e66a8776e570a4ae60ff61ea"
SPEC_PQ_RECIPIENT_START = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5z"


def counting_rng(seed: int = 0) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return r.randbytes


# --- keys ---------------------------------------------------------------------


def test_spec_x25519_key() -> None:
    ident = age.parse_identity(SPEC_X25519_IDENTITY)
    assert ident.key_type == "x25519"
    assert ident.recipient().encode() == SPEC_X25519_RECIPIENT
    assert ident.encode() == SPEC_X25519_IDENTITY
    assert age.parse_recipient(SPEC_X25519_RECIPIENT) == ident.recipient()


@pytest.fixture(params=["libsodium", "openssl"])
def x25519_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each X25519 test once per backend: libsodium (one multiplication per unwrap, when the
    system has it) and OpenSSL (what runs without it)."""
    from keyagentd.age import x25519

    if request.param == "openssl":
        monkeypatch.setattr(x25519, "_sodium", lambda: None)
    elif x25519._sodium() is None:
        pytest.skip("libsodium is not installed (scripts/sysdeps.sh installs it)")
    return str(request.param)


def test_x25519_backends_agree(x25519_backend: str) -> None:
    from keyagentd.age.x25519 import X25519Identity

    ident = age.parse_identity(SPEC_X25519_IDENTITY)
    assert ident.recipient().encode() == SPEC_X25519_RECIPIENT  # public key derived here
    for _ in range(5):
        other = age.generate_identity("x25519")
        seed = bytearray(other.seed)
        public = age.public_of_seed("x25519", seed)
        assert public == other.recipient().public_bytes
        for kept in (None, public):
            ident = X25519Identity(seed, kept)
            data = age.encrypt_bytes([other.recipient()], b"same either way")
            assert age.decrypt_bytes([ident], data) == b"same either way"
            ident.wipe()
            with pytest.raises(ValueError):
                ident.unwrap([])
    low_order = age.Stanza("X25519", (b64encode(bytes(32)),), bytes(32))
    with pytest.raises(age.ParseError, match="low-order"):
        age.generate_identity("x25519").unwrap([low_order])


def test_an_unwrap_with_a_kept_public_key_is_one_multiplication(
    x25519_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per key tried one X25519 multiplication: the public key comes from unlock."""
    from keyagentd.age import x25519
    from keyagentd.cache import KeyCache

    if x25519_backend == "openssl":
        pytest.skip("OpenSSL derives the public key on every private-key load")
    calls: list[bool] = []
    real = x25519._scalarmult

    def counting(lib: object, scalar: bytearray, point: bytes | None) -> bytes:
        calls.append(point is None)
        return real(lib, scalar, point)  # type: ignore[arg-type]

    monkeypatch.setattr(x25519, "_scalarmult", counting)
    cache = KeyCache()
    ids = [age.generate_identity("x25519") for _ in range(3)]
    for i, ident in enumerate(ids):
        cache.unlock(f"k{i}", "x25519", bytearray(ident.seed))
    calls.clear()
    data = age.encrypt_bytes([ids[2].recipient()], b"x")
    for i in range(3):
        dec = age.Decryptor(io.BytesIO(data))
        with cache.use(f"k{i}") as identity:
            try:
                dec.unwrap([identity])
            except age.NoMatchError:
                continue
    assert calls == [False, False, False]  # three keys tried: three exchanges, no derivation


def test_spec_hybrid_key() -> None:
    ident = age.parse_identity(SPEC_PQ_IDENTITY)
    assert ident.key_type == "mlkem768x25519"
    rec = ident.recipient().encode()
    assert rec.startswith(SPEC_PQ_RECIPIENT_START)
    assert len(rec) == 1959
    assert hashlib.sha256(rec.encode()).hexdigest() == SPEC_PQ_RECIPIENT_SHA256
    assert ident.encode() == SPEC_PQ_IDENTITY
    assert age.parse_recipient(rec) == ident.recipient()


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_seed_round_trip(key_type: str) -> None:
    ident = age.generate_identity(key_type, rng=counting_rng(1))
    assert ident.key_type == key_type
    assert len(ident.seed) == 32
    again = age.identity_from_seed(key_type, bytearray(ident.seed))
    assert again.encode() == ident.encode()
    assert age.parse_identity(ident.encode()).seed == ident.seed
    assert again.recipient() == ident.recipient()


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_repr_hides_secrets(key_type: str) -> None:
    ident = age.generate_identity(key_type)
    text = repr(ident) + str(ident)
    secret = ident.encode()
    assert secret not in text
    assert secret[-20:] not in text
    assert ident.seed.hex() not in text
    assert "recipient" in text


def test_bad_key_strings_give_malformed_without_echo() -> None:
    good = age.generate_identity().encode()
    broken = good[:-1] + ("Q" if good[-1] != "Q" else "P")
    for s in [broken, good.lower(), good[:20] + good[20:].lower(), "age1", "", "AGE-SECRET-KEY-1"]:
        with pytest.raises(age.ParseError) as exc:
            age.parse_identity(s)
        assert len(s) < 20 or s[15:] not in str(exc.value)
    with pytest.raises(age.ParseError):
        age.parse_recipient(SPEC_X25519_RECIPIENT.upper())
    with pytest.raises(age.ParseError):
        age.parse_recipient(SPEC_X25519_IDENTITY)
    with pytest.raises(age.ParseError):
        age.parse_identity(SPEC_X25519_RECIPIENT)
    with pytest.raises(age.UnsupportedError):
        age.identity_from_seed("rsa", bytes(32))
    with pytest.raises(age.ParseError):
        age.identity_from_seed("x25519", bytes(31))


def test_bech32_without_length_limit() -> None:
    data = bytes(range(256)) * 5
    s = bech32.encode("test", data)
    assert len(s) > 90
    assert bech32.decode(s) == ("test", data)
    assert bech32.decode(s.upper()) == ("test", data)


def test_parse_identities_file() -> None:
    a, b = age.generate_identity(), age.generate_identity("mlkem768x25519")
    text = f"# created: now\n# public key: x\n{a.encode()}\n\n{b.encode()}\n"
    assert [i.encode() for i in age.parse_identities(text)] == [a.encode(), b.encode()]
    with pytest.raises(age.ParseError):
        age.parse_identities("# nothing\n")


def test_base64_is_strict() -> None:
    assert b64decode(b64encode(b"\x00\xff\x10")) == b"\x00\xff\x10"
    assert b64decode("AAE=") is None  # padding
    assert b64decode("AAF") is None  # non-zero trailing bits
    assert b64decode("A") is None
    assert b64decode("AA\nA") is None


# --- encrypting -----------------------------------------------------------------


def test_mixing_rules() -> None:
    x = age.generate_identity().recipient()
    pq = age.generate_identity("mlkem768x25519").recipient()
    pw = age.ScryptRecipient("pw", work_factor=1)
    for mix in ([x, pw], [pw, pw], [pq, x], [x, pq], [pq, pw]):
        out = io.BytesIO()
        with pytest.raises(age.UnsupportedError):
            age.encrypt(mix, io.BytesIO(b"data"), out)
        assert out.getvalue() == b""
    with pytest.raises(ValueError):
        age.encrypt([], io.BytesIO(b"data"), io.BytesIO())


def test_encryption_is_deterministic_given_rng() -> None:
    rec = age.parse_recipient(SPEC_X25519_RECIPIENT)
    one = age.encrypt_bytes([rec], b"hello", rng=counting_rng(7))
    two = age.encrypt_bytes([rec], b"hello", rng=counting_rng(7))
    three = age.encrypt_bytes([rec], b"hello", rng=counting_rng(8))
    assert one == two != three


def test_header_layout() -> None:
    ident = age.generate_identity()
    ct = age.encrypt_bytes([ident.recipient()], b"x")
    end = ct.index(b"\n", ct.index(b"\n--- ") + 1) + 1
    lines = ct[:end].split(b"\n")
    assert lines[0] == b"age-encryption.org/v1"
    assert lines[1].startswith(b"-> X25519 ")
    assert len(lines[2]) == 43  # 32-byte body, one short line
    assert lines[3].startswith(b"--- ") and len(lines[3]) == 4 + 43
    assert len(lines) == 5
    assert len(ct) - end == 16 + 1 + 16  # nonce, then one chunk: 1 byte + tag


def test_stanza_bodies_wrap_at_64_columns() -> None:
    # A body of exactly 48 bytes fills a line and needs an empty final line.
    st = age.Stanza("example.com/test", ("a", "b"), bytes(48))
    from keyagentd.age.format import encode_stanza

    assert encode_stanza(st) == b"-> example.com/test a b\n" + b"A" * 64 + b"\n\n"


def test_armor_layout() -> None:
    ident = age.generate_identity()
    ct = age.encrypt_bytes([ident.recipient()], os.urandom(5000), armor=True)
    lines = ct.split(b"\n")
    assert lines[0] == BEGIN
    assert lines[-2] == END and lines[-1] == b""
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1])
    assert 0 < len(body[-1]) <= 64


# --- decrypting -----------------------------------------------------------------


def test_decryptor_shows_stanza_types_and_matches_right_identity() -> None:
    a, b = age.generate_identity(), age.generate_identity()
    other = age.generate_identity()
    ct = age.encrypt_bytes([a.recipient(), b.recipient()], b"secret")
    d = age.Decryptor(io.BytesIO(ct))
    assert d.stanza_types == frozenset({"X25519"})
    assert d.unwrap([other, b]) is b
    out = io.BytesIO()
    assert d.decrypt_to(out) == 6
    assert out.getvalue() == b"secret"
    with pytest.raises(age.NoMatchError):
        age.Decryptor(io.BytesIO(ct)).unwrap([other])


def test_hybrid_round_trip_multiple_recipients() -> None:
    ids = [age.generate_identity("mlkem768x25519") for _ in range(2)]
    data = os.urandom(CHUNK + 3)
    ct = age.encrypt_bytes([i.recipient() for i in ids], data)
    d = age.Decryptor(io.BytesIO(ct))
    assert d.stanza_types == frozenset({"mlkem768x25519"})
    assert age.decrypt_bytes([ids[1]], ct) == data
    with pytest.raises(age.NoMatchError):
        age.decrypt_bytes([age.generate_identity("mlkem768x25519"), age.generate_identity()], ct)


def test_scrypt_round_trip_and_wrong_passphrase() -> None:
    ct = age.encrypt_bytes([age.ScryptRecipient("pässwörd", work_factor=4)], b"data")
    assert age.decrypt_bytes([age.ScryptIdentity("pässwörd")], ct) == b"data"
    with pytest.raises(age.NoMatchError):
        age.decrypt_bytes([age.ScryptIdentity("password")], ct)


def _scrypt_file(log_n: str) -> bytes:
    ct = age.encrypt_bytes([age.ScryptRecipient("pw", work_factor=4)], b"data")
    return ct.replace(b" 4\n", f" {log_n}\n".encode(), 1)


def test_scrypt_work_factor_cap_is_checked_before_any_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kdf(*args: object) -> bytes:
        raise AssertionError("scrypt ran")

    files = {wf: _scrypt_file(wf) for wf in ("23", "11", "99999999999999999999")}
    monkeypatch.setattr(scrypt, "_derive", no_kdf)
    with pytest.raises(age.UnsupportedError, match="work factor"):
        age.decrypt_bytes([age.ScryptIdentity("pw")], files["23"])
    with pytest.raises(age.UnsupportedError):
        age.decrypt_bytes([age.ScryptIdentity("pw", max_work_factor=10)], files["11"])
    with pytest.raises(age.ParseError):
        age.decrypt_bytes([age.ScryptIdentity("pw")], files["99999999999999999999"])


def test_scrypt_auto_work_factor_is_bounded() -> None:
    wf = scrypt.auto_work_factor()
    assert scrypt.MIN_AUTO_WORK_FACTOR <= wf <= scrypt.MAX_AUTO_WORK_FACTOR


def test_unsupported_version() -> None:
    with pytest.raises(age.UnsupportedError):
        age.Decryptor(io.BytesIO(b"age-encryption.org/v2\n-> X25519 abc\n\n--- x\n"))
    for junk in [b"", b"hello world\n", b"\x00" * 100, b"age-encryption.org/v1"]:
        with pytest.raises(age.ParseError):
            age.Decryptor(io.BytesIO(junk))


class EndlessHeader(io.RawIOBase):
    """A never-ending stanza line; counts what was read."""

    def __init__(self) -> None:
        self.served = 0
        self._head = b"age-encryption.org/v1\n-> X25519 "

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        chunk = (self._head + b"A" * len(b))[: len(b)]
        self._head = b""
        b[: len(chunk)] = chunk
        self.served += len(chunk)
        return len(chunk)


def test_header_size_is_bounded() -> None:
    src = EndlessHeader()
    with pytest.raises(age.ParseError):
        age.Decryptor(src)  # type: ignore[arg-type]
    assert src.served < 4 * 1024 * 1024


def test_a_file_in_memory_is_parsed_as_a_stream_is() -> None:
    """`Decryptor(bytes)` parses in place (Decrypt's path): the same file, the same answer;
    a header line must end within MAX_HEADER there too; armored input still works."""
    ident = age.X25519Identity(bytes(range(32)))
    data = age.encrypt_bytes([ident.recipient()], b"in memory", armor=False)
    for form in (data, age.encrypt_bytes([ident.recipient()], b"in memory", armor=True)):
        dec = age.Decryptor(form)
        dec.unwrap([ident])
        out = io.BytesIO()
        dec.decrypt_to(out)
        assert out.getvalue() == b"in memory" and dec.armored == form.startswith(b"-")
    from keyagentd.age.format import MAX_HEADER

    huge = b"age-encryption.org/v1\n-> x " + b"a" * MAX_HEADER + b"\n"
    for src in (huge, io.BytesIO(huge)):
        with pytest.raises(age.ParseError, match="cut short"):
            age.Decryptor(src)
    for cut in (b"", data[:30]):
        with pytest.raises(age.ParseError) as whole:
            age.Decryptor(cut)
        with pytest.raises(age.ParseError) as streamed:
            age.Decryptor(io.BytesIO(cut))
        assert str(whole.value) == str(streamed.value)


class Trickle(io.RawIOBase):
    """A pipe-like source returning 1-7 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._rng = random.Random(3)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), len(self._data), self._rng.randint(1, 7))
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class Chunky(io.RawIOBase):
    """A source returning reads of 1 byte to 5 KiB, so lines span many reads."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._rng = random.Random(5)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), len(self._data), self._rng.choice([1, 3, 700, 5000]))
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class LongStanza:
    """Wraps to an X25519 stanza plus one with a long argument and a multi-line body."""

    def __init__(self, inner: age.X25519Recipient) -> None:
        self._inner = inner

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[age.Stanza]:
        extra = age.Stanza("x-long", ("A" * 150_000, "b"), bytes(range(256)) * 3)
        return [*self._inner.wrap(file_key, rng), extra]


def test_long_header_lines_arriving_in_pieces() -> None:
    """Lines spanning many reads (and reads spanning many lines) parse to the same header."""
    ident = age.generate_identity("x25519")
    data = os.urandom(CHUNK + 9)
    ct = age.encrypt_bytes([LongStanza(ident.recipient())], data)  # type: ignore[list-item]
    for src in (io.BytesIO(ct), Chunky(ct)):
        dec = age.Decryptor(src)  # type: ignore[arg-type]
        long = dec.stanzas[1]
        assert (long.type, long.args) == ("x-long", ("A" * 150_000, "b"))
        assert long.body == bytes(range(256)) * 3
        dec.unwrap([ident])  # the MAC covers exactly the bytes read
        out = io.BytesIO()
        dec.decrypt_to(out)
        assert out.getvalue() == data


class ShortWriter(io.RawIOBase):
    """A destination that accepts at most 1000 bytes per write."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        chunk = bytes(memoryview(b))[:1000]  # type: ignore[arg-type]
        self.data += chunk
        return len(chunk)


@pytest.mark.parametrize("armor", [False, True])
def test_short_reads_and_short_writes(armor: bool) -> None:
    ident = age.generate_identity()
    data = os.urandom(2 * CHUNK + 100)
    ct = age.encrypt_bytes([ident.recipient()], data, armor=armor)
    out = ShortWriter()
    _, n = age.decrypt([ident], Trickle(ct), out)  # type: ignore[arg-type]
    assert n == len(data) and bytes(out.data) == data
    enc = ShortWriter()
    age.encrypt([ident.recipient()], Trickle(data), enc, armor=armor)  # type: ignore[arg-type]
    assert age.decrypt_bytes([ident], bytes(enc.data)) == data


class OnlyReadinto:
    """The narrowest source: nothing but ``readinto`` (like the bus's fd source)."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readinto(self, b: memoryview, /) -> int:
        return self._src.readinto(b[:5000])


class OnlyRead:
    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, n: int, /) -> bytes:
        return self._src.read(min(n, 3000))


class OnlyWrite:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: memoryview | bytes, /) -> int:
        self.data += b
        return len(b)


@pytest.mark.parametrize("source", [OnlyReadinto, OnlyRead])
@pytest.mark.parametrize("armor", [False, True])
def test_minimal_file_objects(source: type[OnlyRead | OnlyReadinto], armor: bool) -> None:
    ident = age.generate_identity()
    data = os.urandom(CHUNK + 1000)
    sink = OnlyWrite()
    age.encrypt([ident.recipient()], source(data), sink, armor=armor)  # type: ignore[arg-type]
    out = OnlyWrite()
    age.decrypt([ident], source(bytes(sink.data)), out)  # type: ignore[arg-type]
    assert bytes(out.data) == data


def test_decrypt_from_a_real_pipe() -> None:
    ident = age.generate_identity()
    data = os.urandom(3 * CHUNK + 5)
    ct = age.encrypt_bytes([ident.recipient()], data, armor=True)
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb", buffering=0) as f:
            for i in range(0, len(ct), 3000):
                f.write(ct[i : i + 3000])

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as src:
        out = io.BytesIO()
        age.decrypt([ident], src, out)
    t.join()
    assert out.getvalue() == data


def test_progress_reports_running_totals() -> None:
    ident = age.generate_identity()
    data = os.urandom(3 * CHUNK + 1)
    d = age.Decryptor(io.BytesIO(age.encrypt_bytes([ident.recipient()], data)))
    d.unwrap([ident])
    seen: list[int] = []
    d.decrypt_to(io.BytesIO(), progress=seen.append)
    assert seen == [CHUNK, 3 * CHUNK, 3 * CHUNK + 1]  # after each batch: 1, 2, 4... chunks


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK])
def test_truncation_releases_only_whole_authenticated_chunks(size: int) -> None:
    ident = age.generate_identity()
    data = os.urandom(size)
    ct = age.encrypt_bytes([ident.recipient()], data)
    header_len = ct.index(b"\n", ct.index(b"\n--- ") + 1) + 1 + 16
    for cut in sorted(
        {header_len, header_len + 1, len(ct) - 17, len(ct) - 1, header_len + CHUNK + 16}
    ):
        if cut >= len(ct) or cut < header_len:
            continue
        out = io.BytesIO()
        with pytest.raises(age.PayloadError):
            age.decrypt([ident], io.BytesIO(ct[:cut]), out)
        released = out.getvalue()
        assert len(released) % CHUNK == 0
        assert data.startswith(released)


def test_trailing_data_is_rejected() -> None:
    ident = age.generate_identity()
    ct = age.encrypt_bytes([ident.recipient()], b"abc")
    with pytest.raises(age.PayloadError):
        age.decrypt_bytes([ident], ct + b"\x00")


def test_armor_crlf_and_surrounding_whitespace() -> None:
    ident = age.generate_identity()
    data = os.urandom(3 * CHUNK + 77)
    ct = age.encrypt_bytes([ident.recipient()], data, armor=True)
    assert age.decrypt_bytes([ident], ct.replace(b"\n", b"\r\n")) == data
    assert age.decrypt_bytes([ident], b"\n \t\r\n" + ct + b"\n\n  ") == data
    lines = ct.split(b"\n")
    bad = [
        ct + b"x",  # trailing garbage
        b"\n".join([*lines[:5], lines[5] + b" ", *lines[6:]]),  # whitespace at end of line
        b"\n".join([*lines[:5], lines[5][:-4], *lines[6:]]),  # short line in the middle
        b"\n".join([*lines[:5], *lines[6:]]).replace(BEGIN, BEGIN.lower()),
        ct[: len(ct) // 2],
    ]
    for b in bad:
        with pytest.raises(age.ParseError):
            age.decrypt_bytes([ident], b)


def test_armor_full_last_line() -> None:
    ident = age.generate_identity()
    for size in range(40, 40 + 48):
        data = os.urandom(size)
        ct = age.encrypt_bytes([ident.recipient()], data, armor=True)
        lines = ct.split(b"\n")
        if len(lines[-3]) == 64:
            break
    else:
        pytest.fail("no size gave a full last armor line")
    assert age.decrypt_bytes([ident], ct) == data


def test_engine_errors_are_its_own_and_mapped_once() -> None:
    """The engine raises its own types (no wire names in age/); one table outside it maps
    each to the agent's wire error, keeping the sentence (or the wire class's default)."""
    from keyagent import protocol
    from keyagentd.errors import AGE_TO_WIRE, wire_error

    assert not any(issubclass(c, protocol.KeyAgentError) for c in AGE_TO_WIRE)
    wires = {
        age.ParseError: protocol.Malformed,
        age.HeaderMacError: protocol.Integrity,
        age.PayloadError: protocol.Integrity,
        age.NoMatchError: protocol.NoMatch,
        age.UnsupportedError: protocol.Unsupported,
        age.PassphraseError: protocol.BadPassphrase,
        age.TooLargeError: protocol.TooLarge,
    }
    assert dict(AGE_TO_WIRE) == wires
    for engine_cls, wire_cls in wires.items():
        mapped = wire_error(engine_cls("A sentence."))
        assert type(mapped) is wire_cls and mapped.message == "A sentence."
        assert type(wire_error(engine_cls())) is wire_cls
    assert wire_error(age.NoMatchError()).message == protocol.NoMatch().message
    other = OSError("disk")
    assert wire_error(other) is other


def test_the_engine_stands_alone() -> None:
    """age/ imports no D-Bus, no agent names (keyagent.protocol), no threads and none of the
    agent but the leaf `keyagentd.secrets` (wiping buffers): it is a library on its own."""
    import ast
    from pathlib import Path

    allowed_outside = {"keyagentd.secrets"}
    banned = {"threading", "concurrent", "asyncio", "dbus_fast", "jeepney", "keyagent"}
    root = Path(age.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in banned, f"{path.name} imports {name}"
                if top == "keyagentd":
                    assert name.startswith("keyagentd.age") or name in allowed_outside, (
                        f"{path.name} imports {name}"
                    )
