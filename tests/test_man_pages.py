"""The man pages: lint-clean for mandoc, and keyagentd(8) covers what the agent reads."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, have
from keyagentd.__main__ import build_parser
from keyagentd.config import Config, KeyPolicy

PAGES = sorted(p for p in (ROOT / "data").glob("*.[1-8]"))
AGENT_PAGE = ROOT / "data" / "keyagentd.8"


def page_text(path: Path) -> str:
    return path.read_text().replace("\\-", "-")


@pytest.mark.skipif(not have("mandoc"), reason="needs mandoc (scripts/sysdeps.sh installs it)")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mandoc_lint_is_clean(page: Path) -> None:
    out = subprocess.run(
        ["mandoc", "-Tlint", str(page)], capture_output=True, text=True, check=False, timeout=30
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_agent_page_documents_every_config_option() -> None:
    text = page_text(AGENT_PAGE)
    assert "config.toml" in text
    options = {f.name for f in dataclasses.fields(Config)} - {"keys", "source"}
    options |= {f.name for f in dataclasses.fields(KeyPolicy)}
    for option in sorted(options):
        assert option in text, option
    assert "[keys." in text


def test_agent_page_documents_its_environment_and_options() -> None:
    text = page_text(AGENT_PAGE)
    for variable in ("KEYAGENT_ASKPASS", "KEYAGENT_HOME", "XDG_CONFIG_HOME", "JOURNAL_STREAM"):
        assert f".B {variable}\n" in text, variable
    for action in build_parser()._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                assert opt in text, opt
