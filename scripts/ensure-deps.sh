#!/usr/bin/env bash
# Installs what the tests, demo and benchmark need when it is missing:
# redis-server (+ redis-cli, redis-benchmark). Debian/Ubuntu (apt-get).
# Usage: scripts/ensure-deps.sh [extra-debian-package ...]
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
for pkg in "$@"; do
  case "$pkg" in
    nutcracker) command -v nutcracker >/dev/null 2>&1 || need+=(nutcracker) ;;
    *) need+=("$pkg") ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
