#!/usr/bin/env bash
# Install the system tools keyagent's demo and tests use, only those that are missing.
set -euo pipefail
declare -A pkg_for=(
  [dbus-daemon]=dbus-daemon [dbus-run-session]=dbus-daemon [dbus-send]=dbus-bin
  [dbus-monitor]=dbus-bin [dbus-update-activation-environment]=dbus-bin
  [gdbus]=libglib2.0-bin [busctl]=systemd [age]=age
)
missing=()
for tool in "${!pkg_for[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_for[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "keyagent: installing system packages: ${pkgs[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
