"""``age-plugin-keyagent``: age, rage and other plugin-capable age clients use agent keys.

A thin client of the agent (`keyagent.Client` on the package's own D-Bus code; nothing heavy
is imported on the decrypt path): ``identity-v1`` hands the file's stanzas to the agent's
UnwrapFileKey, ``recipient-v1`` wraps to the key's public recipient. Secret keys never leave
the agent.
"""
