"""Conformance runner for the age test vectors (C2SP/CCTV age testkit format).

    python -m keyagentd.age.testkit DIR [DIR...]

Runs every vector file, prints one line per failure and ends with
``N passed, N failed``; exits 1 if any failed or no vector was found.
"""

from __future__ import annotations

import hashlib
import io
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .engine import Decryptor
from .errors import AgeError, ArmorError, HeaderMacError, NoMatchError
from .keys import Identity, parse_identity
from .scrypt import ScryptIdentity

#: The failure expectations of the format. They name the stage at which decryption must
#: fail, not an error: any named error of that stage passes (an unknown version answering
#: UnsupportedError is a header failure as much as a ParseError is).
STAGES: Final = frozenset(
    {"armor failure", "header failure", "HMAC failure", "no match", "payload failure"}
)


def stage_of(error: AgeError, in_payload: bool) -> str:
    """The stage a named error belongs to: armor decoding (wherever the armored input is
    read), the payload (once the header is accepted), else the header: no identity matched,
    its MAC did not verify, or anything else about it."""
    if isinstance(error, ArmorError):
        return "armor failure"
    if in_payload:
        return "payload failure"
    if isinstance(error, NoMatchError):
        return "no match"
    if isinstance(error, HeaderMacError):
        return "HMAC failure"
    return "header failure"


@dataclass(frozen=True)
class Vector:
    name: str
    expect: str
    payload: str | None
    file_key: str | None
    identities: tuple[str, ...]
    passphrases: tuple[str, ...]
    armored: bool
    body: bytes
    comment: str = field(default="")


def parse_vector(name: str, data: bytes) -> Vector:
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        raise ValueError("no blank line after the vector's header")
    fields: dict[str, list[str]] = {}
    for line in head.decode("utf-8").split("\n"):
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    compressed = fields.get("compressed", [""])[0]
    if compressed == "zlib":
        body = zlib.decompress(body)
    elif compressed:
        raise ValueError(f"unknown compression {compressed!r}")

    def one(key: str) -> str | None:
        return fields.get(key, [None])[0]

    expect = one("expect")
    if expect is None:
        raise ValueError("no 'expect' field")
    return Vector(
        name=name,
        expect=expect,
        payload=one("payload"),
        file_key=one("file key"),
        identities=tuple(fields.get("identity", [])),
        passphrases=tuple(fields.get("passphrase", [])),
        armored=one("armored") == "yes",
        body=body,
        comment=one("comment") or "",
    )


def run_vector(v: Vector, *, whole: bool = False) -> str | None:
    """None if the engine reaches exactly the expected outcome, else why not. ``whole``: the
    file is given as ``bytes`` (as Decrypt does), else read as a stream."""
    identities: list[Identity] = [parse_identity(s) for s in v.identities]
    identities += [ScryptIdentity(p) for p in v.passphrases]
    out = io.BytesIO()
    error: AgeError | None = None
    decryptor = None
    in_payload = False
    try:
        decryptor = Decryptor(v.body if whole else io.BytesIO(v.body))
        decryptor.unwrap(identities)
        in_payload = True
        decryptor.decrypt_to(out)
    except AgeError as e:
        error = e
    released = hashlib.sha256(out.getvalue()).hexdigest()
    if v.expect == "success":
        if error is not None:
            return f"expected success, got {type(error).__name__}: {error}"
        if v.payload is not None and released != v.payload:
            return "wrong plaintext"
        if decryptor is not None and decryptor.armored != v.armored:
            return "armor not detected correctly"
        if (
            v.file_key is not None
            and decryptor is not None
            and decryptor.file_key_for_tests() != bytes.fromhex(v.file_key)
        ):
            return "wrong file key"
        return None
    if v.expect not in STAGES:
        return f"unknown expectation {v.expect!r}"
    got = None if error is None else stage_of(error, in_payload)
    if got != v.expect:
        what = "success" if error is None else f"{got} ({type(error).__name__}: {error})"
        return f"expected {v.expect}, got {what}"
    if v.expect == "payload failure":
        if v.payload is not None and released != v.payload:
            return f"released {len(out.getvalue())} bytes, not the authenticated prefix"
    elif out.tell():
        return "plaintext released despite a header failure"
    return None


def vector_files(dirs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        files += sorted(p for p in d.iterdir() if p.is_file() and p.suffix != ".md")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m keyagentd.age.testkit DIR [DIR...]", file=sys.stderr)
        return 2
    passed = failed = 0
    for path in vector_files([Path(a) for a in args]):
        try:
            problem = run_vector(parse_vector(path.name, path.read_bytes()))
        except Exception as e:  # a crash is a failure of that vector
            problem = f"crashed: {type(e).__name__}: {e}"
        if problem is None:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {path.name}: {problem}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
