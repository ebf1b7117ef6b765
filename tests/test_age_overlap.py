"""The agent's parallel run (keyagentd/overlap.py, passed to the engine as ``output``):
batches ciphered on several threads, same output and errors as the engine's serial run."""

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
from keyagentd.age.batches import Payload
from keyagentd.age.stream import CHUNK, CHUNK_CT, NONCE_SIZE
from keyagentd.overlap import BATCH_CHUNKS, ParallelRun

IDENT = age.generate_identity()
MIB = 1 << 20
#: The smallest payload that starts a helper: a first chunk, then a full batch with more.
HELPED = (1 + BATCH_CHUNKS) * CHUNK + 1


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


def _bin(obj: object) -> BinaryIO:
    # The engine needs only write/readinto, which these test doubles provide.
    return cast(BinaryIO, obj)


def _encrypt(plain: bytes, parallel: bool = False) -> bytes:
    out = io.BytesIO()
    age.encrypt([IDENT.recipient()], io.BytesIO(plain), out, output=_runner(parallel))
    return out.getvalue()


def _decrypt(ct: bytes, dst: object, parallel: bool = True) -> int:
    dec = age.Decryptor(io.BytesIO(ct))
    dec.unwrap([IDENT])
    return dec.decrypt_to(_bin(dst), output=_runner(parallel))


class Runs:
    """Makes parallel runs and keeps them, to count the helpers each started."""

    def __init__(self) -> None:
        self.made: list[ParallelRun] = []

    def __call__(self, payload: Payload) -> ParallelRun:
        self.made.append(ParallelRun(payload))
        return self.made[-1]

    @property
    def started(self) -> int:
        return sum(run.started for run in self.made)


def _helpers(ct: bytes, dst: object) -> int:
    """Decrypt in parallel; the helper threads the run started."""
    runs = Runs()
    dec = age.Decryptor(io.BytesIO(ct))
    dec.unwrap([IDENT])
    dec.decrypt_to(_bin(dst), output=runs)
    return runs.started


def _runner(parallel: bool) -> type[ParallelRun] | None:
    return ParallelRun if parallel else None


def _payload_offset(ct: bytes) -> int:
    return ct.index(b"\n", ct.index(b"\n---") + 1) + 1 + NONCE_SIZE


def _tamper(ct: bytes, chunk: int) -> bytes:
    buf = bytearray(ct)
    buf[_payload_offset(ct) + chunk * CHUNK_CT + 100] ^= 1
    return bytes(buf)


@pytest.fixture(autouse=True, params=[2, 4], ids=["2-workers", "4-workers"])
def cores(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A lone stream gets 2 (4) workers whatever this machine has; and every run, whatever
    its end, leaves the count of running streams and the threads as it found them."""
    monkeypatch.setattr(overlap.STREAMS, "cores", request.param)
    before, threads = overlap.STREAMS.running, threading.active_count()
    yield int(request.param)
    assert overlap.STREAMS.running == before
    assert threading.active_count() == threads


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 17 * CHUNK, HELPED, 33 * CHUNK, 3 * MIB + 5]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_in_parallel_matches_the_serial_run(size: int) -> None:
    plain = os.urandom(size)
    ct = _encrypt(plain, parallel=True)
    assert ct[_payload_offset(ct) :] != b"" and len(ct) > size
    sink = Sink()
    assert _decrypt(ct, sink) == size
    assert bytes(sink.data) == plain
    # Both directions agree with the serial run byte for byte (same file key: decrypt).
    serial = Sink()
    assert _decrypt(ct, serial, parallel=False) == size
    assert serial.data == sink.data
    assert age.decrypt([IDENT], io.BytesIO(_encrypt(plain)), io.BytesIO())[1] == size


def test_helpers_cipher_only_big_payloads(cores: int) -> None:
    me = threading.get_ident()
    big, small, serial = Sink(), Sink(), Sink()
    ct = _encrypt(os.urandom(HELPED))
    assert _helpers(ct, big) == cores - 1
    assert _helpers(_encrypt(os.urandom(HELPED - 1)), small) == 0
    _decrypt(ct, serial, parallel=False)
    assert small.threads == {me} and serial.threads == {me}
    runs = Runs()
    age.encrypt([IDENT.recipient()], io.BytesIO(os.urandom(HELPED)), io.BytesIO(), output=runs)
    assert runs.started == cores - 1


@pytest.mark.parametrize("bad", [0, 1, 16, 17, 18, 30, 33, 47])
def test_tampered_chunk_releases_exactly_the_authenticated_prefix(bad: int) -> None:
    """Later batches may be deciphered already: none of them is emitted."""
    plain = os.urandom(3 * MIB)  # 48 chunks
    ct = _tamper(_encrypt(plain), bad)
    sink, serial = Sink(), Sink()
    with pytest.raises(age.PayloadError):
        _decrypt(ct, sink)
    assert bytes(sink.data) == plain[: bad * CHUNK]
    with pytest.raises(age.PayloadError):
        _decrypt(ct, serial, parallel=False)
    assert serial.data == sink.data


def test_the_first_bad_chunk_in_stream_order_is_reported() -> None:
    """Two damaged batches: the later may fail first on its thread; the earlier one's
    error (and output) wins. A slow sink lets the later batches run ahead."""
    plain = os.urandom(4 * MIB)
    ct = bytearray(_tamper(_encrypt(plain), 20))
    cut = _payload_offset(bytes(ct)) + 40 * CHUNK_CT + 5  # and cut short in batch 3
    sink = Sink(delay=0.002)
    with pytest.raises(age.PayloadError) as info:
        _decrypt(bytes(ct[:cut]), sink)
    assert str(info.value) == str(age.PayloadError())  # not "cut short or damaged"
    assert bytes(sink.data) == plain[: 20 * CHUNK]


@pytest.mark.parametrize("cut", [1, 7, CHUNK_CT, CHUNK_CT + 1, 20 * CHUNK_CT - 7])
def test_truncated_and_trailing_match_the_serial_run(cut: int) -> None:
    plain = os.urandom(2 * MIB)  # 32 chunks
    ct = _encrypt(plain)
    ref, got = Sink(), Sink()
    with pytest.raises(age.PayloadError) as ref_err:
        _decrypt(ct[:-cut], ref, parallel=False)
    with pytest.raises(age.PayloadError) as got_err:
        _decrypt(ct[:-cut], got)
    assert got.data == ref.data and len(got.data) % CHUNK == 0
    assert str(got_err.value) == str(ref_err.value)
    trailing = Sink()
    with pytest.raises(age.PayloadError, match="data after its end"):
        _decrypt(ct + b"x", trailing)
    assert bytes(trailing.data) == plain


def _run(direction: str, plain: bytes, ct: bytes, sink: Sink) -> None:
    if direction == "decrypt":
        _decrypt(ct, sink)
    else:
        age.encrypt([IDENT.recipient()], io.BytesIO(plain), _bin(sink), output=ParallelRun)


@pytest.mark.parametrize("direction", ["decrypt", "encrypt"])
@pytest.mark.parametrize("which", ["first", "second", "middle", "last"])
def test_sink_error_surfaces_and_nothing_is_written_after_it(direction: str, which: str) -> None:
    plain = os.urandom(3 * MIB)
    ct = _encrypt(plain)
    good = Sink()
    _run(direction, plain, ct, good)
    fail_at = {"first": 1, "second": 2, "middle": good.writes // 2, "last": good.writes}[which]
    sink = Sink(fail_at=fail_at, exc=BrokenPipeError(32, "Broken pipe"))
    with pytest.raises(BrokenPipeError):
        _run(direction, plain, ct, sink)
    assert sink.writes == fail_at
    if direction == "decrypt":
        assert sink.data == good.data[: len(sink.data)] and len(sink.data) % CHUNK == 0
    else:  # a fresh file key each time: compare sizes only
        assert len(sink.data) < len(good.data)


def test_write_error_wins_over_a_later_bad_chunk() -> None:
    """Serially, the failed write stops the stream before the bad chunk is read; in
    parallel the bad chunk may be met first, but the write error must win."""
    plain = os.urandom(3 * MIB)
    ct = _tamper(_encrypt(plain), 1 + 2 * BATCH_CHUNKS + 3)  # in the third full batch
    sink = Sink(fail_at=2, delay=0.005)  # the first full batch's write
    with pytest.raises(Failed) as info:
        _decrypt(ct, sink)
    assert not isinstance(info.value, age.PayloadError)
    assert bytes(sink.data) == plain[:CHUNK]


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


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
def test_read_error_still_writes_every_authenticated_chunk(parallel: bool) -> None:
    plain = os.urandom(2 * MIB)
    ct = _encrypt(plain)
    cut = _payload_offset(ct) + 25 * CHUNK_CT + 10
    sink = Sink(delay=0.001)
    dec = age.Decryptor(_bin(FailingSource(ct, cut)))
    dec.unwrap([IDENT])
    with pytest.raises(Failed, match="Reading the input"):
        dec.decrypt_to(_bin(sink), output=_runner(parallel))
    # Bytes of chunk 25 were read, so chunk 24 is not the last: 0-24 are out.
    assert bytes(sink.data) == plain[: 25 * CHUNK]


def test_progress_counts_what_was_written() -> None:
    plain = os.urandom(40 * CHUNK + 9)
    ct = _encrypt(plain)
    for parallel in (False, True):
        sink = Sink(delay=0.001)
        totals: list[int] = []
        dec = age.Decryptor(io.BytesIO(ct))
        dec.unwrap([IDENT])
        got = dec.decrypt_to(_bin(sink), progress=totals.append, output=_runner(parallel))
        assert got == len(plain) and bytes(sink.data) == plain
        assert totals == sorted(totals) and totals[-1] == len(plain)
        if not parallel:  # batches of 1, 2, 4, 8, 16, 16... chunks
            ends = [1, 3, 7, 15, 31, 47]
            assert totals == [min(n * CHUNK, len(plain)) for n in ends]
    enc = Sink(delay=0.001)
    age.encrypt([IDENT.recipient()], io.BytesIO(plain), _bin(enc), armor=True, output=ParallelRun)
    assert age.decrypt([IDENT], io.BytesIO(bytes(enc.data)), io.BytesIO())[1] == len(plain)


def test_no_helper_while_the_cores_are_taken(cores: int) -> None:
    me = threading.get_ident()
    ct = _encrypt(os.urandom(3 * MIB))
    others = cores // 2 + 1  # the share of each stream drops to one worker
    for _ in range(others):
        overlap.STREAMS.enter()
    try:
        sink = Sink()
        assert _helpers(ct, sink) == 0
    finally:
        for _ in range(others):
            overlap.STREAMS.leave()
    assert sink.threads == {me}
    assert _helpers(ct, Sink()) == cores - 1


@pytest.mark.parametrize("bad", [None, 33, 40])
def test_helpers_come_and_go_as_streams_do(
    bad: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each look at the share flips it: helpers start, retire, start again mid-stream."""
    flips = iter(range(10_000))
    monkeypatch.setattr(overlap.STREAMS, "share", lambda: 1 + next(flips) % 2)
    plain = os.urandom(5 * MIB + 77)
    ct = _encrypt(plain) if bad is None else _tamper(_encrypt(plain), bad)
    sink = Sink(delay=0.0005)
    if bad is None:
        assert _helpers(ct, sink) >= 1
        assert bytes(sink.data) == plain
    else:
        with pytest.raises(age.PayloadError):
            _helpers(ct, sink)
        assert bytes(sink.data) == plain[: bad * CHUNK]
    enc, runs = Sink(), Runs()
    age.encrypt([IDENT.recipient()], io.BytesIO(plain), _bin(enc), output=runs)
    assert runs.started >= 1
    assert age.decrypt([IDENT], io.BytesIO(bytes(enc.data)), io.BytesIO())[1] == len(plain)
