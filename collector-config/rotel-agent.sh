#!/bin/sh
# simvue-otel — start rotel as a node agent forwarding OTLP to a `simvue-otel bridge`.
#
#   SIMVUE_OTEL_BRIDGE_TOKEN=<token> collector-config/rotel-agent.sh [rotel start flags...]
#
# Reads the settings of rotel-agent.env (next to this script, or the file named by
# SIMVUE_OTEL_ROTEL_ENV), adds the bridge's bearer token as rotel's exporter header, and runs
# `rotel-agent start` in the foreground (stop it with SIGTERM or Ctrl-C). Extra arguments are
# passed to `rotel-agent start`; flags beat the file, e.g.
#
#   rotel-agent.sh --otlp-exporter-endpoint http://bridge-host:4318
#
# The rotel binary comes with the `rotel` package from PyPI (rotel/rotel-agent inside it); the
# python that has it installed is found as $PYTHON (default python3), or name the binary
# itself in SIMVUE_OTEL_ROTEL_BIN.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
env_file=${SIMVUE_OTEL_ROTEL_ENV:-$here/rotel-agent.env}

# KEY=VALUE lines, comments and blank lines: valid shell as well as an EnvironmentFile.
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a

if [ -z "${SIMVUE_OTEL_BRIDGE_TOKEN:-}" ]; then
    echo "rotel-agent.sh: set SIMVUE_OTEL_BRIDGE_TOKEN to the bridge's bearer token" >&2
    exit 2
fi
case $SIMVUE_OTEL_BRIDGE_TOKEN in
    *,*) echo "rotel-agent.sh: rotel cannot send a token that contains a comma" >&2; exit 2 ;;
esac
ROTEL_OTLP_EXPORTER_CUSTOM_HEADERS="Authorization=Bearer $SIMVUE_OTEL_BRIDGE_TOKEN"
export ROTEL_OTLP_EXPORTER_CUSTOM_HEADERS

bin=${SIMVUE_OTEL_ROTEL_BIN:-}
if [ -z "$bin" ]; then
    bin=$("${PYTHON:-python3}" -c \
        'import pathlib, rotel; print(pathlib.Path(rotel.__file__).parent / "rotel-agent")')
fi
exec "$bin" start "$@"
