"""CreateKey cost as the key count grows (issue 13): seconds per 1,000 CreateKey calls at
each thousand, on a private bus with cheap KDF settings. `python -m bench.create_keys N`.
Not part of `make bench` (minutes of work); figures go in bench/README.md."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]

from agent_support import FAST_ARGS, Client  # noqa: E402
from conftest import start_private_bus, stop_private_bus  # noqa: E402


def main(total: int) -> None:
    bus = start_private_bus(Path(tempfile.mkdtemp(prefix="keyagent-create-")), agent_args=FAST_ARGS)
    try:
        with Client(bus.address, timeout=120) as c:
            start = time.perf_counter()
            for i in range(total):
                c.create(f"k{i}", "pw")
                if (i + 1) % 1000 == 0:
                    now = time.perf_counter()
                    print(f"keys {i + 1 - 999}-{i + 1}: {now - start:.2f} s", flush=True)
                    start = now
    finally:
        stop_private_bus(bus)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
