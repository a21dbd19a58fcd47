#!/usr/bin/env bash
# Run a real Prometheus on 127.0.0.1 against a local shoal cluster.
#
#   deploy/prometheus/run-prometheus.sh DATA_DIR [PORT]     (make prometheus)
#
# DATA_DIR is the directory `shoal cluster up --data-dir` wrote. It must hold
# DATA_DIR/prometheus.yml, a scrape config whose targets line lists every
# node's metrics endpoint, as client/cli/cluster.py writes it:
#
#     static_configs:
#       - targets: ["127.0.0.1:19292", "127.0.0.1:19293", "127.0.0.1:19294"]
#
# Every "host:port" on `targets:` lines is taken. The template next to this
# script (2 s scrapes, the shoal rules and alerts) is rendered with those
# targets into DATA_DIR/prometheus/prometheus.yml; the TSDB goes to
# DATA_DIR/prometheus/data. Prometheus runs in the foreground (exec), on
# 127.0.0.1:PORT (default 9090, env PROMETHEUS_PORT), until Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ $# -lt 1 ]; then
    echo "usage: $0 DATA_DIR [PORT]" >&2
    exit 2
fi
data_dir="$(cd "$1" 2>/dev/null && pwd)" || { echo "run-prometheus.sh: no such directory: $1 (run \`shoal cluster up --data-dir $1\` first)" >&2; exit 1; }
port="${2:-${PROMETHEUS_PORT:-9090}}"
scrape_config="$data_dir/prometheus.yml"
if [ ! -f "$scrape_config" ]; then
    echo "run-prometheus.sh: $scrape_config is missing; \`shoal cluster up --data-dir $1\` writes it" >&2
    exit 1
fi
if ! command -v prometheus >/dev/null 2>&1; then
    echo "run-prometheus.sh: prometheus is not installed (apt-get install prometheus, or run deploy/prometheus/check.sh as root)" >&2
    exit 1
fi

targets="$(grep -E '^[[:space:]]*-?[[:space:]]*targets:' "$scrape_config" \
    | grep -oE '[A-Za-z0-9_.-]+:[0-9]+' \
    | sed 's/.*/"&"/' | paste -sd, - | sed 's/,/, /g')"
if [ -z "$targets" ]; then
    echo "run-prometheus.sh: no host:port targets found on a 'targets:' line of $scrape_config" >&2
    exit 1
fi

out_dir="$data_dir/prometheus"
mkdir -p "$out_dir/data"
rendered="$out_dir/prometheus.yml"
sed -e "s|^\([[:space:]]*- targets:\).*# SHOAL_TARGETS\$|\1 [$targets]|" \
    -e "s|^\([[:space:]]*- \)rules/\*\.yml\$|\1$here/rules/*.yml|" \
    "$here/prometheus.yml" > "$rendered"
grep -q "$here/rules/" "$rendered" || { echo "run-prometheus.sh: could not render rule_files into $rendered" >&2; exit 1; }

echo "run-prometheus.sh: scraping [$targets]; UI and API at http://127.0.0.1:$port/" >&2
exec prometheus \
    --config.file="$rendered" \
    --storage.tsdb.path="$out_dir/data" \
    --web.listen-address="127.0.0.1:$port" \
    --web.enable-lifecycle \
    --log.level=warn
