#!/usr/bin/env bash
# The full test suite: formatting, lints, unit, integration and end-to-end tests.
# Installs what the tests need by itself: the independent Delta reader (Python
# `deltalake` in .venv) and the dashboard's browser build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import deltalake, pyarrow' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'deltalake>=1.1,<2' 'pyarrow>=15'
fi
export DELTA_READER_PYTHON="$PWD/.venv/bin/python"

./deploy/build-web.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
