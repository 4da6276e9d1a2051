#!/usr/bin/env bash
# What the end-to-end tests need from Debian: the three legacy servers the proxy is tested in front
# of (`prosody`, `ejabberd`, `jabberd2` with `sqlite3` for its accounts; the tests start their own
# instances on their own ports), and the real clients that nobody here wrote: `chromium` (the
# browser tests), `python3-slixmpp`, and libstrophe (`libstrophe-dev`, compiled with `gcc` and
# `pkg-config` by the test), `haproxy` (the load balancer that sends the PROXY protocol header),
# `dnsmasq-base` (the DNS server `--check dns` asks), `libxml2-utils` (xmllint, the strict parser
# the scanner is compared with), and `systemd` for `systemd-analyze`, which rates the README's unit.
# Installs what is missing when we are root, with every daemon kept from starting: policy-rc.d
# exiting 101 tells invoke-rc.d not to start services during the install; whatever policy-rc.d was
# there before is put back. Used by `npm test`, `npm run demo` and .ci/run.
set -euo pipefail

packages=(prosody ejabberd jabberd2 sqlite3 chromium python3-slixmpp libstrophe-dev gcc libc6-dev pkg-config haproxy dnsmasq-base libxml2-utils systemd)
missing=()
for package in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "The end-to-end tests need: ${missing[*]}. Run 'sudo apt-get install ${missing[*]}' (Debian/Ubuntu), then 'npm test' again." >&2
  exit 1
fi

echo "installing Debian's ${missing[*]} for the tests (no daemon is started)"
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
apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
