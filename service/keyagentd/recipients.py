"""Which keys' recipients the agent has verified (no D-Bus here).

A key file's public header (recipient included) is authenticated only by the sealed box,
that is, by the passphrase: while the key is locked, anyone who can write the file can swap
the recipient and recompute the checksum, and encrypting "to the key" would encrypt to
them. So the agent encrypts to a key name only once it has derived that recipient from the
identity itself, in this process: when it created or imported the key, or at an unlock
(which refuses a file whose recipient does not belong to its identity). A locked key not
unlocked since the agent started answers `Locked`: unlock it once.
"""

from __future__ import annotations

from keyagent.protocol import Integrity, Locked
from keyagentd.cache import KeyCache


class VerifiedRecipients:
    def __init__(self) -> None:
        self._names: set[str] = set()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def mark(self, name: str) -> None:
        """``name``'s recipient was derived from its identity (create, import)."""
        self._names.add(name)

    def forget(self, name: str) -> None:
        self._names.discard(name)

    def verify(self, cache: KeyCache, name: str, recipient: str) -> None:
        """Check the just-unlocked ``name`` against the header's ``recipient``; on a mismatch
        lock it again and raise Integrity."""
        with cache.use(name) as identity:
            derived = identity.recipient().encode()
        if derived != recipient:
            cache.lock(name)
            self._names.discard(name)
            raise Integrity(
                f"The key file of {name!r} names a recipient that is not its own: the file was "
                "edited. Encrypting to it is refused; restore the file from a backup."
            )
        self._names.add(name)

    def require(self, name: str) -> None:
        if name not in self._names:
            raise Locked(
                f"Key '{name}' is locked and its recipient is not verified since the agent "
                f"started (its key file could have been edited): unlock it once to encrypt to it.",
                (name,),
            )
