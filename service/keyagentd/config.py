"""The agent's configuration file: ``$XDG_CONFIG_HOME/keyagent/config.toml``.

Every option is optional; a missing file means the defaults. Parsing is strict:
an unknown option, a wrong type or an out-of-range value stops the agent with
one sentence naming the file and the option, so a typo never silently weakens
a policy. Documented option by option in docs/config.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from keyagent.protocol import is_valid_key_name

#: The ``u`` timeouts of the bus interface bound every duration.
MAX_SECONDS: Final = 2**32 - 1
#: A config file is a few lines; refuse to parse something absurd.
MAX_CONFIG_BYTES: Final = 1024 * 1024


class ConfigError(Exception):
    """The configuration file is unusable; the text is one sentence for a person."""


@dataclass(frozen=True)
class KeyPolicy:
    """Per-key rules from ``[keys.NAME]``.

    ``allowed_executables`` is None when any program of the user may use the
    key; otherwise only processes whose ``/proc/PID/exe`` is one of the paths.
    """

    allowed_executables: tuple[str, ...] | None = None
    confirm: bool = False
    idle_timeout: int | None = None
    max_timeout: int | None = None


DEFAULT_POLICY: Final = KeyPolicy()


@dataclass(frozen=True)
class Config:
    idle_timeout: int = 600
    max_timeout: int = 7200
    #: Seconds without calls, every key locked, before the agent exits; 0 = never.
    idle_exit: int = 300
    lock_on_sleep: bool = True
    lock_on_session_lock: bool = True
    lock_on_screensaver: bool = True
    #: Program to ask for passphrases and confirmations (ssh-askpass convention).
    askpass: str | None = None
    keys: Mapping[str, KeyPolicy] = field(default_factory=lambda: MappingProxyType({}))
    #: The file this came from, None for the built-in defaults.
    source: Path | None = None

    def policy_for(self, name: str) -> KeyPolicy:
        return self.keys.get(name, DEFAULT_POLICY)

    def timeouts_for(self, name: str) -> tuple[int, int]:
        """(idle, max) defaults for unlocking ``name``: the key's own, else the global ones."""
        policy = self.policy_for(name)
        idle = policy.idle_timeout if policy.idle_timeout is not None else self.idle_timeout
        max_ = policy.max_timeout if policy.max_timeout is not None else self.max_timeout
        return min(idle, max_), max_


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/keyagent/config.toml`` (``~/.config`` when unset or relative)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "keyagent" / "config.toml"


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration; a missing file gives the defaults."""
    path = config_path(env) if path is None else path
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return Config()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file ({e.strerror}).") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the configuration file is larger than 1 MiB.")
    import tomllib  # only with a file: ~5 ms of regular expressions at start-up otherwise

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None
    return parse_config(data, path)


_GLOBAL_INTS: Final = ("idle_timeout", "max_timeout", "idle_exit")
_GLOBAL_BOOLS: Final = ("lock_on_sleep", "lock_on_session_lock", "lock_on_screensaver")
_KEY_OPTIONS: Final = ("allowed_executables", "confirm", "idle_timeout", "max_timeout")


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    """Check a parsed TOML document; ``path`` names the file in errors."""
    known = {*_GLOBAL_INTS, *_GLOBAL_BOOLS, "askpass", "keys"}
    _reject_unknown(data, known, path, prefix="")
    values: dict[str, Any] = {}
    for name in _GLOBAL_INTS:
        if name in data:
            values[name] = _seconds(data[name], path, name, allow_zero=name == "idle_exit")
    for name in _GLOBAL_BOOLS:
        if name in data:
            values[name] = _bool(data[name], path, name)
    if "askpass" in data:
        values["askpass"] = _askpass(data["askpass"], path)
    keys: dict[str, KeyPolicy] = {}
    if "keys" in data:
        table = data["keys"]
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: 'keys' must be a table of [keys.NAME] sections.")
        for name, section in table.items():
            keys[name] = _key_policy(name, section, path)
    if "max_timeout" in values and "idle_timeout" not in values:
        # Lowering only the maximum lowers the default idle timeout with it.
        values["idle_timeout"] = min(Config.idle_timeout, values["max_timeout"])
    config = Config(**values, keys=MappingProxyType(keys), source=path)
    _check_order(config.idle_timeout, config.max_timeout, path, "")
    return config


def _key_policy(name: str, section: object, path: Path) -> KeyPolicy:
    where = f"keys.{name}"
    if not is_valid_key_name(name):
        raise ConfigError(
            f"{path}: [{where}] is not a valid key name (use 1-64 letters, digits, '_' or '-')."
        )
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{where}' must be a table ([{where}]).")
    _reject_unknown(section, set(_KEY_OPTIONS), path, prefix=where + ".")
    allowed: tuple[str, ...] | None = None
    if "allowed_executables" in section:
        allowed = _executables(section["allowed_executables"], path, where)
    confirm = _bool(section["confirm"], path, where + ".confirm") if "confirm" in section else False
    idle = max_ = None
    if "idle_timeout" in section:
        idle = _seconds(section["idle_timeout"], path, where + ".idle_timeout")
    if "max_timeout" in section:
        max_ = _seconds(section["max_timeout"], path, where + ".max_timeout")
    if idle is not None and max_ is not None:
        _check_order(idle, max_, path, where + ".")
    return KeyPolicy(allowed, confirm, idle, max_)


def _reject_unknown(table: Mapping[str, Any], known: set[str], path: Path, prefix: str) -> None:
    for key in table:
        if key not in known:
            hint = "" if prefix else " (see docs/config.md)"
            raise ConfigError(f"{path}: unknown option '{prefix}{key}'{hint}.")


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", list: "a list"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )


def _seconds(value: object, path: Path, name: str, *, allow_zero: bool = False) -> int:
    # bool is an int subclass in Python: `idle_timeout = true` must not mean 1 second.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{path}: '{name}' must be an integer number of seconds, not {_type_name(value)}."
        )
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_SECONDS:
        raise ConfigError(f"{path}: '{name}' must be between {low} and {MAX_SECONDS} seconds.")
    return value


def _bool(value: object, path: Path, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: '{name}' must be true or false, not {_type_name(value)}.")
    return value


def _askpass(value: object, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: 'askpass' must be a non-empty program path or name.")
    return os.path.expanduser(value)


def _executables(value: object, path: Path, where: str) -> tuple[str, ...]:
    name = where + ".allowed_executables"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: '{name}' must be a list of absolute program paths.")
    if not value:
        raise ConfigError(
            f"{path}: '{name}' is empty: list at least one program, or remove it to allow any."
        )
    for exe in value:
        if not os.path.isabs(exe) or os.path.normpath(exe) != exe:
            raise ConfigError(
                f"{path}: '{name}' entry {exe!r} must be an absolute, normalized path "
                "such as /usr/bin/foo."
            )
    return tuple(value)


def _check_order(idle: int, max_: int, path: Path, prefix: str) -> None:
    if idle > max_:
        raise ConfigError(
            f"{path}: '{prefix}idle_timeout' ({idle}) must not exceed "
            f"'{prefix}max_timeout' ({max_}): raise max_timeout too."
        )
