#!/usr/bin/env bash
# deploy.sh --dry-run, branch by branch, without root or systemd: every path deploy.sh
# touches is moved into a temporary folder (DEPLOY_* variables), and each case checks the
# exit code, what the output says would change, and that nothing was written.
# Then, as root only (CI), real runs against stand-ins for systemctl, journalctl, nginx,
# certbot, curl, useradd and chown: the new env file (0600) and the stop, the install, the
# env file handed to the service user, no restart when nothing changed, a reload (dry and
# real) when only secrets changed and a restart when other settings did, and the automatic
# rollback when the new binary does not become healthy.
# Run: tests/deploy_dry_run.sh   (from anywhere; .ci/run runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
DEPLOY=$PWD/deploy.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DEPLOY_PREFIX=$work/opt/upload-server
export DEPLOY_ENV_FILE=$work/etc/stream-line/upload.env
export DEPLOY_UNIT=$work/systemd/upload-server.service
export DEPLOY_NGINX_DIR=$work/nginx
export DEPLOY_LETSENCRYPT_DIR=$work/letsencrypt
export DEPLOY_ACME_ROOT=$work/acme
mkdir -p "$(dirname "$DEPLOY_ENV_FILE")"

failures=0
out=""
code=0
fail() {
    printf 'FAIL %s: %s\n--- output ---\n%s\n--------------\n' "$case_name" "$*" "$out" >&2
    failures=$((failures + 1))
}
# Runs deploy.sh with the arguments; keeps its output and exit code; checks it wrote nothing.
deploy() {
    local before after
    before=$(find "$work" -printf '%p %s %T@ %m\n' | sort)
    set +e
    out=$(bash "$DEPLOY" "$@" 2>&1)
    code=$?
    set -e
    after=$(find "$work" -printf '%p %s %T@ %m\n' | sort)
    [ "$before" = "$after" ] || fail "--dry-run changed files: $(diff <(echo "$before") <(echo "$after") || true)"
}
expect_code() { [ "$code" = "$1" ] || fail "exit code $code, expected $1"; }
expect_out() { grep -qF -- "$1" <<<"$out" || fail "output lacks: $1"; }
expect_no_out() { if grep -qF -- "$1" <<<"$out"; then fail "output has: $1"; fi; }

old_env() {
    # What the old service ran on: no token, no key, no public URL.
    printf 'PORT=5070\nBIND_HOST=127.0.0.1\nUPLOAD_ROOT=%s/data\nMAX_BODY_MB=5120\n' "$work" >"$DEPLOY_ENV_FILE"
    chmod 0600 "$DEPLOY_ENV_FILE"
}
full_env() {
    old_env
    printf 'AUTH_SERVICE_TOKEN=abc\nUPLOAD_SIGNING_KEY=def\nPUBLIC_BASE_URL=https://files.example.org\n' >>"$DEPLOY_ENV_FILE"
}

case_name="no env file, --domain: a new one would be written, then stop"
rm -f "$DEPLOY_ENV_FILE"
deploy --dry-run --binary /bin/true --domain files.example.org
expect_code 3
expect_out "would write $DEPLOY_ENV_FILE"
expect_out "PUBLIC_BASE_URL=https://files.example.org"
expect_out "mode 0600"
expect_out "a real run stops there (exit 3)"
expect_no_out "==> binary"

case_name="no env file, no --domain: PUBLIC_BASE_URL named as missing"
deploy --dry-run --binary /bin/true
expect_code 3
expect_out "PUBLIC_BASE_URL is not set"

case_name="old-style env file: refused"
old_env
deploy --dry-run --binary /bin/true --domain files.example.org
expect_code 4
expect_out "refusing to switch over"
expect_out "AUTH_SERVICE_TOKEN UPLOAD_SIGNING_KEY PUBLIC_BASE_URL"
expect_out "--accept-new-secrets"
expect_no_out "==> binary"
expect_no_out "systemctl restart"

case_name="old-style env file, one secret set: the other two named"
printf 'AUTH_SERVICE_TOKEN=abc\n' >>"$DEPLOY_ENV_FILE"
deploy --dry-run --binary /bin/true --domain files.example.org
expect_code 4
expect_out "does not set UPLOAD_SIGNING_KEY PUBLIC_BASE_URL."

case_name="old-style env file, --accept-new-secrets: goes ahead"
old_env
deploy --dry-run --binary /bin/true --domain files.example.org --accept-new-secrets
expect_code 0
expect_out "accepted with --accept-new-secrets: AUTH_SERVICE_TOKEN UPLOAD_SIGNING_KEY PUBLIC_BASE_URL"
expect_out "check --env-file $DEPLOY_ENV_FILE --accept-new-secrets"
expect_out "would run: install -m 0755 /bin/true $DEPLOY_PREFIX/bin/upload-server"
expect_out "would run: systemctl restart upload-server.service"

case_name="old-style env file, --accept-new-secrets, no domain anywhere: stops"
deploy --dry-run --binary /bin/true --accept-new-secrets
expect_code 2
expect_out "no domain"

case_name="complete env file: every step, the domain from PUBLIC_BASE_URL"
full_env
deploy --dry-run --binary /bin/true
expect_code 0
expect_out "AUTH_SERVICE_TOKEN, UPLOAD_SIGNING_KEY and PUBLIC_BASE_URL are set"
expect_out "$DEPLOY_UNIT"
expect_out "$DEPLOY_NGINX_DIR/sites-available/file-server"
expect_out "$DEPLOY_NGINX_DIR/upload-server-admin-allow.conf"
expect_out "$DEPLOY_LETSENCRYPT_DIR/renewal-hooks/deploy/reload-nginx.sh"
expect_out "would check that http://files.example.org/.well-known/acme-challenge/ reaches this nginx"
expect_out "certbot certonly --webroot -w $DEPLOY_ACME_ROOT -d files.example.org"
expect_out "restart needed: binary, unit, env file"
expect_no_out "put $DEPLOY_PREFIX/bin/upload-server.previous back"
# The server rereads the env file on SIGHUP as the service user: it gets the file.
if ! id -u uploadsvc >/dev/null 2>&1; then
    expect_out "would run: useradd --system"
fi
expect_out "would run: chown uploadsvc: $DEPLOY_ENV_FILE"
expect_no_out "systemctl reload upload-server"

case_name="--skip-domain-check: certbot asked directly"
deploy --dry-run --binary /bin/true --skip-domain-check
expect_code 0
expect_out "domain check skipped"
expect_no_out "would check that http://"

case_name="--domain differing from PUBLIC_BASE_URL: the env file is not changed"
deploy --dry-run --binary /bin/true --domain other.example.org
expect_code 0
expect_out "PUBLIC_BASE_URL names files.example.org, not other.example.org"

case_name="env file readable by others: made 0600"
chmod 0644 "$DEPLOY_ENV_FILE"
deploy --dry-run --binary /bin/true
expect_code 0
expect_out "has mode 644"
expect_out "would run: chmod 0600 $DEPLOY_ENV_FILE"
chmod 0600 "$DEPLOY_ENV_FILE"

case_name="an installed binary: kept as .previous, rollback planned"
mkdir -p "$DEPLOY_PREFIX/bin"
cp /bin/false "$DEPLOY_PREFIX/bin/upload-server"
deploy --dry-run --binary /bin/true
expect_code 0
expect_out "would run: cp -p $DEPLOY_PREFIX/bin/upload-server $DEPLOY_PREFIX/bin/upload-server.previous"
expect_out "put $DEPLOY_PREFIX/bin/upload-server.previous back and restart"

case_name="the same binary: not installed again"
cp /bin/true "$DEPLOY_PREFIX/bin/upload-server"
deploy --dry-run --binary /bin/true
expect_code 0
expect_out "$DEPLOY_PREFIX/bin/upload-server is up to date"
expect_no_out "upload-server.previous"

case_name="--rollback without a previous binary: refused"
deploy --dry-run --rollback
expect_code 1
expect_out "no previous binary"

case_name="--rollback: the previous binary back, restart, health"
cp /bin/false "$DEPLOY_PREFIX/bin/upload-server.previous"
deploy --dry-run --rollback
expect_code 0
expect_out "would run: install -m 0755 $DEPLOY_PREFIX/bin/upload-server.previous $DEPLOY_PREFIX/bin/upload-server"
expect_out "would run: systemctl restart upload-server.service"
expect_out "would wait up to 30 s for http://127.0.0.1:5070/healthz"
rm -rf "$DEPLOY_PREFIX"

case_name="prerequisites: each missing tool named"
deploy --dry-run --binary /bin/true
for tool in nginx curl systemctl certbot; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        expect_out "missing prerequisites:"
        grep -q "missing prerequisites:.*$tool" <<<"$out" || fail "$tool is missing and not named"
    fi
done

case_name="usage errors"
deploy --dry-run --domain https://files.example.org
expect_code 2
deploy --dry-run --no-such-flag
expect_code 2

case_name="the unit waits as long as the server drains"
drain=$(grep -oE 'DRAIN: Duration = Duration::from_secs\([0-9]+\)' src/main.rs | grep -oE '[0-9]+')
stop=$(grep -oE '^TimeoutStopSec=[0-9]+' upload-server.service | grep -oE '[0-9]+')
out="DRAIN=$drain TimeoutStopSec=$stop"
if [ -z "$drain" ] || [ -z "$stop" ] || [ "$stop" -le "$drain" ] || [ "$stop" -gt $((drain + 15)) ]; then
    fail "TimeoutStopSec must be a little above the drain"
fi

# The multi-instance files (deploy/, README "Many instances"): installed by hand, so only
# checked here: they must not drift from the single-instance ones, and must parse.
case_name="the template unit is upload-server.service but for its env files"
unit_lines() { grep -vE '^[[:space:]]*(#|$)' "$1" | grep -vE '^(Description|EnvironmentFile)=' || true; }
out=$(diff <(unit_lines upload-server.service) <(unit_lines 'deploy/upload-server@.service') || true)
[ -z "$out" ] || fail "deploy/upload-server@.service differs from upload-server.service"
out=$(grep '^EnvironmentFile=' 'deploy/upload-server@.service')
[ "$out" = "$(printf 'EnvironmentFile=/etc/stream-line/upload.env\nEnvironmentFile=/etc/upload-server/instance-%%i.env')" ] \
    || fail "the shared env file, then the instance's (required), are expected"

case_name="the multi-instance site keeps every line of nginx-file-server.conf"
# Each line of the single-instance site (comments aside) is in the multi-instance one, but
# the upstream's one server: same locations, limits, headers, timeouts and log format.
site_lines() { sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$1" | grep -v '^$' | sort -u; }
out=$(comm -23 <(site_lines nginx-file-server.conf) <(site_lines deploy/nginx-multi-instance.conf) \
    | grep -vxF 'server 127.0.0.1:5070;' || true)
[ -z "$out" ] || fail "lines of nginx-file-server.conf missing from deploy/nginx-multi-instance.conf"

case_name="nginx -t accepts the multi-instance site"
if command -v nginx >/dev/null 2>&1; then
    t=$work/nginx-multi
    mkdir -p "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=files.example.org \
        -keyout "$t/privkey.pem" -out "$t/fullchain.pem" 2>/dev/null
    cp deploy/nginx-admin-allow.conf "$t/admin-allow.conf"
    sed -e "s|/var/log/nginx/|$t/|" -e "s|/etc/letsencrypt/live/file-server.example.com/|$t/|" \
        -e "s|/etc/nginx/upload-server-admin-allow.conf|$t/admin-allow.conf|" \
        deploy/nginx-multi-instance.conf >"$t/site.conf"
    sed "s|{dir}|$t|g" deploy/nginx-test.conf >"$t/nginx.conf"
    out=$(nginx -t -q -p "$t" -c "$t/nginx.conf" -e "$t/error.log" 2>&1) || fail "nginx -t failed"
    rm -rf "$t"
else
    echo "deploy_dry_run: nginx missing: deploy/nginx-multi-instance.conf not tested"
fi

# Real runs, with stand-ins. The "server" is healthy when the installed binary is the good
# one; systemctl records restarts and reports the service active after the first.
real_runs() {
    local fake=$work/fakebin good=$work/good-server bad=$work/bad-server
    local bin=$DEPLOY_PREFIX/bin/upload-server
    mkdir -p "$fake" "$work/data"
    printf '#!/bin/sh\n# good\nexit 0\n' >"$good"
    # The bad one passes the pre-flight check and then never answers.
    cat >"$bad" <<'BAD'
#!/bin/sh
# bad
[ "$1" = check ] && exit 0
exit 1
BAD
    chmod +x "$good" "$bad"
    cat >"$fake/systemctl" <<FAKE
#!/bin/sh
echo "systemctl \$*" >>"\${FAKE_CALLS:-$work/calls}"
case "\$1" in
    is-active) [ -e "$work/active" ] ;;
    restart) touch "$work/active" ;;
esac
FAKE
    # What the server logged since the reload, as the test sets it.
    cat >"$fake/journalctl" <<FAKE
#!/bin/sh
echo "journalctl \$*" >>"\${FAKE_CALLS:-$work/calls}"
cat "$work/journal" 2>/dev/null || true
FAKE
    cat >"$fake/curl" <<FAKE
#!/bin/sh
echo "curl \$*" >>"\${FAKE_CALLS:-$work/calls}"
cmp -s "$bin" "$good"
FAKE
    for tool in nginx certbot useradd chown; do
        cat >"$fake/$tool" <<FAKE
#!/bin/sh
echo "$tool \$*" >>"\${FAKE_CALLS:-$work/calls}"
FAKE
    done
    chmod +x "$fake"/*
    # nginx -t (the real one) on the site deploy.sh installed, its log moved into $work.
    nginx_accepts_site() {
        local t=$work/nginx-t
        command -v nginx >/dev/null 2>&1 || { echo "nginx missing: site not tested ($1)"; return 0; }
        rm -rf "$t"
        mkdir -p "$t"
        sed "s|/var/log/nginx/|$t/|" "$DEPLOY_NGINX_DIR/sites-available/file-server" >"$t/site.conf"
        sed "s|{dir}|$t|g" deploy/nginx-test.conf >"$t/nginx.conf"
        nginx -t -q -p "$t" -c "$t/nginx.conf" 2>"$t/err" || fail "nginx -t $1: $(cat "$t/err")"
    }
    real() {
        set +e
        out=$(PATH="$fake:$PATH" DEPLOY_HEALTH_WAIT=2 bash "$DEPLOY" "$@" 2>&1)
        code=$?
        set -e
    }
    # A dry run with the stand-ins (systemctl says whether the server runs), which then
    # record nothing: it writes nothing.
    dry() {
        local saved=$PATH
        PATH="$fake:$PATH"
        FAKE_CALLS=/dev/null deploy --dry-run "$@"
        PATH=$saved
    }
    set_env() {
        if grep -q "^$1=" "$DEPLOY_ENV_FILE"; then
            sed -i "s|^$1=.*|$1=$2|" "$DEPLOY_ENV_FILE"
        else
            printf '%s=%s\n' "$1" "$2" >>"$DEPLOY_ENV_FILE"
        fi
    }

    case_name="real: no env file: written 0600 with secrets and the URL, then stop"
    rm -f "$DEPLOY_ENV_FILE"
    real --binary "$good" --domain files.example.org
    expect_code 3
    [ "$(stat -c %a "$DEPLOY_ENV_FILE")" = 600 ] || fail "env file mode $(stat -c %a "$DEPLOY_ENV_FILE")"
    for var in AUTH_SERVICE_TOKEN UPLOAD_SIGNING_KEY; do
        grep -qE "^$var=[0-9a-f]{64}$" "$DEPLOY_ENV_FILE" || fail "no generated $var"
    done
    grep -qx 'PUBLIC_BASE_URL=https://files.example.org' "$DEPLOY_ENV_FILE" || fail "no PUBLIC_BASE_URL"
    [ ! -e "$bin" ] || fail "a binary was installed before the env file was reviewed"
    [ ! -e "$work/calls" ] || fail "commands ran: $(cat "$work/calls")"

    case_name="real: first deploy installs and restarts"
    sed -i "s|^UPLOAD_ROOT=.*|UPLOAD_ROOT=$work/data|" "$DEPLOY_ENV_FILE"
    real --binary "$good" --skip-domain-check
    expect_code 0
    expect_out "healthy"
    cmp -s "$bin" "$good" || fail "the binary is not installed"
    grep -q "systemctl restart upload-server.service" "$work/calls" || fail "no restart"
    grep -qx "chown uploadsvc: $DEPLOY_ENV_FILE" "$work/calls" || fail "the env file not given to uploadsvc"
    [ "$(stat -c %a "$DEPLOY_ENV_FILE")" = 600 ] || fail "env file mode $(stat -c %a "$DEPLOY_ENV_FILE")"
    grep -qx "Environment=UPLOAD_ENV_FILE=$DEPLOY_ENV_FILE" "$DEPLOY_UNIT" \
        || fail "the unit does not name the env file for SIGHUP: $(grep UPLOAD_ENV_FILE "$DEPLOY_UNIT")"
    [ -e "$DEPLOY_NGINX_DIR/upload-server-admin-allow.conf" ] || fail "no admin allow file"
    [ -x "$DEPLOY_LETSENCRYPT_DIR/renewal-hooks/deploy/reload-nginx.sh" ] || fail "no certbot hook"
    nginx_accepts_site "before a certificate exists (port 80 only)"
    if grep -q "listen 443" "$DEPLOY_NGINX_DIR/sites-available/file-server"; then
        fail "the site listens on 443 without a certificate"
    fi
    # With a certificate (self-signed here), the HTTPS server block is installed too.
    local live=$DEPLOY_LETSENCRYPT_DIR/live/files.example.org
    mkdir -p "$live"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=files.example.org \
        -keyout "$live/privkey.pem" -out "$live/fullchain.pem" 2>/dev/null
    real --binary "$good"
    expect_code 0
    expect_out "certificate for files.example.org present"
    nginx_accepts_site "with a certificate"

    case_name="real: nothing changed: not restarted"
    : >"$work/calls"
    real --binary "$good" --skip-domain-check
    expect_code 0
    expect_out "not restarted"
    if grep -q "restart" "$work/calls"; then fail "restarted"; fi

    case_name="dry: only a service token changed: a reload"
    set_env AUTH_SERVICE_TOKEN "new-token,abc"
    dry --binary "$good" --skip-domain-check
    expect_code 0
    expect_out "reload needed: the env file changed only in settings SIGHUP rereads"
    expect_out "would run: systemctl reload upload-server.service"
    expect_out "would record the env file's checksums"
    expect_no_out "systemctl restart"

    case_name="real: only secrets changed: reloaded, not restarted"
    set_env UPLOAD_SIGNING_KEY_PREVIOUS def
    set_env UPLOAD_SIGNING_KEY "new-key"
    echo '# a comment changes nothing' >>"$DEPLOY_ENV_FILE"
    echo "reloaded the secrets: service tokens, signing keys, JWT keys and settings" >"$work/journal"
    : >"$work/calls"
    real --binary "$good" --skip-domain-check
    expect_code 0
    expect_out "the server reloaded its secrets"
    expect_out "healthy"
    grep -q "systemctl reload upload-server.service" "$work/calls" || fail "no reload"
    if grep -q "restart" "$work/calls"; then fail "restarted"; fi
    real --binary "$good" --skip-domain-check
    expect_out "not restarted"

    case_name="real: a reload the server refuses: stops, no restart, tried again next time"
    set_env AUTH_JWT_AUDIENCE files
    echo '{"level":"ERROR","fields":{"message":"reload failed: the secrets in use are kept","error":"JWT_PUBLIC_KEY_PATH: cannot read"}}' >"$work/journal"
    : >"$work/calls"
    real --binary "$good" --skip-domain-check
    expect_code 1
    expect_out "refused the new env file and kept its secrets"
    expect_out "JWT_PUBLIC_KEY_PATH: cannot read"
    if grep -q "restart" "$work/calls"; then fail "restarted"; fi
    echo "reloaded the secrets" >"$work/journal"
    dry --binary "$good" --skip-domain-check
    expect_out "would run: systemctl reload upload-server.service"

    case_name="dry: a secret and another setting changed: a restart"
    set_env PER_USER_QUOTA_GB 1
    dry --binary "$good" --skip-domain-check
    expect_code 0
    expect_out "restart needed: env file (settings other than the secrets and JWT keys)"
    expect_out "would run: systemctl restart upload-server.service"
    expect_no_out "systemctl reload upload-server"

    case_name="real: another setting changed: restarted"
    : >"$work/calls"
    real --binary "$good" --skip-domain-check
    expect_code 0
    grep -q "systemctl restart upload-server.service" "$work/calls" || fail "no restart"
    if grep -q "systemctl reload" "$work/calls"; then fail "reloaded"; fi

    case_name="dry: a record from before (one checksum): a restart"
    sed -i 2d "$DEPLOY_PREFIX/deployed-env.sha256"
    set_env AUTH_SERVICE_TOKEN "newer-token"
    dry --binary "$good" --skip-domain-check
    expect_out "restart needed: env file (no record of the settings deployed before)"
    expect_no_out "systemctl reload upload-server"

    case_name="dry: the server not running: a restart, not a reload"
    real --binary "$good" --skip-domain-check
    set_env AUTH_SERVICE_TOKEN "newest-token"
    rm "$work/active"
    dry --binary "$good" --skip-domain-check
    expect_out "restart needed: env file, server not running"
    expect_no_out "env file ("
    expect_no_out "systemctl reload upload-server"
    real --binary "$good" --skip-domain-check
    expect_code 0

    case_name="real: a new binary that does not become healthy is rolled back"
    real --binary "$bad" --skip-domain-check
    expect_code 1
    expect_out "rolled back to the previous binary"
    cmp -s "$bin" "$good" || fail "the good binary is not back"
    cmp -s "$bin.rolled-back" "$bad" || fail "the bad binary is not kept aside"

    case_name="real: --rollback by hand"
    cp "$bad" "$bin.previous"
    real --rollback
    expect_code 1
    expect_out "did not become healthy either"
    cp "$good" "$bin.previous"
    real --rollback
    expect_code 0
    expect_out "healthy on the previous binary"
}
if [ "$(id -u)" = 0 ]; then
    real_runs
else
    echo "deploy_dry_run: not root: the real runs with stand-ins are skipped"
fi

if [ "$failures" -gt 0 ]; then
    echo "deploy_dry_run: $failures failures" >&2
    exit 1
fi
echo "deploy_dry_run: all cases passed"
