#!/usr/bin/env bash
# `just dist`: the release archive target/dist/rr-gateway-<version>-<target>.tar.gz
# (and its .sha256): the binaries from one `cargo build --release --workspace
# --bins`, the example configs, the systemd units, the container files,
# LICENSE, README.md and docs/. Unpacked it reads:
#
#   rr-gateway-<version>-<target>/
#     bin/{discovery,gateway,app,up,loadtest}
#     completions/bash/<bin>  completions/zsh/_<bin>  completions/fish/<bin>.fish
#     man/man1/<bin>.1
#     deploy/{config,systemd,container}/...
#     docs/  LICENSE  README.md
#
# The completions and man pages are what each binary prints with its hidden
# `--completions SHELL` and `--man` flags (shared::cli::parse). Owners, groups
# and times in the archive are fixed (the last commit's time), so the same
# tree gives the same archive.
#
# DIST_BIN_DIR=DIR packs the binaries in DIR instead of building release ones
# (the tests pack their debug build); DIST_OUT=DIR puts the archive in DIR
# instead of target/dist.
set -euo pipefail
cd "$(dirname "$0")/.."

bins=(discovery gateway app up loadtest)
bin_dir=${DIST_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  cargo build --release --locked --workspace --bins
  bin_dir=target/release
fi

version=$("$bin_dir/gateway" --version | awk '{print $2}')
target=$(rustc -vV | sed -n 's/^host: //p')
name="rr-gateway-$version-$target"
out=${DIST_OUT:-target/dist}
stage="$out/$name"
rm -rf "$stage" "$out/$name.tar.gz" "$out/$name.tar.gz.sha256"
mkdir -p "$stage/bin" "$stage/deploy" "$stage/man/man1" \
  "$stage/completions/bash" "$stage/completions/zsh" "$stage/completions/fish"

for b in "${bins[@]}"; do
  install -m 0755 "$bin_dir/$b" "$stage/bin/$b"
  "$bin_dir/$b" --completions bash >"$stage/completions/bash/$b"
  "$bin_dir/$b" --completions zsh >"$stage/completions/zsh/_$b"
  "$bin_dir/$b" --completions fish >"$stage/completions/fish/$b.fish"
  "$bin_dir/$b" --man >"$stage/man/man1/$b.1"
done
cp -R deploy/config deploy/systemd deploy/container "$stage/deploy/"
cp -R docs "$stage/docs"
cp LICENSE README.md "$stage/"
chmod -R u=rwX,go=rX "$stage"

mtime=$(git log -1 --format=%ct 2>/dev/null || date +%s)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -C "$out" -cf - "$name" | gzip -n -9 >"$out/$name.tar.gz"
rm -rf "$stage"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
tar -tzvf "$out/$name.tar.gz"
