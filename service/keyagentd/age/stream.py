"""The age payload: STREAM over ChaCha20-Poly1305 in 64 KiB chunks.

Nonce of chunk i: 11-byte big-endian i, then 0x01 for the final chunk and 0x00
otherwise. Decryption reads one chunk ahead to know which chunk is final and
writes a chunk only once it has authenticated, so on failure the output holds
exactly the authenticated prefix (what age itself releases).

Output goes through a `ChunkOutput` (``output``): by default `DirectOutput`, on the
calling thread. The engine starts no threads; the agent passes its overlapped writer
(keyagentd/overlap.py), which writes on a second thread while the cipher runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyagentd.secrets import wipe

from .errors import PayloadError
from .format import hkdf
from .source import Readable, read_full, write_all

CHUNK: Final = 64 * 1024
TAG: Final = 16
CHUNK_CT: Final = CHUNK + TAG
NONCE_SIZE: Final = 16
_LAST: Final = b"\x01"
_MORE: Final = b"\x00"


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return hkdf(file_key, nonce, b"payload")


def encrypt_payload(
    key: bytes, src: Readable, dst: Any, *, output: OutputFactory | None = None
) -> int:
    """Encrypt ``src`` to ``dst``; returns the ciphertext bytes written."""
    aead = ChaCha20Poly1305(key)
    cur = bytearray(CHUNK)
    n = read_full(src, memoryview(cur))
    # The second input buffer only for payloads over a chunk (and _Output sizes its own
    # buffer by the first chunk): a small payload allocates one 64 KiB buffer, not three.
    nxt: bytearray | None = None
    counter = 0
    written = 0
    with (output or DirectOutput)(dst, CHUNK_CT) as out:
        while True:
            last = n < CHUNK
            m = 0
            if not last:
                if nxt is None:
                    nxt = bytearray(CHUNK)
                m = read_full(src, memoryview(nxt))
                last = m == 0
            if not last:
                out.before_chunk(counter)
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
    output: OutputFactory | None = None,
) -> int:
    """Decrypt the chunks of ``src`` to ``dst``; returns plaintext bytes written.

    Raises PayloadError on any failure, after writing every chunk that authenticated
    (as age does: a valid final chunk followed by trailing data is released).
    ``progress`` gets the running total of plaintext bytes after each chunk (handed to
    ``output``: authenticated, perhaps still queued for writing).
    """
    aead = ChaCha20Poly1305(key)
    cur = bytearray(CHUNK_CT)
    n = read_full(src, memoryview(cur))
    # As in encrypt_payload: the other buffers are sized (or made at all) by what came in.
    nxt: bytearray | None = None
    counter = 0
    written = 0
    # On the way out the output writes everything committed (the authenticated prefix).
    with (output or DirectOutput)(dst, CHUNK) as out:
        while True:
            prefix = counter.to_bytes(11, "big")
            if n < CHUNK_CT:
                # A short chunk ends the stream: it must be the final chunk, and may
                # be empty only when it is the whole payload.
                if n < TAG or (n == TAG and counter != 0):
                    raise PayloadError("The encrypted file is cut short or damaged.")
                out_mv = out.slot(n - TAG)
                k = _open(aead, prefix + _LAST, memoryview(cur)[:n], out_mv)
                if k < 0:
                    raise PayloadError()
                m = 0
            else:
                if nxt is None:
                    nxt = bytearray(CHUNK_CT)
                out.before_chunk(counter)
                out_mv = out.slot(CHUNK)
                m = read_full(src, memoryview(nxt))
                # A full chunk is final iff nothing follows. On failure try the other
                # flag, so the output of a damaged file matches what age releases.
                k = _open(aead, prefix + (_LAST if m == 0 else _MORE), cur, out_mv)
                if k < 0:
                    k = _open(aead, prefix + (_MORE if m == 0 else _LAST), cur, out_mv)
                    if k < 0:
                        raise PayloadError()
                    out.emit(out_mv, k)
                    if m == 0:
                        raise PayloadError("The encrypted file is cut short.")
                    raise PayloadError("The encrypted file has data after its end.")
            out.emit(out_mv, k)
            written += k
            if progress is not None:
                progress(written)
            if m == 0:
                return written
            assert nxt is not None
            counter += 1
            cur, nxt, n = nxt, cur, m


class ChunkOutput(Protocol):
    """Where one stream's output chunks go (a context manager around the stream)."""

    def __enter__(self) -> ChunkOutput: ...
    def __exit__(self, *exc: object) -> None: ...

    def before_chunk(self, counter: int) -> None:
        """Called before each chunk that is not the last (``counter``: its index)."""

    def slot(self, size: int) -> memoryview:
        """The buffer for the next output chunk (``size``: the bytes it needs)."""
        ...

    def emit(self, out: memoryview, k: int) -> None:
        """Send the first ``k`` bytes of ``out`` (from `slot`) on: they authenticated."""


#: Makes a stream's output: ``factory(dst, chunk)`` with ``chunk`` a full output chunk's size.
OutputFactory = Callable[[Any, int], ChunkOutput]


class DirectOutput:
    """The default output: one buffer of its own, each chunk written straight to ``dst``
    on the calling thread. (The agent's overlapped writer lives outside the engine.)"""

    __slots__ = ("_dst", "_own")

    def __init__(self, dst: Any, chunk: int) -> None:
        del chunk  # sized by what comes in: a short final chunk needs less
        self._dst = dst
        self._own: memoryview | None = None

    def __enter__(self) -> DirectOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            wipe(self._own)  # the last plaintext chunk, when decrypting

    def before_chunk(self, counter: int) -> None:
        pass

    def slot(self, size: int) -> memoryview:
        if self._own is None:
            self._own = memoryview(bytearray(size))
        return self._own

    def emit(self, out: memoryview, k: int) -> None:
        write_all(self._dst, out[:k])


def _open(
    aead: ChaCha20Poly1305, nonce: bytes, data: bytearray | memoryview, out: memoryview
) -> int:
    """Decrypt into ``out``; -1 if the chunk does not authenticate under ``nonce``."""
    try:
        return aead.decrypt_into(nonce, data, None, out[: len(data) - TAG])
    except InvalidTag:
        return -1
