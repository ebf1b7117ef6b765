"""OpenSSH key text without cryptography: ``authorized_keys`` lines and private-key headers.

The agent's checks (the command reads what it needs with the stdlib, `keyagent.sshtext`,
whose sentence for an unusable type is `unsupported_type`'s: a test compares). Errors are the
engine's. Only ``ssh-ed25519`` and ``ssh-rsa`` keys are age recipients.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final, NamedTuple

from .errors import ParseError, UnsupportedError

ED25519: Final = "ssh-ed25519"
RSA: Final = "ssh-rsa"
SUPPORTED: Final = (ED25519, RSA)
#: age refuses smaller RSA keys. One unwrap takes ~40 ms at 8192 bits (~0.3 s at 16384), and
#: small Decrypts run on the event loop (crypt.py): such keys are refused.
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192

OPENSSH_BEGIN: Final = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END: Final = "-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC: Final = b"openssh-key-v1\0"
_PEM_RE: Final = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
#: PEM labels of private keys and the SSH type each holds (None: known only once loaded).
_PEM_TYPES: Final[dict[str, str | None]] = {
    "RSA PRIVATE KEY": RSA,
    "PRIVATE KEY": None,
    "ENCRYPTED PRIVATE KEY": None,
    "EC PRIVATE KEY": "ecdsa",
    "DSA PRIVATE KEY": "ssh-dss",
}
#: A word that names an SSH public key type (what age skips with a warning in a -R file).
_SSH_TYPE_RE: Final = re.compile(r"(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)")


def unsupported_type(key_type: str) -> UnsupportedError:
    """The one sentence for an SSH key age cannot use."""
    if key_type.startswith("sk-"):
        what = "Security-key (FIDO, sk-*) SSH keys"
    elif key_type.startswith("ecdsa"):
        what = "ECDSA SSH keys"
    else:
        what = f"SSH keys of type {key_type[:40]!r}"
    return UnsupportedError(f"{what} cannot be used with age: use an ssh-ed25519 or ssh-rsa key.")


def rsa_too_small(bits: int) -> UnsupportedError:
    return UnsupportedError(f"This RSA key has {bits} bits: age needs at least {MIN_RSA_BITS}.")


def check_rsa_bits(bits: int) -> None:
    if bits < MIN_RSA_BITS:
        raise rsa_too_small(bits)
    if bits > MAX_RSA_BITS:
        raise UnsupportedError(
            f"This RSA key has {bits} bits: at most {MAX_RSA_BITS} are supported."
        )


def truncated() -> ParseError:
    return ParseError("The SSH private key is truncated or damaged.")


def read_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """One SSH wire ``string`` at ``pos``: (value, next position); ParseError if cut short."""
    if pos + 4 > len(data):
        raise truncated()
    size = int.from_bytes(data[pos : pos + 4], "big")
    end = pos + 4 + size
    if end > len(data):
        raise truncated()
    return data[pos + 4 : end], end


def wire_type(blob: bytes) -> str:
    """The key type named inside an SSH wire public key."""
    try:
        name, _ = read_string(blob, 0)
        return name.decode("ascii")
    except (ParseError, UnicodeDecodeError):
        raise ParseError("The SSH public key is not valid.") from None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _split_options(line: str) -> str:
    """``line`` without its leading ``authorized_keys`` options field (quotes respected)."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return line[i:].lstrip()
    return ""


def _key_of(text: str) -> tuple[str, bytes] | None:
    parts = text.split(None, 2)
    if len(parts) < 2:
        return None
    blob = _b64(parts[1])
    if blob is None:
        return None
    return parts[0], blob


def parse_public_line(line: str) -> tuple[str, bytes]:
    """(type, wire blob) of one ``authorized_keys`` or ``.pub`` line: leading options and the
    trailing comment are skipped, as age (Go's ssh.ParseAuthorizedKey) does.

    UnsupportedError for an SSH key type age does not take, ParseError for anything else."""
    line = line.strip()
    found = _key_of(line) or _key_of(_split_options(line))
    if found is None:
        words = [w for w in re.split(r"[ \t]+", line) if _SSH_TYPE_RE.fullmatch(w)]
        if words and words[0] not in SUPPORTED:
            raise unsupported_type(words[0])
        raise ParseError("The line is not an SSH public key.")
    name, blob = found
    inner = wire_type(blob)
    if inner not in SUPPORTED:
        raise unsupported_type(inner)
    if inner != name:
        raise ParseError("The SSH public key's type does not match its data.")
    return inner, blob


def encode_public(blob: bytes) -> str:
    """The ``authorized_keys`` form, no comment: ``ssh-ed25519 AAAA...``."""
    return f"{wire_type(blob)} {base64.b64encode(blob).decode('ascii')}"


def is_ssh_recipient(text: str) -> bool:
    """Whether ``text`` is meant as an SSH public key line (it may still be malformed): more
    than one word (age recipients and key names have one), one of them an SSH key type."""
    words = text.split()
    return len(words) > 1 and any(_SSH_TYPE_RE.fullmatch(w) for w in words)


class PrivateKeyInfo(NamedTuple):
    """What a private-key file says in the clear: its SSH type (None until loaded, for
    PKCS#8) and whether a passphrase protects it."""

    key_type: str | None
    encrypted: bool


def _openssh_info(text: str) -> PrivateKeyInfo:
    start = text.index(OPENSSH_BEGIN) + len(OPENSSH_BEGIN)
    end = text.find(_OPENSSH_END, start)
    if end < 0:
        raise truncated()
    data = _b64("".join(text[start:end].split()))
    if data is None or not data.startswith(_OPENSSH_MAGIC):
        raise truncated()
    cipher, pos = read_string(data, len(_OPENSSH_MAGIC))
    _kdf, pos = read_string(data, pos)
    _kdf_options, pos = read_string(data, pos)
    if pos + 4 > len(data):
        raise truncated()
    if int.from_bytes(data[pos : pos + 4], "big") != 1:
        raise UnsupportedError("The SSH key file holds more than one key: import one at a time.")
    public, pos = read_string(data, pos + 4)
    private, _ = read_string(data, pos)
    # The private section is whole cipher blocks (8 bytes at least): shorter is cut off.
    if len(private) < 8 or len(private) % 8:
        raise truncated()
    return PrivateKeyInfo(wire_type(public), cipher != b"none")


def private_key_info(text: str) -> PrivateKeyInfo:
    """Type and protection of an OpenSSH or PEM private key, read without a passphrase.

    ParseError if it is none (or cut short), UnsupportedError for a key type age cannot use."""
    if OPENSSH_BEGIN in text:
        info = _openssh_info(text)
    else:
        match = _PEM_RE.search(text)
        if match is None or match.group(1) not in _PEM_TYPES:
            raise ParseError("This is not an SSH private key.")
        label = match.group(1)
        if f"-----END {label}-----" not in text:
            raise truncated()
        encrypted = label == "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED" in text
        info = PrivateKeyInfo(_PEM_TYPES[label], encrypted)
    if info.key_type is not None and info.key_type not in SUPPORTED:
        raise unsupported_type(info.key_type)
    return info


def looks_like_private_key(text: str) -> bool:
    return OPENSSH_BEGIN in text or bool(_PEM_RE.search(text))
