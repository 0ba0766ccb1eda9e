#!/usr/bin/env bash
# Installs the Debian packages the tests use (SoftHSM2 for PKCS#11, Node.js for Azurite),
# when missing.
# Idempotent; needs root (CI and the developer machines run as root).
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# PostgreSQL server binaries (initdb, pg_ctl) for the shared-ledger tests.
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
  || need+=(postgresql)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)   # Azurite (scripts/install-test-servers.sh)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
