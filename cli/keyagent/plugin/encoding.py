"""``AGE-PLUGIN-KEYAGENT-1...`` identities: Bech32 whose data is an agent key's name.

Empty data, which ``age -j keyagent`` sends, means "any unlocked key". The identity holds a
name only, never a secret: the key stays in the agent.
"""

from __future__ import annotations

from keyagent import bech32
from keyagent.protocol import KeyAgentError, is_valid_key_name

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    from typing import Final

PLUGIN_NAME: Final = "keyagent"
HRP: Final = "age-plugin-keyagent-"


class BadIdentity(Exception):
    """An identity string that is not a keyagent plugin identity (one line for a person)."""


def encode_identity(name: str) -> str:
    """The identity for key ``name`` ("" for any unlocked key), upper-case as age writes it."""
    if name and not is_valid_key_name(name):
        raise BadIdentity(f"{name[:80]!r} is not a key name.")
    return bech32.encode(HRP, name.encode("ascii")).upper()


def decode_identity(text: str) -> str:
    """The key name in an identity ("" for any unlocked key)."""
    try:
        hrp, data = bech32.decode(text)
    except KeyAgentError as exc:
        raise BadIdentity(f"The identity is not valid Bech32: {exc}") from None
    if hrp != HRP:
        raise BadIdentity("The identity is not an AGE-PLUGIN-KEYAGENT-1 identity.")
    name = data.decode("ascii", "replace")
    if name and not is_valid_key_name(name):
        raise BadIdentity("The identity does not hold a valid key name.")
    return name
