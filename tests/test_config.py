"""The configuration file: defaults, every option, and one clear sentence for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyagentd.config import (
    DEFAULT_POLICY,
    Config,
    ConfigError,
    KeyPolicy,
    config_path,
    load_config,
)

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "nope.toml")
    assert config == Config()
    assert (config.idle_timeout, config.max_timeout, config.idle_exit) == (600, 7200, 300)
    assert config.lock_on_sleep and config.lock_on_session_lock and config.lock_on_screensaver
    assert config.askpass is None
    assert config.policy_for("work") == DEFAULT_POLICY
    assert config.timeouts_for("work") == (600, 7200)


def test_path_follows_xdg_config_home(tmp_path: Path) -> None:
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "keyagent/config.toml"
    # A relative XDG_CONFIG_HOME is invalid per the spec and ignored.
    assert config_path({"XDG_CONFIG_HOME": "rel"}) == Path.home() / ".config/keyagent/config.toml"
    assert config_path({}) == Path.home() / ".config/keyagent/config.toml"


def test_load_uses_environment(tmp_path: Path) -> None:
    (tmp_path / "keyagent").mkdir()
    (tmp_path / "keyagent" / "config.toml").write_text("idle_exit = 0\n")
    assert load_config(env={"XDG_CONFIG_HOME": str(tmp_path)}).idle_exit == 0


def test_every_option(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
idle_timeout = 300
max_timeout = 3600
idle_exit = 60
lock_on_sleep = false
lock_on_session_lock = false
lock_on_screensaver = false
askpass = "/usr/bin/ksshaskpass"

[keys.work]
allowed_executables = ["/usr/bin/keyagent-foo", "/usr/bin/python3.11"]
confirm = true
idle_timeout = 30
max_timeout = 60

[keys.home]
confirm = false
""",
    )
    config = load_config(path)
    assert config.source == path
    assert (config.idle_timeout, config.max_timeout, config.idle_exit) == (300, 3600, 60)
    assert not (config.lock_on_sleep or config.lock_on_session_lock or config.lock_on_screensaver)
    assert config.askpass == "/usr/bin/ksshaskpass"
    assert config.policy_for("work") == KeyPolicy(
        ("/usr/bin/keyagent-foo", "/usr/bin/python3.11"), True, 30, 60
    )
    assert config.timeouts_for("work") == (30, 60)
    assert config.policy_for("home") == KeyPolicy()
    assert config.timeouts_for("home") == (300, 3600)
    assert config.policy_for("other") == DEFAULT_POLICY


def test_per_key_idle_is_capped_by_global_max(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "max_timeout = 100\n[keys.k]\nidle_timeout = 500\n"))
    # Lowering only max_timeout lowers the default idle timeout with it.
    assert (config.idle_timeout, config.max_timeout) == (100, 100)
    assert config.timeouts_for("k") == (100, 100)
    assert config.timeouts_for("other") == (100, 100)


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[keys.k]\nconfirm = true\n"))
    with pytest.raises(AttributeError):
        config.idle_timeout = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.keys["x"] = KeyPolicy()  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("idle_timout = 5\n", "unknown option 'idle_timout'"),
        ("[keys.work]\nconfrim = true\n", "unknown option 'keys.work.confrim'"),
        ("idle_timeout = '10m'\n", "'idle_timeout' must be an integer number of seconds, not a"),
        ("idle_timeout = true\n", "'idle_timeout' must be an integer number of seconds"),
        ("idle_timeout = 0\n", "'idle_timeout' must be between 1 and"),
        ("max_timeout = 4294967296\n", "'max_timeout' must be between 1 and"),
        ("idle_exit = -1\n", "'idle_exit' must be between 0 and"),
        ("idle_timeout = 9000\n", "'idle_timeout' (9000) must not exceed 'max_timeout' (7200)"),
        ("lock_on_sleep = 1\n", "'lock_on_sleep' must be true or false, not an integer"),
        ("lock_on_screensaver = 'yes'\n", "'lock_on_screensaver' must be true or false"),
        ("askpass = ''\n", "'askpass' must be a non-empty program path or name"),
        ("askpass = 3\n", "'askpass' must be a non-empty program path or name"),
        ("keys = 3\n", "'keys' must be a table"),
        ("[keys.'bad name']\nconfirm = true\n", "[keys.bad name] is not a valid key name"),
        ("[keys]\nwork = 1\n", "'keys.work' must be a table"),
        ("[keys.w]\nconfirm = 'yes'\n", "'keys.w.confirm' must be true or false, not a string"),
        ("[keys.w]\nallowed_executables = '/bin/x'\n", "'keys.w.allowed_executables' must be"),
        ("[keys.w]\nallowed_executables = [1]\n", "must be a list of absolute program paths"),
        ("[keys.w]\nallowed_executables = []\n", "is empty: list at least one program"),
        ("[keys.w]\nallowed_executables = ['bin/x']\n", "entry 'bin/x' must be an absolute"),
        ("[keys.w]\nallowed_executables = ['/usr/../bin/x']\n", "normalized path"),
        ("[keys.w]\nidle_timeout = 10\nmax_timeout = 5\n", "'keys.w.idle_timeout' (10) must not"),
        ("[keys.w]\nmax_timeout = 0\n", "'keys.w.max_timeout' must be between 1"),
        ("idle_timeout = \n", "not valid TOML"),
    ],
)
def test_mistakes_give_one_sentence_naming_file_and_option(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert needle in message
    assert message.endswith(".")
    assert "\n" not in message


def test_not_utf8_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"askpass = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    path.unlink()
    path.mkdir()  # a directory: reading fails with an OSError other than "not found"
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(path)


def test_too_large(tmp_path: Path) -> None:
    path = write(tmp_path, "#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(path)


def test_documented_example_parses_and_every_option_is_documented(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    # The first ```toml block is the full example: it must be a valid configuration.
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, example))
    assert config.keys, "the example shows a [keys.NAME] section"
    for option in (
        "idle_timeout",
        "max_timeout",
        "idle_exit",
        "lock_on_sleep",
        "lock_on_session_lock",
        "lock_on_screensaver",
        "askpass",
        "allowed_executables",
        "confirm",
    ):
        assert f"`{option}`" in doc, option
