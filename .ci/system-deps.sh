#!/usr/bin/env bash
# System packages the test suite needs that pip cannot install, for a Debian/Ubuntu CI image.
# Called by .ci/run before the virtual environment exists, so it must not use Python packages.
#
#   chromium  headless browser for tests/test_visdom_browser.py (loads the visdom page) and
#             tests/test_demo_browser.py (drives demo.py's page through Playwright).
#
# Node.js/npm are expected on the image already: the visdom tests install visdom's front-end
# from the npm registry themselves (python -m utils.visdom_frontend install).
set -euo pipefail

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo "$@"
        else
            echo "system-deps.sh: '$*' needs root and sudo is not available" >&2
            exit 1
        fi
    else
        "$@"
    fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "system-deps.sh: installing chromium (headless browser for the visdom page test)"
    need_root apt-get update
    need_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends chromium
else
    echo "system-deps.sh: chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
fi

if ! command -v npm >/dev/null 2>&1; then
    # Not fatal here: the visdom tests fail in CI (CI=true) with a message naming npm.
    echo "system-deps.sh: warning: npm not found; the visdom tests need it to install" \
        "visdom's front-end (apt-get install npm)" >&2
fi
