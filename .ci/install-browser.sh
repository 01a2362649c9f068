#!/bin/sh
# Browser pieces for tests/test_report_browser.py: Debian's chromium and the Playwright client.
# Playwright drives the system /usr/bin/chromium; `playwright install` is never run.
# Run it (sh .ci/install-browser.sh) or source it; either way it changes no shell options.
# PYTHON names the interpreter of the test environment (default: .venv/bin/python); when it does
# not exist yet, `make test` installs Playwright with the dev extra.

_debugatlas_install_browser() (
    set -eu
    if [ ! -x /usr/bin/chromium ]; then
        if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update
        $sudo apt-get install -y chromium
    fi
    python="${PYTHON:-.venv/bin/python}"
    if [ -x "$python" ] && ! "$python" -c "import playwright.sync_api" >/dev/null 2>&1; then
        "$python" -m pip install "playwright>=1.40"
    fi
)

_debugatlas_install_browser
