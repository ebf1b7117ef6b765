"""keyagent benchmarks: `python -m bench` (or `make bench`) prints a table of ratios."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
