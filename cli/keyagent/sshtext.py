"""SSH key text as the command reads it, with the stdlib alone: whether a private key file is
protected by a passphrase (so the command asks for it) and which key type a file or an
``authorized_keys`` line names (so a type age cannot use is refused before any prompt, or
skipped in a ``-R`` file, as age does).

The agent parses and checks the keys themselves (`keyagentd.age.sshformat`, `sshload`) and
decrypts protected ones: the command imports nothing of keyagentd and never sees a decrypted
key. The sentence for an unusable type is the agent's (tests/test_age_ssh.py compares).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

SUPPORTED: Final = ("ssh-ed25519", "ssh-rsa")
OPENSSH_BEGIN: Final = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC: Final = b"openssh-key-v1\0"
_PEM_RE: Final = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
#: PEM labels that name a key type age cannot use (other labels: the agent finds out).
_PEM_TYPES: Final = {"EC PRIVATE KEY": "ecdsa", "DSA PRIVATE KEY": "ssh-dss"}
#: A word that names an SSH public key type.
_TYPE_RE: Final = re.compile(r"(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)")


def unsupported_sentence(key_type: str) -> str:
    """The one sentence for an SSH key age cannot use (the agent's words)."""
    if key_type.startswith("sk-"):
        what = "Security-key (FIDO, sk-*) SSH keys"
    elif key_type.startswith("ecdsa"):
        what = "ECDSA SSH keys"
    else:
        what = f"SSH keys of type {key_type[:40]!r}"
    return f"{what} cannot be used with age: use an ssh-ed25519 or ssh-rsa key."


def looks_like_private_key(text: str) -> bool:
    return OPENSSH_BEGIN in text or bool(_PEM_RE.search(text))


def is_public_key(text: str) -> bool:
    """More than one word, one of them an SSH key type (age recipients have one word)."""
    words = text.split()
    return len(words) > 1 and any(_TYPE_RE.fullmatch(w) for w in words)


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """One SSH wire ``string`` at ``pos``; ValueError if cut short."""
    end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
    if pos + 4 > len(data) or end > len(data):
        raise ValueError("cut short")
    return data[pos + 4 : end], end


def _openssh_header(text: str) -> tuple[bytes, str] | None:
    """(cipher name, key type) of an OpenSSH private key file; None if unreadable (the
    agent says what is wrong with it)."""
    body = text.split(OPENSSH_BEGIN, 1)[1].split("-----END", 1)[0]
    b64 = "".join(body.split())
    try:
        data = base64.b64decode(b64[: len(b64) // 4 * 4], validate=True)
        if not data.startswith(_OPENSSH_MAGIC):
            return None
        cipher, pos = _string(data, len(_OPENSSH_MAGIC))
        _kdf, pos = _string(data, pos)
        _kdf_options, pos = _string(data, pos)
        public, _ = _string(data, pos + 4)  # after the number of keys
        key_type, _ = _string(public, 0)
        return cipher, key_type.decode("ascii")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def is_protected(text: str) -> bool:
    """Whether the private key in ``text`` is encrypted under a passphrase."""
    if OPENSSH_BEGIN in text:
        header = _openssh_header(text)
        return header is not None and header[0] != b"none"
    return "Proc-Type: 4,ENCRYPTED" in text or "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text


def private_key_type(text: str) -> str | None:
    """The key type the private key file names in the clear (None: not known before the
    agent opens it)."""
    if OPENSSH_BEGIN in text:
        header = _openssh_header(text)
        return None if header is None else header[1]
    match = _PEM_RE.search(text)
    return None if match is None else _PEM_TYPES.get(match.group(1))


def _after_options(line: str) -> str:
    """``line`` without its leading ``authorized_keys`` options field (quotes respected)."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return line[i:].lstrip()
    return ""


def _is_base64(word: str) -> bool:
    try:
        base64.b64decode(word.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return True


def line_key_type(line: str) -> tuple[str, bool] | None:
    """The key type an ``authorized_keys``/``.pub`` line names (its first word, or the first
    after the options field) and whether base64 follows it; None if it names none."""
    for words in (line.split(), _after_options(line).split()):
        if words and _TYPE_RE.fullmatch(words[0]):
            return words[0], len(words) > 1 and _is_base64(words[1])
    return None
