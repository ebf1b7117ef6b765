"""The agent's D-Bus layer: objects, the caller gate, error mapping and dbus-fast fixes."""
