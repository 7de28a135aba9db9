#!/usr/bin/env bash
# What the dashboard's browser test needs: Debian's chromium, which Playwright drives through
# executable_path (Playwright's own browser downloads are not reachable from CI).
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "chromium ready: $(chromium --version 2>/dev/null || echo unknown)"
