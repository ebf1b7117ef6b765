"""keyagent: client library and command for the keyagent D-Bus service.

``keyagent.Client`` and ``keyagent.KeyInfo`` load on first use, so that the command's start-up
(``keyagent --version``) does not pay for the D-Bus library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from keyagent.client import AgentUnavailable, Client, KeyInfo

__all__ = ["AgentUnavailable", "Client", "KeyInfo", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "KeyInfo", "AgentUnavailable"):
        from keyagent import client

        return getattr(client, name)
    raise AttributeError(f"module 'keyagent' has no attribute {name!r}")
