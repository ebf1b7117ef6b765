"""Bech32 (BIP 173) without the 90-character limit, as age uses it for keys and plugins.

age recipients of the post-quantum hybrid run to ~1,960 characters, so the
length limit of BIP 173 is dropped; everything else (checksum, case rules) is
as specified. The checksum is always computed over the lowercase string.
"""

from __future__ import annotations

from keyagent.protocol import Malformed

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    from typing import Final

_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_REV: Final = {c: i for i, c in enumerate(_CHARSET)}
_GEN: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], frm: int, to: int, pad: bool) -> list[int] | None:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for value in data:
        acc = (acc << frm) | value
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or ((acc << (to - bits)) & maxv):
        # Leftover bits must be zero padding of less than one input group.
        return None
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under ``hrp`` (lowercase output; callers upper-case secrets)."""
    hrp = hrp.lower()
    values = _convert_bits(data, 8, 5, True)
    assert values is not None
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def decode(s: str) -> tuple[str, bytes]:
    """Return ``(hrp, data)`` with ``hrp`` lowercased; raise Malformed on any defect.

    The error text never echoes the input: it may be a secret key.
    """
    if not s.isascii() or any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise Malformed("The key string has invalid characters.")
    if s.lower() != s and s.upper() != s:
        raise Malformed("The key string mixes upper and lower case.")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise Malformed("The key string is not valid Bech32.")
    hrp = s[:pos]
    try:
        values = [_REV[c] for c in s[pos + 1 :]]
    except KeyError:
        raise Malformed("The key string has invalid characters.") from None
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise Malformed("The key string has a bad checksum (a typo?).")
    data = _convert_bits(values[:-6], 5, 8, False)
    if data is None:
        raise Malformed("The key string is not valid Bech32.")
    return hrp, bytes(data)
