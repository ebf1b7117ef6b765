"""The age payload: STREAM over ChaCha20-Poly1305 in 64 KiB chunks.

Nonce of chunk i: 11-byte big-endian i, then 0x01 for the final chunk and 0x00
otherwise. Decryption reads one chunk ahead to know which chunk is final and
writes a chunk only once it has authenticated, so on failure the output holds
exactly the authenticated prefix (what age itself releases).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyagent.protocol import Integrity

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


def encrypt_payload(key: bytes, src: Readable, dst: Any) -> int:
    """Encrypt ``src`` to ``dst``; returns the ciphertext bytes written."""
    aead = ChaCha20Poly1305(key)
    cur = bytearray(CHUNK)
    n = read_full(src, memoryview(cur))
    # The second input buffer and the full-size output one only for payloads over a chunk:
    # a small payload allocates (and zero-fills) one 64 KiB buffer, not three.
    nxt: bytearray | None = None
    out_mv: memoryview | None = None
    counter = 0
    written = 0
    while True:
        last = n < CHUNK
        m = 0
        if not last:
            if nxt is None:
                nxt = bytearray(CHUNK)
            m = read_full(src, memoryview(nxt))
            last = m == 0
        if out_mv is None:
            out_mv = memoryview(bytearray(n + TAG if last else CHUNK_CT))
        nonce = counter.to_bytes(11, "big") + (_LAST if last else _MORE)
        k = aead.encrypt_into(nonce, memoryview(cur)[:n], None, out_mv[: n + TAG])
        write_all(dst, out_mv[:k])
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
) -> int:
    """Decrypt the chunks of ``src`` to ``dst``; returns plaintext bytes written.

    Raises Integrity on any failure, after writing every chunk that authenticated
    (as age does: a valid final chunk followed by trailing data is released).
    ``progress`` gets the running total of plaintext bytes after each chunk.
    """
    aead = ChaCha20Poly1305(key)
    cur = bytearray(CHUNK_CT)
    n = read_full(src, memoryview(cur))
    # As in encrypt_payload: the other buffers are sized (or made at all) by what came in.
    nxt: bytearray | None = None
    out_mv: memoryview | None = None
    counter = 0
    written = 0
    while True:
        prefix = counter.to_bytes(11, "big")
        if n < CHUNK_CT:
            # A short chunk ends the stream: it must be the final chunk, and may
            # be empty only when it is the whole payload.
            if n < TAG or (n == TAG and counter != 0):
                raise Integrity("The encrypted file is cut short or damaged.")
            if out_mv is None:
                out_mv = memoryview(bytearray(n - TAG))
            k = _open(aead, prefix + _LAST, memoryview(cur)[:n], out_mv)
            if k < 0:
                raise Integrity()
            m = 0
        else:
            if nxt is None:
                nxt = bytearray(CHUNK_CT)
                out_mv = memoryview(bytearray(CHUNK))
            assert out_mv is not None
            m = read_full(src, memoryview(nxt))
            # A full chunk is final iff nothing follows. On failure try the other
            # flag, so the output of a damaged file matches what age releases.
            k = _open(aead, prefix + (_LAST if m == 0 else _MORE), cur, out_mv)
            if k < 0:
                k = _open(aead, prefix + (_MORE if m == 0 else _LAST), cur, out_mv)
                if k < 0:
                    raise Integrity()
                write_all(dst, out_mv[:k])
                if m == 0:
                    raise Integrity("The encrypted file is cut short.")
                raise Integrity("The encrypted file has data after its end.")
        write_all(dst, out_mv[:k])
        written += k
        if progress is not None:
            progress(written)
        if m == 0:
            return written
        assert nxt is not None
        counter += 1
        cur, nxt, n = nxt, cur, m


def _open(
    aead: ChaCha20Poly1305, nonce: bytes, data: bytearray | memoryview, out: memoryview
) -> int:
    """Decrypt into ``out``; -1 if the chunk does not authenticate under ``nonce``."""
    try:
        return aead.decrypt_into(nonce, data, None, out[: len(data) - TAG])
    except InvalidTag:
        return -1
