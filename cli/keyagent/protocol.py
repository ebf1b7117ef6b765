"""The wire contract shared by the agent and its clients.

Names of the bus, objects, interfaces and errors live here and nowhere else.
This module is deliberately light (no I/O, no third-party imports): the
`keyagent` command imports it on every start, and the agent imports it too.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` and `re` cost milliseconds at every start of the command
if TYPE_CHECKING:
    from typing import Any, Final

BUS_NAME: Final = "org.example.KeyAgent"
#: The bus daemon's own name (its replies and errors come from it).
BUS_DAEMON: Final = "org.freedesktop.DBus"
MANAGER_PATH: Final = "/org/example/KeyAgent"
MANAGER_INTERFACE: Final = "org.example.KeyAgent"
KEY_INTERFACE: Final = "org.example.KeyAgent.Key"
KEYS_PATH_PREFIX: Final = MANAGER_PATH + "/keys/"
ERROR_PREFIX: Final = "org.example.KeyAgent.Error."
#: A ``Locked`` error reply's body: the sentence, then the candidate key names.
LOCKED_SIGNATURE: Final = "sas"

ACCESS_DENIED: Final = "org.freedesktop.DBus.Error.AccessDenied"
INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"

KEY_TYPE_X25519: Final = "x25519"
KEY_TYPE_HYBRID: Final = "mlkem768x25519"
KEY_TYPES: Final = (KEY_TYPE_X25519, KEY_TYPE_HYBRID)
KEY_TYPE_SSH_ED25519: Final = "ssh-ed25519"
KEY_TYPE_SSH_RSA: Final = "ssh-rsa"
#: Every type a stored key may have: KEY_TYPES are created, SSH keys only imported.
STORED_KEY_TYPES: Final = (*KEY_TYPES, KEY_TYPE_SSH_ED25519, KEY_TYPE_SSH_RSA)

#: In-message payload cap (``ay`` arguments and replies); larger data uses the Fd methods.
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024 * 1024
#: A passphrase or identity passed in an fd (`<secret>-fd` options) is at most this long.
MAX_SECRET_BYTES: Final = 16 * 1024  # an 8192-bit RSA key's OpenSSH file is ~6.7 KB

_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HEX: Final = frozenset("0123456789abcdef")


def is_valid_key_name(name: str) -> bool:
    """Key names are 1-64 of [A-Za-z0-9_-], so a name is its own object path element."""
    return 0 < len(name) <= 64 and _NAME_CHARS.issuperset(name)


def key_path(name: str) -> str:
    """The object path of a key.

    D-Bus path elements allow only [A-Za-z0-9_], so like sd_bus_path_encode every other byte
    (here '-', and '_' itself, to keep the mapping reversible) becomes '_' and two hex digits:
    `work` -> .../keys/work, `my-key` -> .../keys/my_2dkey, `a_b` -> .../keys/a_5fb.
    """
    if not is_valid_key_name(name):
        raise InvalidName(f"Invalid key name {name!r}: use 1-64 letters, digits, '_' or '-'.")
    return KEYS_PATH_PREFIX + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)


def key_name_from_path(path: str) -> str:
    """The key name a key object path stands for (the inverse of `key_path`)."""
    if not path.startswith(KEYS_PATH_PREFIX):
        raise ValueError(f"not a key object path: {path}")
    name = _unescape(path[len(KEYS_PATH_PREFIX) :])
    if not is_valid_key_name(name) or key_path(name) != path:
        raise ValueError(f"not a key object path: {path}")
    return name


def _unescape(element: str) -> str:
    """Every `_` and two lowercase hex digits as the character they stand for."""
    out, i = [], 0
    while (j := element.find("_", i)) >= 0:
        out.append(element[i:j])
        code = element[j + 1 : j + 3]
        if len(code) == 2 and _HEX.issuperset(code):
            out.append(chr(int(code, 16)))
            i = j + 3
        else:
            out.append("_")
            i = j + 1
    out.append(element[i:])
    return "".join(out)


class KeyAgentError(Exception):
    """Base of every named error; ``wire_name`` is the D-Bus error name.

    The text of an error is one sentence for a person: never key material.
    """

    short_name: str = "Failed"
    #: The agent's own note of the key an error is about, for its audit (never sent).
    key: str = ""

    @classmethod
    def wire_name(cls) -> str:
        return ERROR_PREFIX + cls.short_name

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.default_message())
        self.message = str(self.args[0])

    @classmethod
    def default_message(cls) -> str:
        return "The operation failed."

    def wire_args(self) -> tuple[str, list[Any]]:
        """The error reply's signature and body: the sentence, then any data (see `Locked`)."""
        return "s", [self.message]


class Failed(KeyAgentError):
    short_name = "Failed"


class Locked(KeyAgentError):
    """A key that could open the file is locked. ``names`` lists the candidates."""

    short_name = "Locked"

    def __init__(self, message: str = "", names: tuple[str, ...] = ()) -> None:
        if not names and message:
            names = parse_locked_names(message)
        if not message:
            message = locked_message(names)
        super().__init__(message)
        self.names = names

    @classmethod
    def for_keys(cls, names: tuple[str, ...] | list[str]) -> Locked:
        return cls(locked_message(tuple(names)), tuple(names))

    def wire_args(self) -> tuple[str, list[Any]]:
        """``(s message, as names)``: the candidates as data, not only inside the sentence."""
        return LOCKED_SIGNATURE, [self.message, list(self.names)]


class NoSuchKey(KeyAgentError):
    short_name = "NoSuchKey"


class KeyExists(KeyAgentError):
    short_name = "KeyExists"


class BadPassphrase(KeyAgentError):
    short_name = "BadPassphrase"

    @classmethod
    def default_message(cls) -> str:
        return "The passphrase is wrong."


class NoMatch(KeyAgentError):
    short_name = "NoMatch"

    @classmethod
    def default_message(cls) -> str:
        return "No key in the agent matches this file."


class Malformed(KeyAgentError):
    short_name = "Malformed"

    @classmethod
    def default_message(cls) -> str:
        return "The input is not a valid age file."


class Integrity(KeyAgentError):
    short_name = "Integrity"

    @classmethod
    def default_message(cls) -> str:
        return "The file failed its integrity check: it was modified or cut short."


class Unsupported(KeyAgentError):
    short_name = "Unsupported"


class TooLarge(KeyAgentError):
    short_name = "TooLarge"


class InvalidName(KeyAgentError):
    short_name = "InvalidName"


class RateLimited(KeyAgentError):
    short_name = "RateLimited"


class AccessDenied(KeyAgentError):
    """Raised client-side for the bus's AccessDenied (not one of our wire names)."""

    short_name = "AccessDenied"

    @classmethod
    def wire_name(cls) -> str:
        return ACCESS_DENIED


class InvalidArgs(KeyAgentError):
    """Raised client-side for the bus's InvalidArgs (a bad signature or option)."""

    short_name = "InvalidArgs"

    @classmethod
    def wire_name(cls) -> str:
        return INVALID_ARGS


#: Every named error of the design, by its wire name: the one mapping used on both sides.
ERRORS: Final[dict[str, type[KeyAgentError]]] = {
    cls.wire_name(): cls
    for cls in (
        Locked,
        NoSuchKey,
        KeyExists,
        BadPassphrase,
        NoMatch,
        Malformed,
        Integrity,
        Unsupported,
        TooLarge,
        InvalidName,
        RateLimited,
        Failed,
        AccessDenied,
        InvalidArgs,
    )
}

#: The design's own error names (org.example.KeyAgent.Error.*).
AGENT_ERROR_NAMES: Final = tuple(n for n in ERRORS if n.startswith(ERROR_PREFIX))


def error_from_wire(name: str, message: str, *data: object) -> KeyAgentError:
    """The exception for a D-Bus error reply (its name, then its body's arguments); unknown
    names become ``Failed``. A ``Locked`` reply's second argument lists the candidate keys
    (an older agent's has none: the names are read from the sentence)."""
    cls = ERRORS.get(name)
    if cls is None:
        return Failed(message or name)
    if cls is Locked and data and isinstance(data[0], list | tuple):
        names = tuple(n for n in data[0] if isinstance(n, str) and is_valid_key_name(n))
        return Locked(message, names)
    return cls(message)


def locked_message(names: tuple[str, ...]) -> str:
    if not names:
        return "The key for this file is locked."
    quoted = ", ".join(f"'{n}'" for n in names)
    if len(names) == 1:
        return f"Key {quoted} is locked: unlock it and retry."
    return f"One of the keys {quoted} is needed and all are locked: unlock one and retry."


def parse_locked_names(message: str) -> tuple[str, ...]:
    """The key names a ``Locked`` error's text names (its quoted words)."""
    names, start = [], message.find("'")
    while start >= 0:
        end = start + 1
        while end < len(message) and message[end] in _NAME_CHARS:
            end += 1
        if 0 < end - start - 1 <= 64 and message[end : end + 1] == "'":
            names.append(message[start + 1 : end])
            start = message.find("'", end + 1)
        else:
            start = message.find("'", start + 1)
    return tuple(names)
