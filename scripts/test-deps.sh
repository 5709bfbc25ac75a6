#!/usr/bin/env bash
# System packages the end-to-end tests need: Debian's Chromium (never a downloaded browser).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian chromium for the browser tests" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: /usr/bin/chromium missing and not root: browser tests will be skipped" >&2
  fi
fi
