"""Hints the command prints under an agent error: what a person can do next."""

from __future__ import annotations

from keyagent.client import AgentUnavailable
from keyagent.connection import AgentStartFailed
from keyagent.protocol import (
    AccessDenied,
    KeyAgentError,
    KeyExists,
    Locked,
    Malformed,
    NoMatch,
    NoSuchKey,
    RateLimited,
)


def hint_for(err: KeyAgentError, command: str = "") -> str:
    """What to do next after ``err`` in ``command`` ("" when nothing useful comes to mind)."""
    if isinstance(err, Locked):
        return (
            f"run 'keyagent unlock {err.names[0]}'" if err.names else "run 'keyagent unlock NAME'"
        )
    if isinstance(err, NoSuchKey):
        return "'keyagent list' shows your keys"
    if isinstance(err, KeyExists):
        return "choose another name, or delete the old key first with 'keyagent delete NAME'"
    if isinstance(err, NoMatch):
        return "the file is for a key this agent does not hold; 'keyagent list' shows your keys"
    if isinstance(err, Malformed):
        if command == "encrypt":
            return "recipients are age1... strings (-r), files of them (-R) or key names (-k)"
        return "is this an age-encrypted file?" if command == "decrypt" else ""
    if isinstance(err, RateLimited):
        return "too many attempts: wait a little and try again"
    if isinstance(err, AgentStartFailed):
        return "fix that and run the command again: the agent starts when needed"
    if isinstance(err, AgentUnavailable):
        return (
            "check that a session bus is running and that keyagentd is installed"
            " (run 'keyagent install')"
        )
    if isinstance(err, AccessDenied):
        return "the org.example.KeyAgent service on this bus is not yours: nothing was sent to it"
    return ""
