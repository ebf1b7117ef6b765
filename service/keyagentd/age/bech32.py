"""Bech32 lives in `keyagent.bech32` (light, shared with age-plugin-keyagent): re-exported."""

from keyagent.bech32 import decode, encode

__all__ = ["decode", "encode"]
