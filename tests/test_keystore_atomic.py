"""Crash safety of key file writes: a crash at any step leaves the old file or the new one."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from keyagent.protocol import BadPassphrase, Failed, KeyExists, NoSuchKey
from keyagentd.atomic import TMP_PREFIX, AtomicWriter, FileOps
from keyagentd.kdf import KdfParams
from keyagentd.keystore import KeyStore

FAST = KdfParams(memory_kib=256, time_cost=1, parallelism=1)
SEED = bytes(range(32))
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


class Crash(Exception):
    """The process died: this call and every later one does nothing."""


class CrashingOps(FileOps):
    """Real system calls until call number ``crash_at``; from then on every call crashes."""

    def __init__(self, crash_at: int) -> None:
        self.crash_at = crash_at
        self.calls: list[str] = []
        self.crashed = False

    def _step(self, what: str) -> None:
        if self.crashed or len(self.calls) == self.crash_at:
            self.crashed = True
            raise Crash(what)
        self.calls.append(what)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        self._step("open")
        return super().open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        self._step("write")
        # Short writes, so a crash can also land between two writes of one file.
        return super().write(fd, data[:100])

    def fsync(self, fd: int) -> None:
        self._step("fsync")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self._step("close")
        super().close(fd)

    def link(self, src: str, dst: str) -> None:
        self._step("link")
        super().link(src, dst)

    def rename(self, src: str, dst: str) -> None:
        self._step("rename")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._step("unlink")
        super().unlink(path)

    def exists(self, path: str) -> bool:
        self._step("exists")
        return super().exists(path)


def store_at(root: Path, ops: FileOps | None = None) -> KeyStore:
    store = KeyStore(root, kdf=FAST, ops=ops)
    store.prepare()
    return store


def crash_everywhere(
    tmp_path: Path,
    setup: Callable[[KeyStore], object],
    action: Callable[[KeyStore], object],
    check: Callable[[KeyStore], str],
) -> list[str]:
    """Run ``action`` crashing at step 0, 1, 2, ... until it completes; check after each."""
    outcomes = []
    for k in range(1000):
        root = tmp_path / f"run{k}"
        setup(store_at(root))
        ops = CrashingOps(crash_at=k)
        try:
            action(store_at(root, ops))
        except Crash:
            pass
        else:
            assert not ops.crashed
            outcomes.append(check(store_at(root)))  # restart: prepare() cleans up
            assert os.listdir(root) == [n for n in os.listdir(root) if not n.startswith(".")]
            return outcomes
        fresh = store_at(root)
        assert not [n for n in os.listdir(root) if n.startswith(TMP_PREFIX)], ops.calls
        outcomes.append(check(fresh))
    raise AssertionError("the action never completed")


def test_crash_during_create(tmp_path: Path) -> None:
    def check(store: KeyStore) -> str:
        if not (store.root / "k.key").exists():
            with pytest.raises(NoSuchKey):
                store.get("k")
            return "old"
        assert store.unseal("k", "pw") == SEED
        return "new"

    outcomes = crash_everywhere(
        tmp_path,
        lambda s: None,
        lambda s: s.create("k", "x25519", SEED, RECIPIENT, "pw"),
        check,
    )
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert set(outcomes) == {"old", "new"}
    # Once the new file appears it stays: old, ..., old, new, ..., new.
    assert outcomes == sorted(outcomes, key=["old", "new"].index)


def test_crash_during_change_passphrase(tmp_path: Path) -> None:
    def check(store: KeyStore) -> str:
        try:
            assert store.unseal("k", "old") == SEED
            return "old"
        except BadPassphrase:
            assert store.unseal("k", "new") == SEED
            return "new"

    outcomes = crash_everywhere(
        tmp_path,
        lambda s: s.create("k", "x25519", SEED, RECIPIENT, "old"),
        lambda s: s.change_passphrase("k", "old", "new"),
        check,
    )
    assert outcomes[0] == "old" and outcomes[-1] == "new"
    assert outcomes == sorted(outcomes, key=["old", "new"].index)


def test_crash_during_delete(tmp_path: Path) -> None:
    def check(store: KeyStore) -> str:
        try:
            assert store.unseal("k", "pw") == SEED
            return "old"
        except NoSuchKey:
            return "new"

    outcomes = crash_everywhere(
        tmp_path,
        lambda s: s.create("k", "x25519", SEED, RECIPIENT, "pw"),
        lambda s: s.delete("k"),
        check,
    )
    assert outcomes[0] == "old" and outcomes[-1] == "new"


class FailingOps(FileOps):
    """One system call fails with an OSError (a full disk, say); the process lives on."""

    def __init__(self, fail: str, err: int = errno.ENOSPC) -> None:
        self.fail, self.err = fail, err

    def _maybe(self, what: str) -> None:
        if what == self.fail:
            raise OSError(self.err, os.strerror(self.err))

    def write(self, fd: int, data: memoryview) -> int:
        self._maybe("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe("fsync")
        super().fsync(fd)

    def link(self, src: str, dst: str) -> None:
        self._maybe("link")
        super().link(src, dst)

    def rename(self, src: str, dst: str) -> None:
        self._maybe("rename")
        super().rename(src, dst)


@pytest.mark.parametrize("step", ["write", "fsync", "link"])
def test_failed_create_leaves_nothing(tmp_path: Path, step: str) -> None:
    store = store_at(tmp_path / "k", FailingOps(step))
    with pytest.raises(Failed, match="No space left"):
        store.create("k", "x25519", SEED, RECIPIENT, "pw")
    assert os.listdir(store.root) == []


@pytest.mark.parametrize("step", ["write", "fsync", "rename"])
def test_failed_change_keeps_old(tmp_path: Path, step: str) -> None:
    store_at(tmp_path / "k").create("k", "x25519", SEED, RECIPIENT, "old")
    store = store_at(tmp_path / "k", FailingOps(step))
    with pytest.raises(Failed):
        store.change_passphrase("k", "old", "new")
    assert os.listdir(store.root) == ["k.key"]
    assert store.unseal("k", "old") == SEED


def test_filesystem_without_hard_links(tmp_path: Path) -> None:
    store = store_at(tmp_path / "k", FailingOps("link", errno.EPERM))
    store.create("k", "x25519", SEED, RECIPIENT, "pw")
    assert os.listdir(store.root) == ["k.key"]
    with pytest.raises(KeyExists):
        store.create("k", "x25519", SEED, RECIPIENT, "pw")
    assert store.unseal("k", "pw") == SEED


def test_create_does_not_clobber_a_file_that_appears_meanwhile(tmp_path: Path) -> None:
    """Another writer wins between our existence check and the link: we lose, it keeps its file."""
    root = tmp_path / "k"

    class Racer(FileOps):
        def link(self, src: str, dst: str) -> None:
            Path(dst).write_bytes(b"theirs")
            super().link(src, dst)

    store = store_at(root, Racer())
    with pytest.raises(KeyExists):
        store.create("k", "x25519", SEED, RECIPIENT, "pw")
    assert (root / "k.key").read_bytes() == b"theirs"
    assert os.listdir(root) == ["k.key"]


def test_directory_fsync_failure_after_commit_is_not_an_error(tmp_path: Path) -> None:
    """The rename happened: reporting failure would make the user believe the old passphrase."""

    class NoDirSync(FileOps):
        def open(self, path: str, flags: int, mode: int = 0o600) -> int:
            if flags & os.O_DIRECTORY:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return super().open(path, flags, mode)

    store_at(tmp_path / "k").create("k", "x25519", SEED, RECIPIENT, "old")
    store = store_at(tmp_path / "k", NoDirSync())
    store.change_passphrase("k", "old", "new")
    assert store.unseal("k", "new") == SEED


def test_writer_remove_leftovers_only_touches_temp_files(tmp_path: Path) -> None:
    (tmp_path / (TMP_PREFIX + "1")).write_bytes(b"")
    (tmp_path / "keep.key").write_bytes(b"")
    (tmp_path / ".hidden").write_bytes(b"")
    assert AtomicWriter(tmp_path).remove_leftovers() == [TMP_PREFIX + "1"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "keep.key"]
