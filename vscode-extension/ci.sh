#!/usr/bin/env bash
# Build, test and package the VS Code extension: the step .ci/run calls.
# Needs Node 20+ and npm; the integration test runs the real server from ../.venv.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
npm test
npm run package
ls -l yool-*.vsix
