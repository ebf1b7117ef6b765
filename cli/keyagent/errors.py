"""What the command says under an agent error: its exit status and a hint at what to do next."""

from __future__ import annotations

from keyagent.errormap import (
    AgentStartFailed,
    AgentUnavailable,
    BusRefused,
    NotYourAgent,
    PolicyRefused,
)
from keyagent.grammar import EXIT_DENIED, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE
from keyagent.protocol import (
    AccessDenied,
    InvalidName,
    KeyAgentError,
    KeyExists,
    Locked,
    Malformed,
    NoMatch,
    NoSuchKey,
    RateLimited,
)


def exit_status(err: KeyAgentError) -> int:
    if isinstance(err, AgentUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(err, AccessDenied):
        return EXIT_DENIED
    if isinstance(err, InvalidName):
        return EXIT_USAGE
    return EXIT_FAILED


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
    return _denied_hint(err) if isinstance(err, AccessDenied) else ""


def _denied_hint(err: AccessDenied) -> str:
    if isinstance(err, NotYourAgent):
        return "the org.example.KeyAgent service on this bus is not yours: nothing was sent to it"
    if isinstance(err, PolicyRefused):
        return (
            "the agent refused: a key's policy (allowed_executables, confirm) in its"
            " config.toml decides who may use it; see keyagentd(8)"
        )
    if isinstance(err, BusRefused):
        return "the session bus's own policy refused the call: check its configuration"
    return ""
