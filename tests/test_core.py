"""The core without a bus: keys, crypt and the audit, driven directly (docs/DESIGN.md)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from keyagent.protocol import AccessDenied, Locked
from keyagentd import age
from keyagentd.audit import Audit, ExecutableCache
from keyagentd.auth import Caller
from keyagentd.bus.methods import _first
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.crypt import INLINE_MAX_TRIALS, Crypt, Deferred, Tried
from keyagentd.crypt import unwrap as crypt_unwrap
from keyagentd.kdf import KdfParams
from keyagentd.keys import Keys
from keyagentd.keystore import KeyRecord, KeyStore
from keyagentd.policy import AccessRecord
from keyagentd.work import Work

T = TypeVar("T")
PASS = "pw"


class CountingWork(Work):
    """The real `Work`, noting what it ran in the crypto pool."""

    def __init__(self) -> None:
        super().__init__(2, 4)
        self.ran: list[str] = []

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.ran.append(getattr(fn, "__name__", type(fn).__name__))
        return await super().blocking(fn, *args, **kwargs)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def added(self, record: KeyRecord) -> None:
        self.seen.append(("added", record.name))

    def removed(self, name: str) -> None:
        self.seen.append(("removed", name))

    def changed(self, name: str) -> None:
        self.seen.append(("changed", name))


def _keys(tmp: Path, work: Work) -> tuple[Keys, Events]:
    kdf = KdfParams(memory_kib=1024, time_cost=1, parallelism=1)
    events = Events()
    keys = Keys(KeyStore(tmp / "home", kdf=kdf), KeyCache(), UserConfig(), work, events)
    keys.load()
    return keys, events


def test_keys_and_their_events_without_a_bus(tmp_path: Path) -> None:
    work = CountingWork()

    async def run() -> None:
        keys, events = _keys(tmp_path, work)
        record = await keys.create("k1", age.generate_identity(), PASS, "")
        await keys.unlock("k1", PASS)
        keys.lock("k1")
        assert events.seen == [("added", "k1"), ("changed", "k1"), ("changed", "k1")]
        crypt = Crypt(keys, max_payload=1 << 20, scrypt_work_factor=None)
        ct = await crypt.encrypt(["k1"], b"hello", armor=False, passphrase=None)
        assert age.parse_recipient(record.recipient)  # a public recipient, usable locked
        await keys.unlock("k1", PASS)
        assert await crypt.decrypt(ct, pin=None, passphrase=None, askpass=False, pid=0) == (
            b"hello",
            "k1",
        )
        keys.close()

    try:
        asyncio.run(run())
    finally:
        work.shutdown()


def test_a_decrypt_with_many_stanzas_leaves_the_event_loop(tmp_path: Path) -> None:
    """Hundreds of bogus stanzas x several unlocked keys: each unwrap is ~60-300 us, so the
    unwrapping must run in the pool, not on the loop (issue 13); a normal file stays inline."""
    work = CountingWork()

    async def run() -> None:
        keys, _ = _keys(tmp_path, work)
        ids = {f"k{i}": age.generate_identity() for i in range(3)}
        for name, identity in ids.items():
            await keys.create(name, identity, PASS, "")
            await keys.unlock(name, PASS)
        crypt = Crypt(keys, max_payload=1 << 20, scrypt_work_factor=None)
        normal = age.encrypt_bytes([ids["k1"].recipient()], b"one stanza")
        work.ran.clear()
        assert await crypt.decrypt(normal, pin=None, passphrase=None, askpass=False, pid=0) == (
            b"one stanza",
            "k1",
        )
        assert work.ran == []  # small and cheap: inline
        others = [age.generate_identity().recipient() for _ in range(300)]
        heavy = age.encrypt_bytes([*others, ids["k2"].recipient()], b"needle")
        assert len(heavy) < 64 * 1024 and INLINE_MAX_TRIALS < 301 * 3
        plain, name = await crypt.decrypt(heavy, pin=None, passphrase=None, askpass=False, pid=0)
        assert (plain, name) == (b"needle", "k2")
        assert work.ran == ["_finish_decrypt"]  # the unwrapping ran in the pool
        keys.close()

    try:
        asyncio.run(run())
    finally:
        work.shutdown()


def test_a_decrypt_tries_the_first_keys_inline_and_the_rest_in_a_worker(tmp_path: Path) -> None:
    """With more unlocked keys than `INLINE_MAX_TRIALS`, a file whose key sorts first still
    opens on the loop; one whose key sorts last is finished in the pool, and no key is tried
    (its identity built) twice; a locked candidate is named once every unlocked one failed."""
    work = CountingWork()
    built: list[str] = []

    def factory(key_type: str, seed: bytearray) -> age.X25519Identity:
        identity = age.X25519Identity(seed)
        built.append(identity.recipient().encode())
        return identity

    async def run() -> None:
        kdf = KdfParams(memory_kib=1024, time_cost=1, parallelism=1)
        cache = KeyCache(identity_factory=factory)  # type: ignore[arg-type]
        keys = Keys(KeyStore(tmp_path / "home", kdf=kdf), cache, UserConfig(), work, Events())
        keys.load()
        ids = {f"k{i:02d}": age.generate_identity() for i in range(INLINE_MAX_TRIALS + 4)}
        for name, identity in ids.items():
            await keys.create(name, identity, PASS, "")
            await keys.unlock(name, PASS)
        await keys.create("z-locked", age.generate_identity(), PASS, "")
        crypt = Crypt(keys, max_payload=1 << 20, scrypt_work_factor=None)

        async def opens(name: str) -> tuple[bytes, str]:
            ct = age.encrypt_bytes([ids[name].recipient()], b"data")
            work.ran.clear()
            built.clear()
            return await crypt.decrypt(ct, pin=None, passphrase=None, askpass=False, pid=0)

        assert await opens("k00") == (b"data", "k00")
        assert work.ran == [] and len(built) == 1  # first key: inline, one identity
        last = max(ids)
        assert await opens(last) == (b"data", last)
        assert work.ran == ["_finish_decrypt"]  # the rest went to the pool...
        assert len(built) == len(set(built)) == len(ids)  # ...each key tried once
        stranger = age.encrypt_bytes([age.generate_identity().recipient()], b"x")
        with pytest.raises(Locked) as locked:
            await crypt.decrypt(stranger, pin=None, passphrase=None, askpass=False, pid=0)
        assert locked.value.names == ("z-locked",)
        keys.lock("k03")
        with pytest.raises(Locked) as locked:
            await crypt.decrypt(stranger, pin=None, passphrase=None, askpass=False, pid=0)
        assert locked.value.names == ("k03", "z-locked")
        with pytest.raises(Locked) as locked:
            await crypt.decrypt(stranger, pin="k03", passphrase=None, askpass=False, pid=0)
        assert locked.value.names == ("k03",)
        keys.close()

    try:
        asyncio.run(run())
    finally:
        work.shutdown()


def test_a_refusal_on_the_loop_is_still_the_answer_after_the_worker(tmp_path: Path) -> None:
    """Restricted keys are tried after the others, and a key refused by its rules in the
    loop's first trials is the answer (AccessDenied) once the worker's trials found no other
    key: the refusal travels with the names tried, and no key is tried twice."""
    cache = KeyCache()
    ids = {name: age.generate_identity() for name in ("a-plain", "r1", "r2")}
    records = {}
    for name, identity in ids.items():
        recipient = identity.recipient().encode()
        records[name] = KeyRecord(name, "", "x25519", recipient, 0)
        cache.unlock(name, "x25519", bytearray(identity.seed))
    data = age.encrypt_bytes([ids["r1"].recipient()], b"x")
    order: list[str] = []

    def restricted(name: str) -> bool:
        return name.startswith("r")

    def permit(name: str) -> None:
        order.append(name)
        raise AccessDenied("refused by its rules")

    dec = age.Decryptor(io.BytesIO(data))
    tried: Tried = {}
    with pytest.raises(Deferred):  # a-plain (no match), then r1 (refused): limit reached
        crypt_unwrap(
            dec, cache, records, restricted=restricted, permit=permit, tried=tried, limit=2
        )
    assert list(tried) == ["a-plain", "r1"] and order == ["r1"]
    with pytest.raises(AccessDenied) as denied:  # r2 does not open it: r1's refusal stands
        crypt_unwrap(dec, cache, records, restricted=restricted, permit=permit, tried=tried)
    assert denied.value.key == "r1" and order == ["r1"]
    assert list(tried) == ["a-plain", "r1", "r2"]


def test_the_audit_logs_only_valid_key_names_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """A key name with a newline must not forge log lines or AccessLog fields (issue 13)."""
    assert _first(["work\nkeyagentd.ops: Decrypt pid=1 key=x: ok"]) == ""
    assert _first(["my-key"]) == "my-key"
    sent: list[AccessRecord] = []
    audit = Audit(sent.append, ExecutableCache(lookup=lambda pid: "/bin/x"))
    with caplog.at_level(logging.INFO, logger="keyagentd.ops"):
        audit.record("Encrypt", "a\nb", Caller(":1.2", os.getuid(), 7), "ok")
    assert sent[0].key == "a?b"
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_a_policy_refusal_names_the_key(tmp_path: Path) -> None:
    """The audit of a refused Decrypt names the key the policy refused (issue 17)."""
    from types import MappingProxyType

    from keyagent.protocol import AccessDenied
    from keyagentd.config import KeyPolicy

    work = CountingWork()
    user = UserConfig(keys=MappingProxyType({"kept": KeyPolicy(allowed_executables=("/x",))}))

    async def run() -> None:
        kdf = KdfParams(memory_kib=1024, time_cost=1, parallelism=1)
        keys = Keys(KeyStore(tmp_path / "home", kdf=kdf), KeyCache(), user, work, Events())
        keys.load()
        identity = age.generate_identity()
        await keys.create("kept", identity, PASS, "")
        await keys.unlock("kept", PASS)
        ct = age.encrypt_bytes([identity.recipient()], b"no")
        crypt = Crypt(keys, max_payload=1 << 20, scrypt_work_factor=None)
        with pytest.raises(AccessDenied) as info:
            await crypt.decrypt(ct, pin=None, passphrase=None, askpass=False, pid=os.getpid())
        assert info.value.key == "kept"
        keys.close()

    try:
        asyncio.run(run())
    finally:
        work.shutdown()
