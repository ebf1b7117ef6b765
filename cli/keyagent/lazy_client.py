"""A connection to the agent that is opened on first use and kept until `LazyClient.close`.

The command and the plugin share it; it imports `keyagent.client` (and the bus code) only when the
connection is opened, so the plugin answers age's phase 1 without waiting for that import.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from keyagent.client import Client


class LazyClient:
    """Holds at most one `Client`: ``client`` (or none, to connect on first use)."""

    def __init__(self, client: Client | None = None) -> None:
        self._client = client

    def client(self) -> Client:
        if self._client is None:
            from keyagent.client import Client

            self._client = Client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
