"""A `dbus-monitor --binary` capture of everything on a private bus, for "never on the bus"
claims: start it, run the commands, `stop()` returns every message's raw bytes."""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import time
from types import TracebackType

from conftest import PrivateBus

READY_TIMEOUT = 20.0


class BusCapture:
    def __init__(self, bus: PrivateBus) -> None:
        self._bus = bus
        self._proc = subprocess.Popen(
            ["dbus-monitor", "--binary", "--address", bus.address],
            env=bus.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        self._fd = self._proc.stdout.fileno()
        self._data = bytearray()
        # A monitor's first message is the NameLost of its own name: it is listening then.
        self._read_until(lambda: bool(self._data))

    def _read_until(self, done: object) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not done():  # type: ignore[operator]
            left = deadline - time.monotonic()
            assert left > 0, "dbus-monitor did not deliver in time"
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                assert chunk, "dbus-monitor exited"
                self._data += chunk

    def stop(self) -> bytes:
        """Everything captured, up to a marker signal sent last (so nothing is in flight)."""
        marker = secrets.token_hex(16)
        subprocess.run(
            [
                "dbus-send",
                f"--bus={self._bus.address}",
                "/capture/end",
                f"test.Capture.End{marker}",
            ],
            env=self._bus.env,
            check=True,
        )
        self._read_until(lambda: marker.encode() in self._data)
        self._proc.terminate()
        self._proc.wait(timeout=10)
        return bytes(self._data)

    def __enter__(self) -> BusCapture:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
