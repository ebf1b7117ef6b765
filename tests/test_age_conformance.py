"""The age conformance vectors, through the runner in-process and as a command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyagentd.age import testkit

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "age"
FILES = testkit.vector_files([VECTORS])


def test_finds_all_vectors() -> None:
    assert len(FILES) >= 96


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_vector(path: Path) -> None:
    vector = testkit.parse_vector(path.name, path.read_bytes())
    assert testkit.run_vector(vector) is None
    assert testkit.run_vector(vector, whole=True) is None  # in memory, as Decrypt reads it


def _run(*dirs: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(["service", "cli"]))
    return subprocess.run(
        [sys.executable, "-m", "keyagentd.age.testkit", *map(str, dirs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_command_passes_every_vector() -> None:
    proc = _run(VECTORS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == f"{len(FILES)} passed, 0 failed"


def test_command_fails_on_empty_dir(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == "0 passed, 0 failed"


def test_command_reports_a_failing_vector(tmp_path: Path) -> None:
    # A vector whose expectation is wrong must be reported, with its name.
    good = (VECTORS / "x25519").read_bytes()
    (tmp_path / "x25519_wrong_expectation").write_bytes(
        good.replace(b"expect: success", b"expect: no match", 1)
    )
    (tmp_path / "x25519").write_bytes(good)
    proc = _run(tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[-1] == "1 passed, 1 failed"
    assert lines[0].startswith("FAIL x25519_wrong_expectation:")


def test_runner_checks_released_prefix() -> None:
    # A payload failure must release exactly the authenticated prefix: a wrong
    # hash of the released plaintext is a failure of the vector.
    data = (VECTORS / "stream_bad_tag_second_chunk_full").read_bytes()
    vector = testkit.parse_vector("v", data)
    assert vector.expect == "payload failure"
    assert testkit.run_vector(vector) is None
    wrong = vector.__class__(**{**vector.__dict__, "payload": "00" * 32})
    assert testkit.run_vector(wrong) is not None


def test_runner_checks_plaintext_on_success() -> None:
    vector = testkit.parse_vector("v", (VECTORS / "x25519").read_bytes())
    wrong = vector.__class__(**{**vector.__dict__, "payload": "00" * 32})
    assert testkit.run_vector(wrong) == "wrong plaintext"


def _relabel(name: str, expect: str, body: bytes | None = None) -> testkit.Vector:
    vector = testkit.parse_vector(name, (VECTORS / name).read_bytes())
    fields = {**vector.__dict__, "expect": expect}
    if body is not None:
        fields["body"] = body
    return testkit.Vector(**fields)


def test_runner_accepts_any_error_of_the_expected_stage() -> None:
    # An unknown version answers Unsupported, not Malformed: still a header failure.
    v1 = _relabel("x25519", "header failure")
    v2 = _relabel(
        "x25519",
        "header failure",
        v1.body.replace(b"age-encryption.org/v1", b"age-encryption.org/v2", 1),
    )
    assert testkit.run_vector(v2) is None
    assert "expected header failure, got" in (testkit.run_vector(v1) or "")  # it succeeds


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("armor_empty", "armor failure"),  # good armor around a bad header
        ("armor_long_line", "header failure"),
        ("stream_bad_tag_second_chunk_full", "header failure"),
        ("x25519_bad_tag", "payload failure"),
        ("armor_no_match", "header failure"),
    ],
)
def test_runner_refuses_the_wrong_stage(name: str, wrong: str) -> None:
    vector = _relabel(name, wrong)
    problem = testkit.run_vector(vector)
    assert problem is not None and problem.startswith(f"expected {wrong}, got "), problem
