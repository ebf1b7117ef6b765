"""The agent's overlapped output (keyagentd/overlap.py, passed to the engine as ``output``):
output written on a second thread, same guarantees as the engine's direct output."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO, cast

import pytest

from keyagent.protocol import Failed
from keyagentd import age, overlap
from keyagentd.age.stream import CHUNK, CHUNK_CT, NONCE_SIZE
from keyagentd.overlap import OVERLAP_AFTER, OverlappedOutput

IDENT = age.generate_identity()
MIB = 1 << 20


class Sink(io.RawIOBase):
    """Collects writes, notes the threads that wrote; can fail on the Nth write or be slow."""

    def __init__(self, fail_at: int = 0, exc: BaseException | None = None, delay: float = 0):
        self.data = bytearray()
        self.writes = 0
        self.threads: set[int] = set()
        self._fail_at = fail_at
        self._exc = exc or Failed("The output was closed before the end.")
        self._delay = delay

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        self.writes += 1
        self.threads.add(threading.get_ident())
        if self._delay:
            time.sleep(self._delay)
        if self.writes == self._fail_at:
            raise self._exc
        mv = memoryview(b)  # type: ignore[arg-type]
        self.data += mv
        return len(mv)


def _encrypt(plain: bytes, overlap: bool = False) -> bytes:
    out = io.BytesIO()
    age.encrypt([IDENT.recipient()], io.BytesIO(plain), out, output=_output(overlap))
    return out.getvalue()


def _bin(obj: object) -> BinaryIO:
    # The engine needs only write/readinto, which these test doubles provide.
    return cast(BinaryIO, obj)


def _decrypt(ct: bytes, dst: object, overlap: bool = True) -> int:
    dec = age.Decryptor(io.BytesIO(ct))
    dec.unwrap([IDENT])
    return dec.decrypt_to(_bin(dst), output=_output(overlap))


def _output(overlap: bool) -> type[OverlappedOutput] | None:
    return OverlappedOutput if overlap else None


def _payload_offset(ct: bytes) -> int:
    return ct.index(b"\n", ct.index(b"\n---") + 1) + 1 + NONCE_SIZE


def _tamper(ct: bytes, chunk: int) -> bytes:
    buf = bytearray(ct)
    buf[_payload_offset(ct) + chunk * CHUNK_CT + 100] ^= 1
    return bytes(buf)


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One overlapped stream gets its writer thread whatever this machine has; and every
    stream, whatever its end, leaves the count of running streams as it found it."""
    monkeypatch.setattr(overlap.STREAMS, "cores", 2)
    before = overlap.STREAMS.running
    yield
    assert overlap.STREAMS.running == before


@pytest.fixture(params=[0, OVERLAP_AFTER], ids=["thread-at-once", "thread-after-1MiB"])
def overlap_after(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(overlap, "OVERLAP_AFTER", request.param)
    return int(request.param)


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 16 * CHUNK, 17 * CHUNK + 1, 3 * MIB + 5]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_with_overlap(size: int, overlap_after: int) -> None:
    plain = os.urandom(size)
    ct = _encrypt(plain, overlap=True)
    assert ct[_payload_offset(ct) :] != b"" and len(ct) > size
    sink = Sink()
    assert _decrypt(ct, sink) == size
    assert bytes(sink.data) == plain
    # Both directions agree with the single-threaded path byte for byte.
    sink2 = Sink()
    assert _decrypt(_encrypt(plain), sink2, overlap=False) == size
    assert bytes(sink2.data) == plain


def test_overlap_writes_on_another_thread_only_for_big_payloads() -> None:
    me = threading.get_ident()
    plain = os.urandom((OVERLAP_AFTER + 2) * CHUNK + 3)
    ct = _encrypt(plain)
    big = Sink()
    _decrypt(ct, big)
    assert big.threads - {me}, "the overlapped output never used a writer thread"
    small, plain_sink = Sink(), Sink()
    _decrypt(_encrypt(os.urandom(OVERLAP_AFTER * CHUNK)), small)
    _decrypt(ct, plain_sink, overlap=False)
    assert small.threads == {me} and plain_sink.threads == {me}
    enc = Sink()
    age.encrypt([IDENT.recipient()], io.BytesIO(plain), _bin(enc), output=OverlappedOutput)
    assert enc.threads - {me}


@pytest.mark.parametrize("bad", [0, 1, 15, 16, 17, 30, 47])
def test_tampered_chunk_releases_exactly_the_authenticated_prefix(
    bad: int, overlap_after: int
) -> None:
    plain = os.urandom(3 * MIB)  # 48 chunks
    ct = _tamper(_encrypt(plain), bad)
    before = threading.active_count()
    sink = Sink()
    with pytest.raises(age.PayloadError):
        _decrypt(ct, sink)
    assert bytes(sink.data) == plain[: bad * CHUNK]
    assert threading.active_count() == before


@pytest.mark.parametrize("cut", [1, CHUNK_CT, 20 * CHUNK_CT - 7])
def test_truncated_and_trailing_with_overlap(cut: int, overlap_after: int) -> None:
    plain = os.urandom(2 * MIB)  # 32 chunks
    ct = _encrypt(plain)
    ref, got = Sink(), Sink()
    with pytest.raises(age.PayloadError):
        _decrypt(ct[:-cut], ref, overlap=False)
    with pytest.raises(age.PayloadError):
        _decrypt(ct[:-cut], got)
    assert got.data == ref.data and len(got.data) % CHUNK == 0
    trailing = Sink()
    with pytest.raises(age.PayloadError):
        _decrypt(ct + b"x", trailing)
    assert bytes(trailing.data) == plain


def _run(direction: str, plain: bytes, ct: bytes, sink: Sink) -> None:
    if direction == "decrypt":
        _decrypt(ct, sink)
    else:
        age.encrypt([IDENT.recipient()], io.BytesIO(plain), _bin(sink), output=OverlappedOutput)


@pytest.mark.parametrize("direction", ["decrypt", "encrypt"])
@pytest.mark.parametrize("which", ["first", "second", "middle", "last"])
def test_sink_error_surfaces_and_no_thread_is_left(
    direction: str, which: str, overlap_after: int
) -> None:
    plain = os.urandom(3 * MIB)
    ct = _encrypt(plain)
    good = Sink()
    _run(direction, plain, ct, good)
    # "last": only `close` can report it.
    fail_at = {"first": 1, "second": 2, "middle": good.writes // 2, "last": good.writes}[which]
    before = threading.active_count()
    sink = Sink(fail_at=fail_at, exc=BrokenPipeError(32, "Broken pipe"))
    with pytest.raises(BrokenPipeError):
        _run(direction, plain, ct, sink)
    assert threading.active_count() == before
    # Nothing is written after the failed write, and what was is whole chunks.
    assert sink.writes == fail_at
    if direction == "decrypt":
        assert sink.data == good.data[: len(sink.data)] and len(sink.data) % CHUNK == 0
    else:  # a fresh file key each time: compare sizes only
        assert len(sink.data) < len(good.data)


def test_write_error_wins_over_a_later_bad_chunk(overlap_after: int) -> None:
    """Single-threaded, the failed write stops the stream before the bad chunk is read;
    overlapped, the cipher may meet the bad chunk first, but the write error must win."""
    plain = os.urandom(3 * MIB)
    # The writer sleeps in its second batch write (chunks +4..+7) and then fails, while the
    # cipher, buffers ahead, meets chunk +9.
    ct = _tamper(_encrypt(plain), overlap_after + 9)
    before = threading.active_count()
    sink = Sink(fail_at=overlap_after + 2, delay=0.005)
    with pytest.raises(Failed) as info:
        _decrypt(ct, sink)
    assert not isinstance(info.value, age.PayloadError)
    assert threading.active_count() == before


class FailingSource(io.RawIOBase):
    def __init__(self, data: bytes, fail_after: int) -> None:
        self._src = io.BytesIO(data)
        self._left = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, b: object) -> int:
        mv = memoryview(b)  # type: ignore[arg-type]
        if self._left <= 0:
            raise Failed("Reading the input failed: Input/output error.")
        n = self._src.readinto(mv[: min(len(mv), self._left)])
        self._left -= n
        return n


def test_read_error_still_writes_every_authenticated_chunk(overlap_after: int) -> None:
    plain = os.urandom(2 * MIB)
    ct = _encrypt(plain)
    cut = _payload_offset(ct) + 25 * CHUNK_CT + 10
    before = threading.active_count()
    sink = Sink(delay=0.001)
    dec = age.Decryptor(_bin(FailingSource(ct, cut)))
    dec.unwrap([IDENT])
    with pytest.raises(Failed, match="Reading the input"):
        dec.decrypt_to(_bin(sink), output=OverlappedOutput)
    # Chunk 24 waits for chunk 25 to be read (is 24 the last?), which fails: 0-23 are out.
    assert bytes(sink.data) == plain[: 24 * CHUNK]
    assert threading.active_count() == before


def test_slow_sink_and_progress(overlap_after: int) -> None:
    plain = os.urandom(40 * CHUNK + 9)
    ct = _encrypt(plain)
    sink = Sink(delay=0.001)
    totals: list[int] = []
    dec = age.Decryptor(io.BytesIO(ct))
    dec.unwrap([IDENT])
    assert dec.decrypt_to(_bin(sink), progress=totals.append, output=OverlappedOutput) == len(plain)
    assert bytes(sink.data) == plain
    assert totals == [min((i + 1) * CHUNK, len(plain)) for i in range(41)]
    enc = Sink(delay=0.001)
    age.encrypt(
        [IDENT.recipient()], io.BytesIO(plain), _bin(enc), armor=True, output=OverlappedOutput
    )
    assert age.decrypt([IDENT], io.BytesIO(bytes(enc.data)), io.BytesIO())[1] == len(plain)


def test_no_writer_thread_while_the_cores_are_taken() -> None:
    me = threading.get_ident()
    plain = os.urandom(3 * MIB)
    ct = _encrypt(plain)
    overlap.STREAMS.enter()  # another overlapped stream is running
    try:
        sink = Sink()
        _decrypt(ct, sink)
    finally:
        overlap.STREAMS.leave()
    assert sink.threads == {me} and bytes(sink.data) == plain
    alone = Sink()
    _decrypt(ct, alone)
    assert alone.threads - {me}


@pytest.mark.parametrize("bad", [None, 33, 40])
def test_writer_comes_and_goes_as_streams_do(
    bad: int | None, overlap_after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check flips the answer: the writer starts, ends, starts again mid-stream."""
    flips = iter(range(1000))
    monkeypatch.setattr(overlap.STREAMS, "crowded", lambda: next(flips) % 2 == 1)
    me = threading.get_ident()
    plain = os.urandom(3 * MIB + 77)
    ct = _encrypt(plain) if bad is None else _tamper(_encrypt(plain), bad)
    before = threading.active_count()
    sink = Sink(delay=0.0005)
    if bad is None:
        assert _decrypt(ct, sink) == len(plain)
        assert bytes(sink.data) == plain
    else:
        with pytest.raises(age.PayloadError):
            _decrypt(ct, sink)
        assert bytes(sink.data) == plain[: bad * CHUNK]
    assert me in sink.threads and sink.threads - {me}
    assert threading.active_count() == before
    enc = Sink()
    age.encrypt([IDENT.recipient()], io.BytesIO(plain), _bin(enc), output=OverlappedOutput)
    assert me in enc.threads and enc.threads - {me}
    assert age.decrypt([IDENT], io.BytesIO(bytes(enc.data)), io.BytesIO())[1] == len(plain)
