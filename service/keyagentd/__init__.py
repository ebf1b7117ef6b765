"""keyagentd: the keyagent D-Bus service."""

__version__ = "0.1.0"
