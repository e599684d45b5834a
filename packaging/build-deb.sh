#!/usr/bin/env bash
# Builds the Debian package: release binary, man pages and shell completions generated from
# the clap definitions (`shim generate`, hidden) into target/packaging/, then cargo-deb with
# the [package.metadata.deb] of Cargo.toml. Prints the path of the .deb on the last line.
# Needs cargo-deb (installed with `cargo install cargo-deb` if missing). Honours
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null; then
  echo "build-deb.sh: installing cargo-deb from crates.io" >&2
  cargo install --locked --quiet cargo-deb
fi
TARGET="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"

cargo build --release --locked --bin shim
SHIM="$TARGET/release/shim"

# Generated files live at a fixed path (the assets in Cargo.toml name it), whatever the
# target dir.
OUT=target/packaging
rm -rf "$OUT"
mkdir -p "$OUT/man" "$OUT/completions"
"$SHIM" generate man "$OUT/man" >/dev/null
gzip -9n "$OUT"/man/*.1 # Debian policy 12.3: compressed man pages
"$SHIM" generate completions bash >"$OUT/completions/shim.bash"
"$SHIM" generate completions zsh >"$OUT/completions/_shim"
"$SHIM" generate completions fish >"$OUT/completions/shim.fish"

# --no-build: the binary above is the one packaged (cargo-deb maps target/release/ to the
# real target dir).
cargo deb --no-build --output "$TARGET/debian/" 2>&1 | tee "$OUT/cargo-deb.log" >&2
DEB="$(ls -t "$TARGET"/debian/shim_*.deb | head -n1)"
echo "$DEB"
