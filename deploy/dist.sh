#!/usr/bin/env bash
# `just dist`: the release archive target/dist/rr-gateway-<version>-<target>.tar.gz
# (and its .sha256): the binaries from one `cargo build --release --workspace
# --bins`, the example configs, the systemd units, the container files,
# LICENSE, README.md and docs/. Unpacked it reads:
#
#   rr-gateway-<version>-<target>/
#     bin/{discovery,gateway,app,up,loadtest}
#     deploy/{config,systemd,container}/...
#     docs/  LICENSE  README.md
#
# No shell completions or man pages: they need clap_complete/clap_mangen wired
# into the binaries. Owners, groups and times in the archive are fixed (the
# last commit's time), so the same tree gives the same archive.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --workspace --bins

version=$(target/release/gateway --version | awk '{print $2}')
target=$(rustc -vV | sed -n 's/^host: //p')
name="rr-gateway-$version-$target"
out=target/dist
stage="$out/$name"
rm -rf "$stage" "$out/$name.tar.gz" "$out/$name.tar.gz.sha256"
mkdir -p "$stage/bin" "$stage/deploy"

for b in discovery gateway app up loadtest; do
  install -m 0755 "target/release/$b" "$stage/bin/$b"
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
