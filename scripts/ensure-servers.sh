#!/usr/bin/env bash
# Install the servers the test suite starts (Debian's redis-server and PostgreSQL), and Chromium for the report
# screenshot test, when they are missing.
# The tests start and stop them themselves, on 127.0.0.1 only; nothing here starts a service.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# headless Chromium renders `videoscore report` pages in tests/api/test_report.py (a screenshot, checked)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' (the tests need them)" >&2
    exit 1
  fi
  echo "installing ${missing[*]} …"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  # Install the binaries only; Debian's packaging may try to start services, which the tests do not use.
  RUNLEVEL=1 apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts its own redis/postgres service on install; the suite uses its own instances, so stop them.
  (service redis-server stop || true) >/dev/null 2>&1
  (service postgresql stop || true) >/dev/null 2>&1
fi
id postgres >/dev/null 2>&1 || { echo "no postgres user: apt-get install postgresql" >&2; exit 1; }
