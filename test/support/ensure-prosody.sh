#!/usr/bin/env bash
# The end-to-end tests need Debian's `prosody` (the legacy server the proxy fronts; the tests
# start their own instances on their own ports). Installs it when missing and we are root, with
# the distro daemon kept from starting: policy-rc.d exiting 101 tells invoke-rc.d not to start
# services during the install; whatever policy-rc.d was there before is put back. Used by
# `npm test` and by .ci/run.
set -euo pipefail

command -v prosody >/dev/null 2>&1 && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "The end-to-end tests need Prosody: run 'sudo apt-get install prosody' (Debian/Ubuntu), then 'npm test' again." >&2
  exit 1
fi

echo "prosody not found: installing Debian's package (its daemon is kept from starting)"
policy=/usr/sbin/policy-rc.d
saved_policy=""
if [ -e "$policy" ]; then
  saved_policy="$(mktemp)"
  cp -p "$policy" "$saved_policy"
fi
restore_policy() {
  if [ -n "$saved_policy" ]; then
    cp -p "$saved_policy" "$policy" && rm -f "$saved_policy"
  else
    rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# smacks-proxy: no service starts during package installs\nexit 101\n' >"$policy"
chmod 755 "$policy"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null
apt-get install -y -qq --no-install-recommends prosody </dev/null
