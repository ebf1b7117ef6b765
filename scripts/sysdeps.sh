#!/usr/bin/env bash
# Install the system tools keyagent's demo and tests use, only those that are missing.
# `sysdeps.sh bench` also installs the peers `make bench` compares against.
set -euo pipefail
declare -A pkg_for=(
  [dbus-daemon]=dbus-daemon [dbus-run-session]=dbus-daemon [dbus-send]=dbus-bin
  [gdbus]=libglib2.0-bin [busctl]=systemd [age]=age [ssh-keygen]=openssh-client
  [dbus-monitor]=dbus-bin [dbus-update-activation-environment]=dbus-bin
  # typage (npm age-encryption) in the plugin tests; the test installs it with npm.
  [node]=nodejs [npm]=npm
  # packaging tests: man page lint, the three shells' completions, meson's pkg-config lookups
  [mandoc]=mandoc [zsh]=zsh [fish]=fish [pkg-config]=pkg-config [unshare]=util-linux
  [systemd-analyze]=systemd
)
if [ "${1:-}" = bench ]; then
  pkg_for+=([gnome-keyring-daemon]=gnome-keyring [secret-tool]=libsecret-tools [gpg]=gnupg
            [gpg-agent]=gpg-agent [openssl]=openssl)
fi
missing=()
for tool in "${!pkg_for[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_for[$tool]}")
done
# Not a command: libseccomp's bindings, for the system Python. tests/test_unit_sandbox.py loads
# systemd's MemoryDenyWriteExecute= filter with them.
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
  missing+=(python3-seccomp)
fi
# Not a command either: libsodium, whose crypto_scalarmult makes an X25519 unwrap one
# multiplication (age/x25519.py; without it the agent uses OpenSSL's two).
ldconfig -p 2>/dev/null | grep -q 'libsodium\.so\.' || missing+=(libsodium23)
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "keyagent: installing system packages: ${pkgs[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# another apt run (a parallel CI job) holds the lock for a while: wait for it
$sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${pkgs[@]}" >/dev/null
