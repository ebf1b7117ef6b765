"""The age engine's own errors: what went wrong with a file, in the engine's terms.

The engine knows nothing of D-Bus or of the agent's error names; the agent maps these to
its wire errors in one table (`keyagentd.errors`). Misuse of the API (calling steps out of
order, no recipients) raises ValueError/RuntimeError: a bug in the caller, not in the file.
"""

from __future__ import annotations


class AgeError(Exception):
    """Base of the engine's errors. ``message`` is the sentence given ("" for the default:
    the agent then says it in its own words), ``str(exc)`` always a sentence."""

    default = "The age file is not valid."

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.default)
        self.message = message


class ParseError(AgeError):
    """Not an age file: bad header, stanza, armor, recipient or identity encoding."""


class ArmorError(ParseError):
    """The ASCII armor itself is malformed (not the age file inside it)."""


class HeaderMacError(AgeError):
    """The header's MAC does not match under the unwrapped file key."""

    default = "The age header failed its integrity check (MAC)."


class PayloadError(AgeError):
    """A payload chunk failed to authenticate, or the payload is cut short or too long."""

    default = "The file failed its integrity check: it was modified or cut short."


class NoMatchError(AgeError):
    """None of the identities tried opens the file."""

    default = "No identity matches this file."


class PassphraseError(AgeError):
    """A key's own passphrase (an OpenSSH key's) is wrong, or missing where one is needed."""

    default = "The key's passphrase is wrong."


class TooLargeError(AgeError):
    """A file this engine would write but not read back (too many stanzas, header too big)."""

    default = "The age header would be larger than files read here may hold."


class UnsupportedError(AgeError):
    """A valid file or request the engine does not handle (work factor, recipient mix)."""

    default = "This age feature is not supported."


__all__ = [
    "AgeError",
    "ArmorError",
    "HeaderMacError",
    "NoMatchError",
    "ParseError",
    "PassphraseError",
    "PayloadError",
    "TooLargeError",
    "UnsupportedError",
]
