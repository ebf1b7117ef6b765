"""keyagent: client library and command for the keyagent D-Bus service.

``keyagent.Client`` and ``keyagent.KeyInfo`` load on first use, so that the command's start-up
(``keyagent --version``) does not pay for the D-Bus library.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # importing `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from typing import Any

    from keyagent.client import AgentUnavailable, Client, KeyInfo

__all__ = ["AgentUnavailable", "Client", "KeyInfo", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "KeyInfo", "AgentUnavailable"):
        from keyagent import client

        return getattr(client, name)
    raise AttributeError(f"module 'keyagent' has no attribute {name!r}")
