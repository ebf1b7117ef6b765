"""The reliability suite: load, a slow reader, faults, bad input and access, on private buses.

A package (this file), so its conftest is imported as ``reliability.conftest`` and never
shadows ``tests/conftest.py`` (which other test modules import as ``conftest``).
"""
