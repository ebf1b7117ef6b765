"""age's ssh-ed25519 and ssh-rsa recipient types in the engine, against the `age` command
(Debian's 1.1.1) and pyrage, with keys made by `ssh-keygen`; and the refusals of bad keys."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pyrage
import pytest

from conftest import have
from keyagent.protocol import Malformed
from keyagentd import age
from keyagentd.age import sshformat, sshload
from keyagentd.age.errors import NoMatchError, ParseError, PassphraseError, UnsupportedError
from keyagentd.age.format import Stanza
from keyagentd.age.ssh import montgomery
from keyagentd.kdf import KdfParams
from keyagentd.keyfile import KeyRecord, encode_key_file, open_sealed, parse_key_file, seal
from ssh_support import keygen

pytestmark = pytest.mark.skipif(
    not (have("age") and have("ssh-keygen")), reason="needs the age command and ssh-keygen"
)
SSH_PW = "ssh secret"
FAST_KDF = KdfParams(memory_kib=8, time_cost=1, parallelism=1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sshkeys")
    return {
        "ed25519": keygen(d, "ed", "-t", "ed25519"),
        "ed25519-pw": keygen(d, "edpw", "-t", "ed25519", passphrase=SSH_PW),
        "rsa": keygen(d, "rsa", "-t", "rsa", "-b", "2048"),
        "rsa-pw": keygen(d, "rsapw", "-t", "rsa", "-b", "3072", passphrase=SSH_PW),
        "rsa-pem": keygen(d, "rsapem", "-t", "rsa", "-b", "2048", "-m", "PEM"),
        "rsa-1024": keygen(d, "rsa1k", "-t", "rsa", "-b", "1024"),
        "ecdsa": keygen(d, "ec", "-t", "ecdsa"),
    }


def identity(path: Path) -> age.AnyIdentity:
    [ident] = age.parse_identities(path.read_text())
    return ident


def age_cmd(*args: str, data: bytes) -> bytes:
    return subprocess.run(["age", *args], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "rsa-pem"])
def test_age_to_us_and_back(keys: dict[str, Path], kind: str) -> None:
    key = keys[kind]
    data = os.urandom(70_000)
    ours = identity(key)
    assert ours.recipient().encode() == " ".join(Path(f"{key}.pub").read_text().split()[:2])
    # age -R key.pub -> the engine
    assert age.decrypt_bytes([ours], age_cmd("-R", f"{key}.pub", data=data)) == data
    # the engine -> age -d -i key
    ct = age.encrypt_bytes([age.parse_recipient(Path(f"{key}.pub").read_text())], data)
    assert age_cmd("-d", "-i", str(key), data=ct) == data


def test_mixed_with_x25519(keys: dict[str, Path]) -> None:
    x = age.generate_identity("x25519")
    ed, rsa = identity(keys["ed25519"]), identity(keys["rsa"])
    data = b"mixed recipients"
    recipients = [x.recipient(), ed.recipient(), rsa.recipient()]
    ct = age.encrypt_bytes(recipients, data)
    for key in (keys["ed25519"], keys["rsa"]):
        assert age_cmd("-d", "-i", str(key), data=ct) == data
    for ident in (x, ed, rsa):
        assert age.decrypt_bytes([ident], ct) == data
    ct = age_cmd("-r", x.recipient().encode(), "-R", f"{keys['ed25519']}.pub", data=data)
    assert age.decrypt_bytes([ed], ct) == data and age.decrypt_bytes([x], ct) == data


def test_pyrage_both_ways(keys: dict[str, Path]) -> None:
    for kind in ("ed25519", "rsa"):
        key = keys[kind]
        ours = identity(key)
        theirs = pyrage.ssh.Identity.from_buffer(key.read_bytes())
        peer = pyrage.ssh.Recipient.from_str(Path(f"{key}.pub").read_text().strip())
        assert age.decrypt_bytes([ours], pyrage.encrypt(b"from rage", [peer])) == b"from rage"
        ct = age.encrypt_bytes([ours.recipient()], b"to rage")
        assert pyrage.decrypt(ct, [theirs]) == b"to rage"


def test_other_key_and_tags(keys: dict[str, Path], tmp_path: Path) -> None:
    other = identity(keygen(tmp_path, "other", "-t", "ed25519"))
    ed = identity(keys["ed25519"])
    ct = age.encrypt_bytes([ed.recipient()], b"x")
    with pytest.raises(NoMatchError):
        age.decrypt_bytes([other], ct)
    [stanza] = ed.recipient().wrap(bytes(16), os.urandom)
    digest = hashlib.sha256(ed.recipient().wire).digest()
    assert stanza.args[0] == base64.b64encode(digest[:4]).decode().rstrip("=")
    # Same tag, wrong share: the AEAD fails and the stanza is skipped, not an error.
    forged = Stanza("ssh-ed25519", (stanza.args[0], stanza.args[1]), bytes(32))
    assert ed.unwrap([forged]) is None
    with pytest.raises(ParseError):
        ed.unwrap([Stanza("ssh-ed25519", (stanza.args[0],), stanza.body)])
    rsa = identity(keys["rsa"])
    with pytest.raises(ParseError):
        rsa.unwrap([Stanza("ssh-rsa", ("a", "b"), b"")])
    [rs] = rsa.recipient().wrap(bytes(16), os.urandom)
    assert rsa.unwrap([Stanza("ssh-rsa", ("AAAAAA",), rs.body)]) is None  # another key's tag
    assert rsa.unwrap([rs]) == bytes(16)


def test_montgomery_matches_the_secret(keys: dict[str, Path]) -> None:
    """The public conversion (u = (1+y)/(1-y)) agrees with SHA-512(seed)[:32] * basepoint."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ed = identity(keys["ed25519"])
    assert isinstance(ed, age.SshEd25519Identity)
    secret = hashlib.sha512(bytes(ed.seed)).digest()[:32]
    public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    assert montgomery(ed.recipient().wire[-32:]) == public
    with pytest.raises(ParseError):
        montgomery((2).to_bytes(32, "little"))  # y = 2 is not on the curve


def test_export_text_round_trips(keys: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("ed25519", "rsa"):
        ours = identity(keys[kind])
        text = ours.encode()
        assert text.startswith(sshformat.OPENSSH_BEGIN) and not text.endswith("\n")
        (tmp_path / kind).write_text(text + "\n")
        (tmp_path / kind).chmod(0o600)
        ct = age.encrypt_bytes([ours.recipient()], b"exported")
        assert age_cmd("-d", "-i", str(tmp_path / kind), data=ct) == b"exported"


def test_wipe(keys: dict[str, Path]) -> None:
    for kind in ("ed25519", "rsa"):
        ours = identity(keys[kind])
        ct = age.encrypt_bytes([ours.recipient()], b"x")
        secret = ours.seed
        ours.wipe()
        assert not any(secret)
        with pytest.raises(ValueError, match="wiped"):
            age.decrypt_bytes([ours], ct)
        assert ours.recipient().encode().startswith("ssh-")


def test_the_command_reads_key_text_as_the_agent_does(keys: dict[str, Path]) -> None:
    """keyagent.sshtext (stdlib, in the command) against the engine: same protection and type
    for every key file, same sentence for every type age cannot use."""
    from keyagent import sshtext

    for kind, path in keys.items():
        text = path.read_text()
        if kind != "ecdsa":
            info = sshformat.private_key_info(text)
            assert sshtext.is_protected(text) == info.encrypted, kind
            assert sshtext.private_key_type(text) in (info.key_type, None), kind
    assert sshtext.private_key_type(keys["ecdsa"].read_text()) == "ecdsa-sha2-nistp256"
    assert sshtext.private_key_type(sk_private_key()) == "sk-ssh-ed25519@openssh.com"
    for kind in ("ecdsa-sha2-nistp256", "ecdsa", "sk-ssh-ed25519@openssh.com", "ssh-dss"):
        assert sshtext.unsupported_sentence(kind) == str(sshformat.unsupported_type(kind))
    line = Path(f"{keys['ed25519']}.pub").read_text()
    assert sshtext.line_key_type(f'command="a b" {line}') == ("ssh-ed25519", True)
    assert sshtext.line_key_type("ssh-ed25519 !!! x") == ("ssh-ed25519", False)
    assert sshtext.line_key_type("not a key") is None


def test_protected_keys_need_the_passphrase(keys: dict[str, Path]) -> None:
    for kind in ("ed25519-pw", "rsa-pw"):
        text = keys[kind].read_text()
        assert sshformat.private_key_info(text).encrypted
        with pytest.raises(PassphraseError, match="protected by a passphrase"):
            age.parse_identity(text)
        with pytest.raises(PassphraseError, match=r"^The SSH key's passphrase is wrong\.$"):
            sshload.load_private_key(text, lambda: b"wrong")
        with pytest.raises(PassphraseError, match=r"^The SSH key's passphrase is wrong\.$"):
            age.parse_identity(text, ssh_passphrase=b"wrong")
        key = sshload.load_private_key(text, lambda: SSH_PW.encode())
        ours = age.parse_identity(sshload.to_openssh(key))
        assert age.parse_identity(text, ssh_passphrase=SSH_PW.encode()).seed == ours.seed
        pub = Path(f"{keys[kind]}.pub").read_text()
        assert ours.recipient().encode() == " ".join(pub.split()[:2])


def sk_private_key() -> str:
    """An OpenSSH file for a FIDO key (no token needed to build one: only its header)."""

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    kind = b"sk-ssh-ed25519@openssh.com"
    public = s(kind) + s(bytes(32)) + s(b"ssh:")
    blob = b"openssh-key-v1\0" + s(b"none") + s(b"none") + s(b"") + (1).to_bytes(4, "big")
    blob += s(public) + s(bytes(16))  # the private section: whole blocks, never read
    body = base64.b64encode(blob).decode()
    return f"{sshformat.OPENSSH_BEGIN}\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"


def test_bad_private_keys(keys: dict[str, Path]) -> None:
    cases: list[tuple[str, type[Exception], str]] = [
        (
            keys["ecdsa"].read_text(),
            UnsupportedError,
            r"^ECDSA SSH keys cannot be used with age",
        ),
        (sk_private_key(), UnsupportedError, r"^Security-key \(FIDO, sk-\*\) SSH keys cannot"),
        (
            keys["rsa-1024"].read_text(),
            UnsupportedError,
            r"^This RSA key has 1024 bits: age needs",
        ),
        (keys["ed25519"].read_text()[:300], ParseError, r"^The SSH private key is truncated"),
        (keys["rsa"].read_text()[:-200] + "\n", ParseError, r"truncated or damaged\.$"),
    ]
    for text, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            age.parse_identity(text)


def test_public_lines() -> None:
    with pytest.raises(UnsupportedError, match=r"^ECDSA"):
        sshformat.parse_public_line("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYA c")
    with pytest.raises(ParseError):
        sshformat.parse_public_line("ssh-ed25519 !!!")
    with pytest.raises(ParseError, match="does not match"):
        rsa_blob = base64.b64encode(b"\0\0\0\x07ssh-rsa").decode()
        sshformat.parse_public_line(f"ssh-ed25519 {rsa_blob}")


def test_authorized_keys_line_and_small_rsa(keys: dict[str, Path]) -> None:
    pub = Path(f"{keys['ed25519']}.pub").read_text().strip()
    line = f'command="echo hi there",no-pty {pub}'
    assert age.parse_recipient(line) == age.parse_recipient(pub)
    assert age.parse_recipient(line).encode() == " ".join(pub.split()[:2])
    with pytest.raises(UnsupportedError, match="1024 bits"):
        age.parse_recipient(Path(f"{keys['rsa-1024']}.pub").read_text())
    with pytest.raises(UnsupportedError, match=r"^ECDSA"):
        age.parse_recipient(Path(f"{keys['ecdsa']}.pub").read_text())


def test_key_file_holds_rsa(keys: dict[str, Path]) -> None:
    ours = identity(keys["rsa"])
    record = KeyRecord("r", "", "ssh-rsa", ours.recipient().encode(), 1)
    sealed = seal(record, ours.seed, "pw", FAST_KDF, os.urandom)
    data = encode_key_file(sealed)
    assert base64.b64encode(bytes(ours.seed)) not in data
    parsed = parse_key_file(data, "r")
    assert parsed.record == record
    assert open_sealed(parsed, "pw") == ours.seed
    wrong = KeyRecord("r", "", "ssh-ed25519", ours.recipient().encode(), 1)
    bad = encode_key_file(seal(wrong, bytes(32), "pw", FAST_KDF, os.urandom))
    with pytest.raises(Malformed, match="does not fit its type"):
        parse_key_file(bad, "r")


def test_pkcs8_keys(tmp_path: Path) -> None:
    """`-----BEGIN PRIVATE KEY-----` (PKCS#8): the type is known only once loaded."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    def pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    ed = ed25519.Ed25519PrivateKey.generate()
    ours = age.parse_identity(pem(ed))
    assert ours.key_type == "ssh-ed25519"
    with pytest.raises(UnsupportedError, match=r"^ECDSA SSH keys cannot be used with age"):
        age.parse_identity(pem(ec.generate_private_key(ec.SECP256R1())))


def test_keystore_and_cache_hold_rsa(keys: dict[str, Path], tmp_path: Path) -> None:
    """The RSA secret is longer than a seed: stored, re-sealed and cached whole."""
    from keyagentd.cache import KeyCache
    from keyagentd.keystore import KeyStore

    ours = identity(keys["rsa"])
    der = bytes(ours.seed)
    store = KeyStore(tmp_path / "ks", kdf=FAST_KDF)
    store.prepare()
    store.create("r", "ssh-rsa", der, ours.recipient().encode(), "one")
    store.change_passphrase("r", "one", "two")
    assert store.unseal("r", "two") == der
    with pytest.raises(Malformed, match="wrong size for a ssh-ed25519 key"):
        store.create("e", "ssh-ed25519", der, ours.recipient().encode(), "one")
    cache = KeyCache()
    cache.unlock("r", "ssh-rsa", store.unseal("r", "two"))
    ct = age.encrypt_bytes([ours.recipient()], b"cached")
    with cache.use("r") as cached:
        assert age.decrypt_bytes([cached], ct) == b"cached"
        buffer = cached.seed
    assert not any(buffer)  # wiped when the with-block ended


def test_rsa_size_bounds() -> None:
    sshformat.check_rsa_bits(2048)
    sshformat.check_rsa_bits(8192)
    with pytest.raises(UnsupportedError, match=r"^This RSA key has 2047 bits: age needs at least"):
        sshformat.check_rsa_bits(2047)
    with pytest.raises(UnsupportedError, match=r"^This RSA key has 8193 bits: at most 8192"):
        sshformat.check_rsa_bits(8193)
