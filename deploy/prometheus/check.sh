#!/usr/bin/env bash
# Check the Prometheus config template and rules, and run the promtool rule
# unit tests. Installs Debian's `prometheus` package (which ships promtool)
# when promtool is missing. `make promtool-check` (part of `make test`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: promtool not found; installing Debian's prometheus package" >&2
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            echo "check.sh: cannot install prometheus: not root and no passwordless sudo; install it (apt-get install prometheus) and re-run" >&2
            exit 1
        fi
    else
        SUDO=()
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "check.sh: cannot install prometheus: apt-get is not available on this system; install promtool and re-run" >&2
        exit 1
    fi
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update; then
        echo "check.sh: cannot install prometheus: apt-get update failed (no network or no package mirror?)" >&2
        exit 1
    fi
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; then
        echo "check.sh: cannot install prometheus: apt-get install failed" >&2
        exit 1
    fi
    command -v promtool >/dev/null 2>&1 || { echo "check.sh: prometheus installed but promtool is still not on PATH" >&2; exit 1; }
fi

cd "$here"
promtool check config prometheus.yml
promtool check rules rules/*.yml
promtool test rules tests/*.yml
