#!/usr/bin/env bash
# The full test suite: formatting, lints, unit, integration and end-to-end tests.
# Installs what the tests need by itself: the independent Delta reader (Python
# `deltalake` in .venv), Debian's headless Chromium with playwright-core for the
# dashboard tests, and the dashboard's browser build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import deltalake, pyarrow' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'deltalake==1.6.6' 'pyarrow==26.0.1'
fi
export DELTA_READER_PYTHON="$PWD/.venv/bin/python"

if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends chromium
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

./deploy/build-web.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
