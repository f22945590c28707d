#!/bin/sh
# Install Debian's PostgreSQL server if it is not there yet: the sweep tests start a throw-away server from it
# (initdb + pg_ctl in a temp dir, loopback only) to run several workers on one shared study.
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo_cmd="sudo"
  if ($sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq postgresql) >/dev/null 2>&1; then
    echo "installed PostgreSQL ($(ls -d /usr/lib/postgresql/*/bin | head -1))"
    exit 0
  fi
fi
echo "note: could not install postgresql with apt; the PostgreSQL sweep test needs initdb and pg_ctl on PATH"
