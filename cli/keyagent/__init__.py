"""keyagent: client library and command for the keyagent D-Bus service."""

__version__ = "0.1.0"
