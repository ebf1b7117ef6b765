"""The age payload: STREAM over ChaCha20-Poly1305 in 64 KiB chunks.

Nonce of chunk i: 11-byte big-endian i, then 0x01 for the final chunk and 0x00
otherwise. Decryption reads one byte ahead to know which chunk is final and
emits a chunk only once it has authenticated, so on failure the output holds
exactly the authenticated prefix (what age itself releases).

A pass runs batch by batch (batches.py): `open_batch` / `seal_batch` work on one batch
of chunks, the reader and the emitter keep the order. ``output`` chooses the runner: by
default `SerialRun`, on the calling thread; the agent passes its parallel run
(keyagentd/overlap.py), which ciphers batches on several threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .batches import BatchReader, Done, Filled, Payload, Runner, SerialRun, chunks_in
from .errors import PayloadError
from .format import hkdf
from .source import Readable, write_all

CHUNK: Final = 64 * 1024
TAG: Final = 16
CHUNK_CT: Final = CHUNK + TAG
NONCE_SIZE: Final = 16
_LAST: Final = b"\x01"
_MORE: Final = b"\x00"


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return hkdf(file_key, nonce, b"payload")


def encrypt_payload(key: bytes, src: Readable, dst: Any, *, output: Runner | None = None) -> int:
    """Encrypt ``src`` to ``dst``; returns the ciphertext bytes written."""
    work = functools.partial(seal_batch, ChaCha20Poly1305(key))
    emit = functools.partial(write_all, dst)
    payload = Payload(CHUNK, BatchReader(src, CHUNK).read, work, emit, _sealed_size)
    return (output or SerialRun)(payload).run()


def decrypt_payload(
    key: bytes,
    src: Readable,
    dst: Any,
    progress: Callable[[int], None] | None = None,
    *,
    output: Runner | None = None,
) -> int:
    """Decrypt the chunks of ``src`` to ``dst``; returns plaintext bytes written.

    Raises PayloadError on any failure, after writing every chunk that authenticated
    (as age does: a valid final chunk followed by trailing data is released).
    ``progress`` gets the running total of plaintext bytes after each batch written.
    """
    work = functools.partial(open_batch, ChaCha20Poly1305(key))
    emit: Callable[[memoryview], None] = functools.partial(write_all, dst)
    if progress is not None:
        emit = _counting(emit, progress)
    payload = Payload(CHUNK_CT, BatchReader(src, CHUNK_CT).read, work, emit, _opened_size)
    return (output or SerialRun)(payload).run()


def _counting(
    emit: Callable[[memoryview], None], progress: Callable[[int], None]
) -> Callable[[memoryview], None]:
    total = 0

    def counted(data: memoryview) -> None:
        nonlocal total
        emit(data)
        total += len(data)
        progress(total)

    return counted


def _sealed_size(n: int) -> int:
    return n + TAG * max(1, -(-n // CHUNK))


def _opened_size(n: int) -> int:
    return n  # never more than the ciphertext


def seal_batch(aead: ChaCha20Poly1305, f: Filled, data: memoryview, out: memoryview) -> Done:
    """Encrypt the chunks of one batch into ``out``."""
    count, final = chunks_in(f, CHUNK)
    k = 0
    for j in range(count):
        last = final and j == count - 1
        piece = data[j * CHUNK : min(f.n, (j + 1) * CHUNK)]
        nonce = (f.first + j).to_bytes(11, "big") + (_LAST if last else _MORE)
        k += aead.encrypt_into(nonce, piece, None, out[k : k + len(piece) + TAG])
    return Done(k, final, f.error)


def open_batch(aead: ChaCha20Poly1305, f: Filled, data: memoryview, out: memoryview) -> Done:
    """Decrypt the chunks of one batch into ``out``, up to the first that fails."""
    count, final = chunks_in(f, CHUNK_CT)
    middle = count - 1 if final else count  # whole chunks that data follows
    decrypt = aead.decrypt_into
    k = j = 0
    try:  # the common case, in a tight loop: the GIL is held between chunks
        for j in range(middle):
            nonce = (f.first + j).to_bytes(11, "big") + _MORE
            piece = data[j * CHUNK_CT : (j + 1) * CHUNK_CT]
            k += decrypt(nonce, piece, None, out[k : k + CHUNK])
    except InvalidTag:
        failed = j
    else:
        failed = middle
    for j in range(failed, count):
        last = final and j == count - 1
        piece = data[j * CHUNK_CT : min(f.n, (j + 1) * CHUNK_CT)]
        got, error = _open_chunk(aead, f.first + j, piece, last, out[k:])
        k += got
        if error is not None:
            return Done(k, False, error)
    return Done(k, final, f.error)


def _open_chunk(
    aead: ChaCha20Poly1305, counter: int, piece: memoryview, last: bool, out: memoryview
) -> tuple[int, PayloadError | None]:
    """Plaintext bytes of one chunk (0 if it fails) and the error that ends the stream."""
    prefix = counter.to_bytes(11, "big")
    n = len(piece)
    if n < CHUNK_CT:
        # A short chunk ends the stream: it must be the final chunk, and may be empty
        # only when it is the whole payload.
        if n < TAG or (n == TAG and counter != 0):
            return 0, PayloadError("The encrypted file is cut short or damaged.")
        k = _open(aead, prefix + _LAST, piece, out)
        return (0, PayloadError()) if k < 0 else (k, None)
    # A full chunk is final iff nothing follows. On failure try the other flag, so the
    # output of a damaged file matches what age releases.
    k = _open(aead, prefix + (_LAST if last else _MORE), piece, out)
    if k >= 0:
        return k, None
    k = _open(aead, prefix + (_MORE if last else _LAST), piece, out)
    if k < 0:
        return 0, PayloadError()
    if last:
        return k, PayloadError("The encrypted file is cut short.")
    return k, PayloadError("The encrypted file has data after its end.")


def _open(aead: ChaCha20Poly1305, nonce: bytes, data: memoryview, out: memoryview) -> int:
    """Decrypt into ``out``; -1 if the chunk does not authenticate under ``nonce``."""
    try:
        return aead.decrypt_into(nonce, data, None, out[: len(data) - TAG])
    except InvalidTag:
        return -1
