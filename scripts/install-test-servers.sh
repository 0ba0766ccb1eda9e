#!/usr/bin/env bash
# Installs the npm-packaged servers the tests start on loopback (Azurite, the Azure Blob
# Storage emulator) into the gitignored .test-servers/ of the checkout. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .test-servers/node_modules/.bin/azurite-blob ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: install Node.js (Debian: nodejs npm) to run the Azure Blob tests" >&2
    exit 1
  fi
  npm install --silent --no-audit --no-fund --prefix .test-servers "azurite@^3" >/dev/null
fi
