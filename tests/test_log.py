"""keyagentd's log lines: plain on a terminal or pipe, syslog priorities under systemd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import TEST_AGENT_ARGS, PrivateBus


def run_agent(bus: PrivateBus, tmp: Path, *, journal: bool, args: tuple[str, ...] = ()) -> str:
    """Run keyagentd with stderr on a file; under ``journal`` JOURNAL_STREAM names that file."""
    err = tmp / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        other = os.stat(tmp)  # an inherited JOURNAL_STREAM that is not our stderr
        stream = (st.st_dev, st.st_ino) if journal else (other.st_dev, other.st_ino)
        env = {**bus.env, "JOURNAL_STREAM": f"{stream[0]}:{stream[1]}"}
        subprocess.run(
            [sys.executable, "-m", "keyagentd", *TEST_AGENT_ARGS, *args],
            env=env,
            stderr=f,
            stdout=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    return err.read_text()


def bad_config(bus: PrivateBus) -> Path:
    path = Path(bus.env["XDG_CONFIG_HOME"]) / "keyagent" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("bogus = 1\n")
    return path


def test_under_systemd_every_line_has_its_priority_and_no_name(
    private_bus: PrivateBus, tmp_path: Path
) -> None:
    path = bad_config(private_bus)
    text = run_agent(private_bus, tmp_path, journal=True)
    lines = text.splitlines()
    assert lines, text
    assert all(line[:3] in {"<3>", "<4>", "<6>"} for line in lines), text
    assert f"<3>{path}: unknown option 'bogus' (see docs/config.md)." in lines  # same logger
    assert "<6>hardening: core dumps disabled (RLIMIT_CORE 0)" in lines
    assert "keyagentd" not in text.replace(str(path), "")  # journald adds keyagentd[PID]:


def test_on_a_plain_stream_lines_are_named(private_bus: PrivateBus, tmp_path: Path) -> None:
    path = bad_config(private_bus)
    lines = run_agent(private_bus, tmp_path, journal=False).splitlines()
    assert f"keyagentd: error: {path}: unknown option 'bogus' (see docs/config.md)." in lines
    assert "keyagentd: info: hardening: core dumps disabled (RLIMIT_CORE 0)" in lines
    assert not [line for line in lines if line.startswith("<")]


def test_a_running_agent_logs_with_priorities(private_bus: PrivateBus, tmp_path: Path) -> None:
    # --idle-exit 0.1: it serves, finds nothing to do and stops, logging all the way.
    text = run_agent(private_bus, tmp_path, journal=True, args=("--idle-exit", "0.1"))
    assert "<6>serving org.example.KeyAgent with 0 key(s)" in text
    assert all(line[:3] in {"<3>", "<4>", "<6>"} for line in text.splitlines()), text


def test_the_operations_line_reads_as_logging_writes_it(tmp_path: Path) -> None:
    """`info_line` (the per-operation line, without a LogRecord) writes what ``logger.info``
    writes, under both formats; with another handler or a filter it goes through logging."""
    import io
    import logging

    from keyagentd import log

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, log._handler)
    ops = logging.getLogger("keyagentd.ops")
    try:
        for journal in (False, True):
            stream = open(tmp_path / f"err-{journal}", "w+")  # noqa: SIM115 - closed below
            env = {"JOURNAL_STREAM": "{}:{}".format(*_dev_ino(stream))} if journal else {}
            log.setup(stream, verbose=False, env=env)
            log.info_line(ops, "Decrypt pid=7 key=k: ok")
            ops.info("%s", "Decrypt pid=7 key=k: ok")
            stream.seek(0)
            fast, slow = stream.read().splitlines()
            assert (
                fast
                == slow
                == ("<6>" if journal else "keyagentd: info: ") + ("Decrypt pid=7 key=k: ok")
            )
            stream.close()
        seen = io.StringIO()
        root.addHandler(logging.StreamHandler(seen))  # someone else listens: through logging
        log.info_line(ops, "Lock pid=7 key=k: ok")
        assert seen.getvalue() == "Lock pid=7 key=k: ok\n"
        ops.setLevel(logging.WARNING)
        log.info_line(ops, "Lock pid=8 key=k: ok")
        assert "pid=8" not in seen.getvalue()
    finally:
        ops.setLevel(logging.NOTSET)
        root.handlers[:], level, log._handler = saved
        root.setLevel(level)


def _dev_ino(stream: object) -> tuple[int, int]:
    st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    return st.st_dev, st.st_ino
