"""`python -m bench [--quick] [--only ROWS] [--tmpdir DIR]` - run from the repository root.

This file puts the source tree (service/ and cli/) first on sys.path, so the bench measures
the code in this checkout (the agent it activates runs from the source tree too, as in the
tests), not an installed copy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import ROOT

for _p in (ROOT / "cli", ROOT / "service"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import machine  # noqa: E402
from bench.context import Config, Context, default_tmpdir  # noqa: E402
from bench.harness import Harness  # noqa: E402
from bench.report import Row, failed, summary, table, write_json  # noqa: E402
from bench.rows_agent import memory_rows, scaling_rows, unlock_rows  # noqa: E402
from bench.rows_bus import cold_rows, concurrency_rows, small_rows, start_rows  # noqa: E402
from bench.rows_keys import key_count_rows  # noqa: E402
from bench.rows_peers import limit_rows, peer_call_rows, peer_process_rows  # noqa: E402
from bench.rows_plugin import plugin_rows  # noqa: E402
from bench.rows_stream import stream_rows  # noqa: E402

#: Row groups in run order; memory restarts the agent, so it goes last.
GROUPS: dict[str, Callable[[Context], list[Row]]] = {
    "decrypt": lambda ctx: stream_rows(ctx, "decrypt"),
    "encrypt": lambda ctx: stream_rows(ctx, "encrypt"),
    "small": small_rows,
    "start": start_rows,
    "plugin": plugin_rows,
    "scaling": scaling_rows,
    "concurrency": concurrency_rows,
    "unlock": unlock_rows,
    "peers": peer_call_rows,
    "processes": peer_process_rows,
    "limits": limit_rows,
    "keys": key_count_rows,
    "cold": cold_rows,
    "memory": memory_rows,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run keyagent's comparisons side by side and print a table of ratios.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fast run: 32 MiB streams, 128 MiB memory stream, fewer repetitions",
    )
    p.add_argument(
        "--only", metavar="ROWS", default="", help=f"comma-separated row groups: {','.join(GROUPS)}"
    )
    p.add_argument("--size-mib", type=int, default=None, help="stream size (default 256, quick 32)")
    p.add_argument(
        "--tmpdir",
        type=Path,
        default=None,
        help="where the data files go (default /dev/shm when it has room, else $TMPDIR)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="JSON output path (default bench/results/bench-<time>.json)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [g.strip() for g in args.only.split(",") if g.strip()] or list(GROUPS)
    unknown = [g for g in only if g not in GROUPS]
    if unknown:
        print(
            f"bench: unknown row group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            file=sys.stderr,
        )
        return 2
    base = args.tmpdir or default_tmpdir()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_run = time.perf_counter()
    header = machine.describe(base)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="keyagent-bench-", dir=base) as tmp:
        workdir = Path(tmp)
        cfg = Config.make(quick=args.quick, tmpdir=workdir, size_mib=args.size_mib)
        header.update(
            started=started,
            mode="quick" if cfg.quick else "full",
            stream_mib=cfg.stream_bytes // (1024 * 1024),
            memory_stream_mib=cfg.memory_stream_bytes // (1024 * 1024),
            groups=only,
        )
        print(machine.header_text(header), flush=True)
        # Measure as installed: with a bytecode cache (an install compiles .pyc files), kept
        # outside the source tree. Some shells export PYTHONDONTWRITEBYTECODE=1, which would
        # make every `keyagent` start and every activation recompile the package.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(
            Path(tempfile.gettempdir()) / "keyagent-bench-pycache"
        )
        header["pycache"] = os.environ["PYTHONPYCACHEPREFIX"]
        harness = Harness(workdir)
        log = Path(tempfile.gettempdir()) / "keyagent-bench-agent.log"
        log.unlink(missing_ok=True)
        header["agent_log"] = str(log)
        harness.start(log)
        try:
            ctx = Context(cfg, harness, workdir)
            for g in only:
                t0 = time.perf_counter()
                print(f"... {g}", end="", flush=True, file=sys.stderr)
                try:
                    rows += GROUPS[g](ctx)
                except Exception as e:  # one broken group must not lose the others' figures
                    rows.append(failed(g, "(whole group)", "", f"{type(e).__name__}: {e}"))
                print(f" {time.perf_counter() - t0:.1f} s", flush=True, file=sys.stderr)
        finally:
            harness.stop()
    header["elapsed_s"] = round(time.perf_counter() - t_run, 1)
    header["loadavg_end"] = machine.loadavg()
    print()
    print(table(rows))
    print()
    print(f"{summary(rows)}; {header['elapsed_s']} s; load average at end {header['loadavg_end']}")
    results = ROOT / "bench" / "results"
    path = args.json or results / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, header, rows)
    if args.json is None:
        write_json(results / "latest.json", header, rows)
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
