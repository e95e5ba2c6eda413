#!/usr/bin/env bash
# Property-based API test: schemathesis (from PyPI) generates requests for every operation
# of /openapi.json, with a service token, against the real binary on a temporary root, and
# fails on any 5xx or any answer the document does not describe (status, content type,
# headers, body schema), plus its auth and method checks.
#
#   tests/schemathesis.sh [--release] [--max-examples N] [--seed S] [extra schemathesis args]
#
# Installs schemathesis into target/schemathesis-venv when missing (SCHEMATHESIS_VENV
# overrides), builds the binary (debug unless --release; UPLOAD_SERVER_BIN skips the build),
# and stops after SCHEMATHESIS_TIMEOUT seconds (default 600) whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
examples=25
extra=()
while (($# > 0)); do
    case "$1" in
    --release) profile=release ;;
    --max-examples) examples=$2; shift ;;
    *) extra+=("$1") ;;
    esac
    shift
done

venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if [[ ! -x $venv/bin/schemathesis ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis>=4,<5'
fi
"$venv/bin/schemathesis" --version

if [[ -n ${UPLOAD_SERVER_BIN:-} ]]; then
    bin=$UPLOAD_SERVER_BIN
else
    if [[ $profile == release ]]; then
        cargo build --release --bin upload-server
    else
        cargo build --bin upload-server
    fi
    bin=${CARGO_TARGET_DIR:-target}/$profile/upload-server
fi

work=$(mktemp -d)
server_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Keys for the JWT routes (token minting, JWKS), secrets made for this run only.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/jwt-private.pem" 2>/dev/null
openssl pkey -in "$work/jwt-private.pem" -pubout -out "$work/jwt-public.pem"
token=$(openssl rand -hex 16)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port

mkdir "$work/root"
env -i PATH="$PATH" \
    UPLOAD_ROOT="$work/root" PORT="$port" BIND_HOST=127.0.0.1 PUBLIC_BASE_URL="$base" \
    AUTH_SERVICE_TOKEN="$token" UPLOAD_SIGNING_KEY="$(openssl rand -hex 16)" \
    JWT_PRIVATE_KEY_PATH="$work/jwt-private.pem" JWT_PUBLIC_KEY_PATH="$work/jwt-public.pem" \
    MAX_BODY_MB=64 PER_USER_QUOTA_GB=1 \
    "$bin" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "$base/healthz" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
    sleep 0.1
done

# Every check but positive_data_acceptance: the server enforces rules the document cannot
# state in a schema (a service caller must name a user, a key must be one of that user's
# stored files, ids are single safe path segments), so schema-valid random values are
# rightly refused with 400/404 and that check would only report those rules.
status=0
here=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$here" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    timeout "${SCHEMATHESIS_TIMEOUT:-600}" "$venv/bin/schemathesis" \
    --config-file "$here/schemathesis.toml" run "$base/openapi.json" \
    --header "X-Service-Token: $token" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$examples" \
    --request-timeout 30 \
    --suppress-health-check too_slow \
    "${extra[@]}" || status=$?

# An internal error is logged even when its answer looked fine to the checks.
if grep -q 'ERROR' "$work/server.log"; then
    echo "--- server errors:" >&2
    grep 'ERROR' "$work/server.log" | head -20 >&2
    ((status != 0)) || status=1
fi
exit "$status"
