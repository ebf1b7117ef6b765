"""Plugin row: `age -d -j keyagent` of a 1 KiB file (age starts age-plugin-keyagent, which asks
the agent's UnwrapFileKey) against `python -c pass` and `age -d -i` with the secret key in a
file, in the same interleaved run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from bench.context import SMALL, Context
from bench.report import Goal, Row, failed
from bench.rows_bus import _run
from bench.timing import interleaved


def _install_plugin(ctx: Context) -> dict[str, str]:
    """The plugin as meson installs it (bin/wrapper.in), first on PATH; returns the env."""
    bindir = ctx.h.workdir / "plugin-bin"
    bindir.mkdir(exist_ok=True)
    text = ctx.h.conftest.render_wrapper("keyagent.plugin.main", python=ctx.python())
    path = bindir / "age-plugin-keyagent"
    path.write_text(text)
    path.chmod(0o755)
    env = ctx.h.env
    env["PATH"] = f"{bindir}:{os.environ['PATH']}"
    return env


def plugin_rows(ctx: Context) -> list[Row]:
    reps = ctx.cfg.start_reps
    group = f"age plugin, {SMALL} B file, key unlocked (median of {reps})"
    goal = Goal("<=", 3.0)
    if shutil.which("age") is None:
        return [failed(group, "age -d -j keyagent", "s", "age is not installed", goal)]
    src, out, py = ctx.ciphertext(SMALL), ctx.out("plugin"), ctx.python()
    try:
        ctx.h.ensure_key()
        env = _install_plugin(ctx)
        argv = ["age", "-d", "-j", "keyagent", "-o", str(out), str(src)]
        _run(argv, env)
    except Exception as e:
        return [failed(group, "age -d -j keyagent", "s", f"{type(e).__name__}: {e}", goal)]
    idf = str(ctx.h.identity_file())
    fns: dict[str, Callable[[], object]] = {
        "python -c pass": lambda: _run([py, "-c", "pass"], env),
        "age -d -j keyagent": lambda: _run(argv, env),
        "age -d -i": lambda: _run(["age", "-d", "-i", idf, "-o", str(out), str(src)], env),
    }
    stats = interleaved(fns, reps, warmup=1, after=lambda _n: out.unlink(missing_ok=True))
    base = stats["python -c pass"].median
    rows = [Row(group, "python -c pass (baseline)", base, "s")]
    for name, row_goal in (("age -d -j keyagent", goal), ("age -d -i", None)):
        samples = list(stats[name].samples)
        rows.append(
            Row(group, name, stats[name].median, "s", base, "python", row_goal,
                extra={"seconds": samples})
        )  # fmt: skip
    return rows
