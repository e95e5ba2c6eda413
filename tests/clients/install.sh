#!/usr/bin/env bash
# Installs the third-party tus clients that tests/api/tus_clients.rs drives, each skipped when
# already there: tus-js-client (`npm ci` here, from the committed package-lock.json) and
# tuspy from PyPI in the virtualenv target/tuspy-venv (TUSPY_VENV overrides; the tests read
# TUSPY_PYTHON for another interpreter).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# npm ci empties node_modules first: run it only when the lockfile differs from the one
# installed last time (kept beside the packages as a stamp).
stamp=$here/node_modules/.installed-package-lock.json
if ! cmp -s "$here/package-lock.json" "$stamp"; then
    (cd "$here" && npm ci --no-audit --no-fund)
    cp "$here/package-lock.json" "$stamp"
fi

tuspy_version=1.1.0
venv=${TUSPY_VENV:-$repo/target/tuspy-venv}
check="import importlib.metadata as m, tusclient; assert m.version('tuspy') == '$tuspy_version'"
if ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "tuspy==$tuspy_version"
    "$venv/bin/python" -c "$check"
fi
