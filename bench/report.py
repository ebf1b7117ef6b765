"""Rows of the comparison table, their goals, and the table/JSON output."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Op = Literal[">=", "<="]


@dataclass(frozen=True)
class Goal:
    """``op target`` applied to the ratio (value/baseline) or to the value itself."""

    op: Op
    target: float
    on: Literal["ratio", "value"] = "ratio"

    def met(self, value: float, ratio: float | None) -> bool | None:
        x = ratio if self.on == "ratio" else value
        if x is None or math.isnan(x):
            return None
        return x >= self.target if self.op == ">=" else x <= self.target

    def text(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.op} {self.target:g}x"
        return f"{self.op} {self.target:g} {unit}"


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: Goal | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def status(self) -> str:
        if self.value is None:
            return "ERROR"
        if self.goal is None:
            return ""
        met = self.goal.met(self.value, self.ratio)
        return "" if met is None else ("PASS" if met else "MISS")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["status"] = self.status
        d["goal"] = (
            None if self.goal is None else {**asdict(self.goal), "text": self.goal.text(self.unit)}
        )
        return d


def failed(group: str, name: str, unit: str, why: str, goal: Goal | None = None) -> Row:
    """A row that could not be measured (the agent missing, a tool absent...)."""
    return Row(group, name, None, unit, goal=goal, note=why)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.0f} us"
        if value < 1:
            return f"{value * 1e3:.1f} ms"
        return f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def table(rows: list[Row]) -> str:
    """The human-readable table: one header line per group, one line per row."""
    head = ("row", "value", "baseline", "ratio", "goal", "result")
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    group = None
    for r in rows:
        if r.group != group:
            group = r.group
            lines.append((group, "", "", "", "", ""))
        base = "" if r.baseline is None else f"{fmt(r.baseline, r.unit)} {r.baseline_name}".strip()
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        goal = "" if r.goal is None else r.goal.text(r.unit)
        lines.append(("  " + r.name, fmt(r.value, r.unit), base, ratio, goal, r.status))
        if r.note:
            note = f"  {r.name}: {r.note}"
            if note not in notes:
                notes.append(note)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in lines]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def summary(rows: list[Row]) -> str:
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("PASS", "MISS", "ERROR")}
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def write_json(path: Path, header: dict[str, Any], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"header": header, "rows": [r.to_json() for r in rows]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
