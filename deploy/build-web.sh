#!/usr/bin/env bash
# Build the dashboard's browser half: the `tributary-web` crate for wasm32 with the
# `hydrate` feature, then wasm-bindgen's JS glue, into target/site/pkg (served at /pkg).
# Installs the wasm target (via rust-toolchain.toml) and a wasm-bindgen CLI whose
# version equals the wasm-bindgen crate in Cargo.lock, under ~/.cache/tributary/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
tools="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
if ! "$tools/bin/wasm-bindgen" --version 2>/dev/null | grep -qF "$wb_version"; then
  echo "installing wasm-bindgen-cli $wb_version into $tools" >&2
  # --locked fails here: its lock file names a crate release the registry lacks.
  cargo install wasm-bindgen-cli --version "=$wb_version" --root "$tools"
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

wasm_target="${CARGO_TARGET_DIR:-target}/wasm"
cargo build -p tributary-web --lib --target wasm32-unknown-unknown \
  --no-default-features --features hydrate --release --target-dir "$wasm_target"
mkdir -p target/site/pkg
"$tools/bin/wasm-bindgen" --target web --no-typescript --out-dir target/site/pkg \
  --out-name tributary_web "$wasm_target/wasm32-unknown-unknown/release/tributary_web.wasm"
echo "dashboard browser build: target/site/pkg" >&2
