#!/usr/bin/env bash
# Run Tributary on its embedded defaults: every role in one process, the built-in IoT
# example with its event generator, the dashboard at http://127.0.0.1:8080/.
# Builds what it needs first (OpenSSL's headers when missing, dashboard browser code,
# then the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_openssl_headers
./deploy/build-web.sh
cargo build --bin tributary
exec "${CARGO_TARGET_DIR:-target}/debug/tributary" up "$@"
