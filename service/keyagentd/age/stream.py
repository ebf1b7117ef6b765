"""The age payload: STREAM over ChaCha20-Poly1305 in 64 KiB chunks.

Nonce of chunk i: 11-byte big-endian i, then 0x01 for the final chunk and 0x00
otherwise. Decryption reads one chunk ahead to know which chunk is final and
writes a chunk only once it has authenticated, so on failure the output holds
exactly the authenticated prefix (what age itself releases).

With ``overlap`` a writer thread (overlap.py) writes authenticated chunks while the
cipher works on the next ones; it starts only after `OVERLAP_AFTER` chunks, so small
payloads never pay for a thread, and only while the overlapped streams running leave a
core free for it (checked every `RETUNE_EVERY` chunks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyagent.protocol import Integrity
from keyagentd.secrets import wipe

from .format import hkdf
from .overlap import STREAMS, OverlapWriter, retune
from .source import Readable, read_full, write_all

CHUNK: Final = 64 * 1024
TAG: Final = 16
CHUNK_CT: Final = CHUNK + TAG
NONCE_SIZE: Final = 16
_LAST: Final = b"\x01"
_MORE: Final = b"\x00"
#: Chunks written directly before an ``overlap`` stream starts its writer thread (1 MiB).
OVERLAP_AFTER: Final = 16
#: How often (in chunks) an ``overlap`` stream checks whether a core is free for its writer.
RETUNE_EVERY: Final = 16


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return hkdf(file_key, nonce, b"payload")


def encrypt_payload(key: bytes, src: Readable, dst: Any, *, overlap: bool = False) -> int:
    """Encrypt ``src`` to ``dst``; returns the ciphertext bytes written."""
    aead = ChaCha20Poly1305(key)
    cur = bytearray(CHUNK)
    n = read_full(src, memoryview(cur))
    # The second input buffer only for payloads over a chunk (and _Output sizes its own
    # buffer by the first chunk): a small payload allocates one 64 KiB buffer, not three.
    nxt: bytearray | None = None
    counter = 0
    written = 0
    with _Output(dst, overlap, CHUNK_CT) as out:
        while True:
            last = n < CHUNK
            m = 0
            if not last:
                if nxt is None:
                    nxt = bytearray(CHUNK)
                m = read_full(src, memoryview(nxt))
                last = m == 0
            if not last:
                out.retune(counter)
            out_mv = out.slot(n + TAG if last else CHUNK_CT)
            nonce = counter.to_bytes(11, "big") + (_LAST if last else _MORE)
            k = aead.encrypt_into(nonce, memoryview(cur)[:n], None, out_mv[: n + TAG])
            out.emit(out_mv, k)
            written += k
            if last:
                return written
            assert nxt is not None
            counter += 1
            cur, nxt, n = nxt, cur, m


def decrypt_payload(
    key: bytes,
    src: Readable,
    dst: Any,
    progress: Callable[[int], None] | None = None,
    *,
    overlap: bool = False,
) -> int:
    """Decrypt the chunks of ``src`` to ``dst``; returns plaintext bytes written.

    Raises Integrity on any failure, after writing every chunk that authenticated
    (as age does: a valid final chunk followed by trailing data is released).
    ``progress`` gets the running total of plaintext bytes after each chunk (with
    ``overlap``: authenticated and queued for writing).
    """
    aead = ChaCha20Poly1305(key)
    cur = bytearray(CHUNK_CT)
    n = read_full(src, memoryview(cur))
    # As in encrypt_payload: the other buffers are sized (or made at all) by what came in.
    nxt: bytearray | None = None
    counter = 0
    written = 0
    # On the way out _Output writes everything committed (the authenticated prefix).
    with _Output(dst, overlap, CHUNK) as out:
        while True:
            prefix = counter.to_bytes(11, "big")
            if n < CHUNK_CT:
                # A short chunk ends the stream: it must be the final chunk, and may
                # be empty only when it is the whole payload.
                if n < TAG or (n == TAG and counter != 0):
                    raise Integrity("The encrypted file is cut short or damaged.")
                out_mv = out.slot(n - TAG)
                k = _open(aead, prefix + _LAST, memoryview(cur)[:n], out_mv)
                if k < 0:
                    raise Integrity()
                m = 0
            else:
                if nxt is None:
                    nxt = bytearray(CHUNK_CT)
                out.retune(counter)
                out_mv = out.slot(CHUNK)
                m = read_full(src, memoryview(nxt))
                # A full chunk is final iff nothing follows. On failure try the other
                # flag, so the output of a damaged file matches what age releases.
                k = _open(aead, prefix + (_LAST if m == 0 else _MORE), cur, out_mv)
                if k < 0:
                    k = _open(aead, prefix + (_MORE if m == 0 else _LAST), cur, out_mv)
                    if k < 0:
                        raise Integrity()
                    out.emit(out_mv, k)
                    if m == 0:
                        raise Integrity("The encrypted file is cut short.")
                    raise Integrity("The encrypted file has data after its end.")
            out.emit(out_mv, k)
            written += k
            if progress is not None:
                progress(written)
            if m == 0:
                return written
            assert nxt is not None
            counter += 1
            cur, nxt, n = nxt, cur, m


class _Output:
    """Where a stream's output chunks go: one buffer of its own written straight to
    ``dst`` or, with ``overlap`` and once `retune` starts it, a writer thread's slots.

    As a context manager it counts the stream in `STREAMS` (with ``overlap``) and on
    the way out closes the writer: that writes everything committed, ends the thread
    and raises a write error first (single-threaded, it would have come first).
    """

    __slots__ = ("_chunk", "_dst", "_overlap", "_own", "_writer")

    def __init__(self, dst: Any, overlap: bool, chunk: int) -> None:
        self._dst = dst
        self._overlap = overlap
        self._chunk = chunk  # a full output chunk: the writer's slot size
        # Made on first use, sized by what came in (a short final chunk needs less).
        self._own: memoryview | None = None
        self._writer: OverlapWriter | None = None

    def __enter__(self) -> _Output:
        if self._overlap:
            STREAMS.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._own is not None:
                wipe(self._own)  # the last plaintext chunk, when decrypting
            if self._overlap:
                STREAMS.leave()

    def retune(self, counter: int) -> None:
        """Before a chunk that is not the last: start or stop the writer when due."""
        if self._overlap and _retune_now(counter):
            self._writer = retune(self._writer, self._dst, self._chunk)

    def slot(self, size: int) -> memoryview:
        """The buffer for the next output chunk (``size``: what our own one needs)."""
        if self._writer is not None:
            return self._writer.slot()
        if self._own is None:
            self._own = memoryview(bytearray(size))
        return self._own

    def emit(self, out: memoryview, k: int) -> None:
        """Send the first ``k`` bytes of ``out`` (from `slot`) on."""
        if self._writer is not None:
            self._writer.commit(k)
        else:
            write_all(self._dst, out[:k])


def _retune_now(counter: int) -> bool:
    """Whether to (re)decide on the writer thread before this chunk: past the first MiB,
    then every MiB (other streams start and end)."""
    return counter >= OVERLAP_AFTER and counter % RETUNE_EVERY == 0


def _open(
    aead: ChaCha20Poly1305, nonce: bytes, data: bytearray | memoryview, out: memoryview
) -> int:
    """Decrypt into ``out``; -1 if the chunk does not authenticate under ``nonce``."""
    try:
        return aead.decrypt_into(nonce, data, None, out[: len(data) - TAG])
    except InvalidTag:
        return -1
