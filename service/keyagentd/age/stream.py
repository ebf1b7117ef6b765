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
    # The second input buffer and the full-size output one only for payloads over a chunk:
    # a small payload allocates (and zero-fills) one 64 KiB buffer, not three.
    nxt: bytearray | None = None
    own: memoryview | None = None
    writer: OverlapWriter | None = None
    counter = 0
    written = 0
    if overlap:
        STREAMS.enter()
    try:
        while True:
            last = n < CHUNK
            m = 0
            if not last:
                if nxt is None:
                    nxt = bytearray(CHUNK)
                m = read_full(src, memoryview(nxt))
                last = m == 0
            if overlap and not last and _retune_now(counter):
                writer = retune(writer, dst, CHUNK_CT)
            if writer is not None:
                out_mv = writer.slot()
            else:
                if own is None:
                    own = memoryview(bytearray(n + TAG if last else CHUNK_CT))
                out_mv = own
            nonce = counter.to_bytes(11, "big") + (_LAST if last else _MORE)
            k = aead.encrypt_into(nonce, memoryview(cur)[:n], None, out_mv[: n + TAG])
            _emit(writer, dst, out_mv, k)
            written += k
            if last:
                return written
            assert nxt is not None
            counter += 1
            cur, nxt, n = nxt, cur, m
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            if overlap:
                STREAMS.leave()


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
    own: memoryview | None = None
    writer: OverlapWriter | None = None
    counter = 0
    written = 0
    if overlap:
        STREAMS.enter()
    try:
        while True:
            prefix = counter.to_bytes(11, "big")
            if n < CHUNK_CT:
                # A short chunk ends the stream: it must be the final chunk, and may
                # be empty only when it is the whole payload.
                if n < TAG or (n == TAG and counter != 0):
                    raise Integrity("The encrypted file is cut short or damaged.")
                if writer is not None:
                    out_mv = writer.slot()
                else:
                    if own is None:
                        own = memoryview(bytearray(n - TAG))
                    out_mv = own
                k = _open(aead, prefix + _LAST, memoryview(cur)[:n], out_mv)
                if k < 0:
                    raise Integrity()
                m = 0
            else:
                if nxt is None:
                    nxt = bytearray(CHUNK_CT)
                if overlap and _retune_now(counter):
                    writer = retune(writer, dst, CHUNK)
                if writer is not None:
                    out_mv = writer.slot()
                else:
                    if own is None:
                        own = memoryview(bytearray(CHUNK))
                    out_mv = own
                m = read_full(src, memoryview(nxt))
                # A full chunk is final iff nothing follows. On failure try the other
                # flag, so the output of a damaged file matches what age releases.
                k = _open(aead, prefix + (_LAST if m == 0 else _MORE), cur, out_mv)
                if k < 0:
                    k = _open(aead, prefix + (_MORE if m == 0 else _LAST), cur, out_mv)
                    if k < 0:
                        raise Integrity()
                    _emit(writer, dst, out_mv, k)
                    if m == 0:
                        raise Integrity("The encrypted file is cut short.")
                    raise Integrity("The encrypted file has data after its end.")
            _emit(writer, dst, out_mv, k)
            written += k
            if progress is not None:
                progress(written)
            if m == 0:
                return written
            assert nxt is not None
            counter += 1
            cur, nxt, n = nxt, cur, m
    finally:
        # Writes everything committed (the authenticated prefix), ends the thread and
        # raises a write error first: single-threaded, it would have come first.
        try:
            if writer is not None:
                writer.close()
        finally:
            if overlap:
                STREAMS.leave()


def _retune_now(counter: int) -> bool:
    """Whether to (re)decide on the writer thread before this chunk: past the first MiB,
    then every MiB (other streams start and end)."""
    return counter >= OVERLAP_AFTER and counter % RETUNE_EVERY == 0


def _emit(writer: OverlapWriter | None, dst: Any, out: memoryview, k: int) -> None:
    if writer is not None:
        writer.commit(k)
    else:
        write_all(dst, out[:k])


def _open(
    aead: ChaCha20Poly1305, nonce: bytes, data: bytearray | memoryview, out: memoryview
) -> int:
    """Decrypt into ``out``; -1 if the chunk does not authenticate under ``nonce``."""
    try:
        return aead.decrypt_into(nonce, data, None, out[: len(data) - TAG])
    except InvalidTag:
        return -1
