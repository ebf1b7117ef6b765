"""The sealed keystore: format, tamper detection, passphrases, directory checks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from keyagent.protocol import (
    BadPassphrase,
    Failed,
    Integrity,
    InvalidName,
    KeyExists,
    Malformed,
    NoSuchKey,
    Unsupported,
)
from keyagentd import keystore as ks
from keyagentd.atomic import TMP_PREFIX
from keyagentd.kdf import KdfParams
from keyagentd.keyfile import KeyRecord, parse_key_file
from keyagentd.keystore import KeyStore

FAST = KdfParams(memory_kib=256, time_cost=1, parallelism=1)
SEED = bytes(range(32))
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
REJECTED = (Malformed, Integrity, Unsupported)


def make_store(root: Path, **kw: object) -> KeyStore:
    store = KeyStore(root, kdf=FAST, clock=lambda: 1_700_000_000.5, **kw)  # type: ignore[arg-type]
    store.prepare()
    return store


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return make_store(tmp_path / "keys")


def refresh_checksum(data: bytes) -> bytes:
    """Recompute the (non-secret) checksum line, as a deliberate forger would."""
    body = b"\n".join(data.split(b"\n")[:3]) + b"\n"
    return body + hashlib.sha256(body).hexdigest().encode() + b"\n"


def edit_header(data: bytes, edit: object) -> bytes:
    lines = data.split(b"\n")
    header = json.loads(lines[1])
    edit(header)  # type: ignore[operator]
    lines[1] = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return refresh_checksum(b"\n".join(lines))


def test_create_unseal_roundtrip(store: KeyStore) -> None:
    rec = store.create("work", "x25519", bytearray(SEED), RECIPIENT, "hunter2", label="Work key")
    assert rec == KeyRecord("work", "Work key", "x25519", RECIPIENT, 1_700_000_000)
    assert store.get("work") == rec
    assert store.list() == [rec]
    seed = store.unseal("work", "hunter2")
    assert isinstance(seed, bytearray) and seed == SEED


def test_file_layout_is_documented_format(store: KeyStore) -> None:
    store.create("k1", "mlkem768x25519", SEED, RECIPIENT, "s3cret-phrase")
    data = (store.root / "k1.key").read_bytes()
    lines = data.split(b"\n")
    assert lines[0] == b"keyagent-key/v1" and lines[4] == b"" and len(lines) == 5
    header = json.loads(lines[1])
    assert header["kdf"]["alg"] == "argon2id" and header["kdf"]["memory_kib"] == 256
    assert header["aead"]["alg"] == "chacha20poly1305"
    assert header["type"] == "mlkem768x25519" and header["recipient"] == RECIPIENT
    assert SEED not in data and b"s3cret" not in data
    assert lines[3] == hashlib.sha256(b"\n".join(lines[:3]) + b"\n").hexdigest().encode()
    sealed = parse_key_file(data, "k1")
    assert sealed.header == lines[0] + b"\n" + lines[1] + b"\n"


def test_default_kdf_parameters(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k")
    store.prepare()
    store.create("d", "x25519", SEED, RECIPIENT, "correct horse")
    header = json.loads((tmp_path / "k" / "d.key").read_bytes().split(b"\n")[1])
    assert (header["kdf"]["memory_kib"], header["kdf"]["time_cost"]) == (65536, 3)
    assert header["kdf"]["parallelism"] == 4
    assert store.unseal("d", "correct horse") == SEED


def test_wrong_and_empty_passphrase(store: KeyStore) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "right")
    with pytest.raises(BadPassphrase):
        store.unseal("k", "wrong")
    with pytest.raises(BadPassphrase):
        store.unseal("k", "Right")
    with pytest.raises(BadPassphrase, match="empty"):
        store.create("e", "x25519", SEED, RECIPIENT, "")
    assert not (store.root / "e.key").exists()


def test_names_and_missing_keys(store: KeyStore) -> None:
    for bad in ("", "a/b", "../x", "a" * 65, "sp ace", "dot.key"):
        with pytest.raises(InvalidName):
            store.create(bad, "x25519", SEED, RECIPIENT, "pw")
        with pytest.raises(InvalidName):
            store.unseal(bad, "pw")
    with pytest.raises(NoSuchKey):
        store.get("absent")
    with pytest.raises(NoSuchKey):
        store.unseal("absent", "pw")
    with pytest.raises(NoSuchKey):
        store.delete("absent")
    with pytest.raises(Unsupported):
        store.create("t", "rsa", SEED, RECIPIENT, "pw")
    with pytest.raises(Malformed):
        store.create("t", "x25519", SEED[:31], RECIPIENT, "pw")
    with pytest.raises(Malformed):
        store.create("t", "x25519", SEED, "AGE-SECRET-KEY-1XYZ", "pw")
    with pytest.raises(Malformed):
        store.create("t", "x25519", SEED, RECIPIENT, "pw", label="a\nb")
    assert store.list() == []


def test_create_never_overwrites(store: KeyStore) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "one")
    before = (store.root / "k.key").read_bytes()
    with pytest.raises(KeyExists):
        store.create("k", "x25519", bytes(32), RECIPIENT, "two")
    assert (store.root / "k.key").read_bytes() == before


def test_concurrent_creates_one_wins(store: KeyStore) -> None:
    results: list[str] = []
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.create("race", "x25519", bytes([i]) * 32, RECIPIENT, f"pw{i}")
            results.append(f"ok{i}")
        except KeyExists:
            results.append("exists")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("ok")]
    assert len(winners) == 1 and results.count("exists") == 3
    i = int(winners[0][2:])
    assert store.unseal("race", f"pw{i}") == bytes([i]) * 32


def test_change_passphrase(store: KeyStore) -> None:
    rec = store.create("k", "x25519", SEED, RECIPIENT, "old", label="L")
    before = parse_key_file((store.root / "k.key").read_bytes(), "k")
    with pytest.raises(BadPassphrase):
        store.change_passphrase("k", "nope", "new")
    with pytest.raises(BadPassphrase):
        store.change_passphrase("k", "old", "")
    assert store.unseal("k", "old") == SEED
    store.change_passphrase("k", "old", "new")
    after = parse_key_file((store.root / "k.key").read_bytes(), "k")
    assert after.salt != before.salt and after.nonce != before.nonce
    assert store.get("k") == rec
    assert store.unseal("k", "new") == SEED
    with pytest.raises(BadPassphrase):
        store.unseal("k", "old")


def test_delete(store: KeyStore) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    store.delete("k")
    assert store.list() == []
    with pytest.raises(NoSuchKey):
        store.get("k")


def test_every_single_byte_flip_is_detected(
    store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw", label="flip me")
    path = store.root / "k.key"
    good = path.read_bytes()
    for mask in (0x01, 0x80):
        for i in range(len(good)):
            bad = bytearray(good)
            bad[i] ^= mask
            path.write_bytes(bytes(bad))
            with pytest.raises(REJECTED):  # never the seed, never BadPassphrase
                store.unseal("k", "pw")
            with caplog.at_level(logging.WARNING, logger="keyagentd.keystore"):
                caplog.clear()
                assert store.list() == []
                assert "Skipping key file" in caplog.text
    path.write_bytes(good)
    assert store.unseal("k", "pw") == SEED


def test_forged_header_edits_never_open(store: KeyStore) -> None:
    """An edit with a recomputed checksum: each header byte flip still fails to open."""
    store.create("k", "x25519", SEED, RECIPIENT, "pw", label="abc")
    path = store.root / "k.key"
    good = path.read_bytes()
    header_end = good.index(b"\n", good.index(b"\n") + 1)
    for i in range(header_end):
        bad = bytearray(good)
        bad[i] ^= 0x01
        path.write_bytes(refresh_checksum(bytes(bad)))
        with pytest.raises((*REJECTED, BadPassphrase)):
            store.unseal("k", "pw")
    # The box line too (ciphertext and tag): the AEAD tag is the only check left.
    box_start = header_end + 1
    for i in range(box_start, good.index(b"\n", box_start)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        path.write_bytes(refresh_checksum(bytes(bad)))
        with pytest.raises((Malformed, BadPassphrase)):
            store.unseal("k", "pw")


def test_every_truncation_is_rejected(store: KeyStore) -> None:
    store.create("k", "mlkem768x25519", SEED, RECIPIENT, "pw")
    path = store.root / "k.key"
    good = path.read_bytes()
    for n in range(len(good)):
        path.write_bytes(good[:n])
        with pytest.raises(REJECTED):
            store.unseal("k", "pw")
        assert store.list() == []


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d + b"x", id="trailing-byte"),
        pytest.param(lambda d: d + b"\n", id="trailing-newline"),
        pytest.param(lambda d: d[:-1], id="no-final-newline"),
        pytest.param(lambda d: d.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda d: d.replace(b"/v1", b"/v2"), id="v2"),
        pytest.param(lambda d: b"\xef\xbb\xbf" + d, id="bom"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: d * 100, id="huge"),
    ],
)
def test_strict_layout(store: KeyStore, mutate: object) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    path = store.root / "k.key"
    path.write_bytes(mutate(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(REJECTED):
        store.unseal("k", "pw")


def test_unknown_version_is_unsupported(store: KeyStore) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    path = store.root / "k.key"
    path.write_bytes(refresh_checksum(path.read_bytes().replace(b"/v1", b"/v2")))
    with pytest.raises(Unsupported, match="v2"):
        store.get("k")


def _set(path: list[str], value: object) -> object:
    def edit(h: dict[str, object]) -> None:
        target = h
        for p in path[:-1]:
            target = target[p]  # type: ignore[assignment]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (_set(["kdf", "memory_kib"], 1024 * 1024 + 1), Malformed),  # over the 1 GiB cap
        (_set(["kdf", "memory_kib"], 2**40), Malformed),
        (_set(["kdf", "time_cost"], 11), Malformed),
        (_set(["kdf", "time_cost"], 0), Malformed),
        (_set(["kdf", "parallelism"], 17), Malformed),
        (_set(["kdf", "parallelism"], 0), Malformed),
        (_set(["kdf", "memory_kib"], 7), Malformed),  # Argon2 needs 8 KiB per lane
        (_set(["kdf", "memory_kib"], 256.0), Malformed),
        (_set(["kdf", "time_cost"], True), Malformed),
        (_set(["kdf", "version"], 16), Unsupported),
        (_set(["kdf", "version"], 19.0), Malformed),
        (_set(["kdf", "alg"], "scrypt"), Unsupported),
        (_set(["aead", "alg"], "aes-gcm"), Unsupported),
        (_set(["kdf", "salt"], "AAAA"), Malformed),
        (_set(["aead", "nonce"], "not base64!"), Malformed),
        (_set(["type"], "rsa"), Unsupported),
        (_set(["name"], "other"), Malformed),
        (_set(["created"], -1), Malformed),
        (_set(["created"], "1700000000"), Malformed),
        (_set(["label"], "x" * 257), Malformed),
        (_set(["label"], "bell\u0007"), Malformed),
        (_set(["recipient"], "AGE-SECRET-KEY-1"), Malformed),
        (_set(["extra"], 1), Malformed),
        (lambda h: h.pop("label"), Malformed),
        (lambda h: h["kdf"].pop("salt"), Malformed),
    ],
)
def test_header_validation(store: KeyStore, edit: object, error: type[Exception]) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    path = store.root / "k.key"
    path.write_bytes(edit_header(path.read_bytes(), edit))
    with pytest.raises(error):
        store.get("k")
    assert store.list() == []


def test_kdf_caps_checked_before_derivation(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    path = store.root / "k.key"
    path.write_bytes(edit_header(path.read_bytes(), _set(["kdf", "memory_kib"], 2**30)))
    called = []
    import argon2.low_level  # kdf imports it on first use: patch where derive_key looks

    monkeypatch.setattr(argon2.low_level, "hash_secret_raw", lambda *a, **k: called.append(1))
    with pytest.raises(Malformed, match="memory"):
        store.unseal("k", "pw")
    assert called == []


def test_non_canonical_json_is_rejected(store: KeyStore) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    path = store.root / "k.key"
    good = path.read_bytes()
    lines = good.split(b"\n")
    variants = [
        lines[1].replace(b'"name":', b'"name": '),  # whitespace
        lines[1].replace(b'"label":""', b'"label":"","label":""'),  # duplicate field
        lines[1][:-1] + b',"name":"k"}',  # duplicate at the end
        json.dumps(json.loads(lines[1]), separators=(",", ":")).encode()[::-1],  # garbage
        b"[" + lines[1] + b"]",
    ]
    header = json.loads(lines[1])
    unsorted = dict(reversed(list(header.items())))
    variants.append(json.dumps(unsorted, separators=(",", ":")).encode())
    for v in variants:
        if v == lines[1]:
            continue
        path.write_bytes(refresh_checksum(b"\n".join([lines[0], v, *lines[2:]])))
        with pytest.raises(Malformed):
            store.get("k")


def test_renamed_file_is_rejected(store: KeyStore) -> None:
    store.create("a", "x25519", SEED, RECIPIENT, "pw")
    os.rename(store.root / "a.key", store.root / "b.key")
    with pytest.raises(Malformed):
        store.unseal("b", "pw")


def test_symlinked_key_file_is_refused(store: KeyStore, tmp_path: Path) -> None:
    store.create("a", "x25519", SEED, RECIPIENT, "pw")
    os.symlink(store.root / "a.key", store.root / "b.key")
    with pytest.raises(Failed):
        store.get("b")


def test_list_sorted_and_skips_junk(store: KeyStore, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("zeta", "Alpha", "mid-1"):
        store.create(name, "x25519", SEED, RECIPIENT, "s3cret")
    (store.root / "README").write_text("not a key")
    (store.root / "bad name.key").write_text("x")
    (store.root / "broken.key").write_text("garbage")
    with caplog.at_level(logging.WARNING):
        names = [r.name for r in store.list()]
    assert names == ["Alpha", "mid-1", "zeta"]
    assert "broken.key" in caplog.text
    assert "s3cret" not in caplog.text


# --- the directory ---------------------------------------------------------------------------


def test_prepare_creates_private_dir_and_files(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = make_store(tmp_path / "a" / "b" / "keys")
        store.create("k", "x25519", SEED, RECIPIENT, "pw")
        store.change_passphrase("k", "pw", "pw2")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.root / "k.key").st_mode) == 0o600
    store.prepare()  # idempotent


def test_prepare_refuses_open_directory(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    root.mkdir()
    root.chmod(0o755)
    with pytest.raises(Failed) as err:
        KeyStore(root, kdf=FAST).prepare()
    assert str(root) in err.value.message and "chmod 700" in err.value.message
    assert "0755" in err.value.message


def test_prepare_refuses_foreign_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "keys"
    root.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
        owner = 65534
    else:  # without root, be someone else instead
        owner = os.geteuid()
        monkeypatch.setattr(ks.os, "geteuid", lambda: owner + 1)
    with pytest.raises(Failed) as err:
        KeyStore(root, kdf=FAST).prepare()
    assert str(root) in err.value.message and f"uid {owner}," in err.value.message
    assert "chown" in err.value.message


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("")
    with pytest.raises(Failed, match="not a directory"):
        KeyStore(tmp_path / "keys", kdf=FAST).prepare()


def test_prepare_removes_leftover_temp_files(store: KeyStore) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    (store.root / (TMP_PREFIX + "deadbeef")).write_bytes(b"partial")
    store.prepare()
    assert sorted(p.name for p in store.root.iterdir()) == ["k.key"]


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYAGENT_HOME", str(tmp_path / "kh"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert KeyStore.default_root() == tmp_path / "kh"
    monkeypatch.delenv("KEYAGENT_HOME")
    assert KeyStore.default_root() == tmp_path / "xdg" / "keyagent"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert KeyStore.default_root() == tmp_path / "home" / ".local" / "share" / "keyagent"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert KeyStore.default_root() == tmp_path / "home" / ".local" / "share" / "keyagent"


def test_store_rejects_bad_kdf_params(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        KeyStore(tmp_path, kdf=KdfParams(memory_kib=2**21))
    with pytest.raises(ValueError):
        KeyStore(tmp_path, kdf=KdfParams(parallelism=0))


def test_rng_is_injectable(tmp_path: Path) -> None:
    """Same rng and clock give the same file: nothing random escapes injection."""

    def counter() -> object:
        n = 0

        def rng(k: int) -> bytes:
            nonlocal n
            n += 1
            return bytes([n]) * k

        return rng

    files = []
    for sub in ("a", "b"):
        store = make_store(tmp_path / sub, rng=counter())
        store.create("k", "x25519", SEED, RECIPIENT, "pw")
        files.append((store.root / "k.key").read_bytes())
    assert files[0] == files[1]


def test_prepare_warns_about_open_key_files(
    store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    (store.root / "k.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="keyagentd.keystore"):
        store.prepare()
    assert "chmod 600" in caplog.text and "k.key" in caplog.text
