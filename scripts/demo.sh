#!/usr/bin/env bash
# `make demo`: an end-to-end keyagent session on a private session bus, in a throwaway home,
# so it never touches your real keys. Each step prints the command it runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv/bin"

if [ -z "${KEYAGENT_DEMO_INNER:-}" ]; then
  work=$(mktemp -d -t keyagent-demo.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  export XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config" KEYAGENT_HOME="$work/keys"
  export KEYAGENT_DEMO_INNER=1 KEYAGENT_DEMO_WORK="$work" PATH="$venv:$PATH"
  # Always a private bus: the demo's agent and activation file stay inside it.
  exec dbus-run-session -- bash "$0"
fi

work=$KEYAGENT_DEMO_WORK
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
pass="correct horse battery staple"

step keyagent install
# Activation: nothing is running; the first call starts the agent.
step gdbus call --session --dest org.example.KeyAgent --object-path /org/example/KeyAgent \
  --method org.freedesktop.DBus.Properties.Get org.example.KeyAgent Version
step busctl --user get-property org.example.KeyAgent /org/example/KeyAgent org.example.KeyAgent Version \
  2>/dev/null || true

printf "%s\n" "$pass" > "$work/pass"
step keyagent init demo --label "demo key" --passphrase-fd 3 3<"$work/pass"
step keyagent recipient demo
step keyagent unlock demo --idle-timeout 10m --passphrase-fd 3 3<"$work/pass"

head -c 3000000 /dev/urandom > "$work/secret.bin"
echo "Hello from keyagent" > "$work/note.txt"
step keyagent encrypt -k demo -o "$work/secret.bin.age" "$work/secret.bin"
step keyagent encrypt -k demo -a -o "$work/note.txt.age" "$work/note.txt"
step cat "$work/note.txt.age"
step keyagent decrypt -o "$work/secret.out" "$work/secret.bin.age"
step cmp "$work/secret.bin" "$work/secret.out"
step keyagent decrypt "$work/note.txt.age"

# Interop: the age command reads what the agent wrote, and the other way round.
recipient=$(keyagent recipient demo)
echo "made by the age command" | age -r "$recipient" > "$work/from-age.age"
step keyagent decrypt "$work/from-age.age"

step keyagent status
step keyagent status --json
step keyagent lock demo
step keyagent status
echo
echo "keyagent: decrypting with the key locked now fails with a hint:"
keyagent decrypt "$work/note.txt.age" </dev/null || true
step keyagent lock --all
echo
echo "demo finished: every step above ran against a real agent on a private session bus."
