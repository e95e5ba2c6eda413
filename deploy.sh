#!/usr/bin/env bash
# Deploys the Stream-Line upload server on this host: binary (the previous one kept), service
# user, folders, systemd unit, env file (written once, never overwritten), nginx site, TLS
# certificate and its renewal hook, restart or reload, health, rollback.
# Idempotent: a second run changes nothing that is already right. The server is restarted
# when its binary or unit changed, or its env file changed beyond the settings SIGHUP
# rereads; when only those changed (service tokens, signing keys, JWT keys), it is
# reloaded (systemctl reload: connections stay open); otherwise it is left running.
#
# Usage: sudo ./deploy.sh [--dry-run] [--binary PATH] [--domain NAME] [--email ADDR]
#                         [--accept-new-secrets] [--skip-domain-check]
#        sudo ./deploy.sh --rollback [--dry-run]
#   --dry-run             print what would change, change nothing (no root needed)
#   --binary PATH         install this prebuilt binary instead of building one
#   --domain NAME         public host name; a new env file gets PUBLIC_BASE_URL=https://NAME
#                         (default: PUBLIC_BASE_URL's host)
#   --email ADDR          e-mail for certbot (without it, certbot registers without one)
#   --accept-new-secrets  switch over although the env file lacks AUTH_SERVICE_TOKEN,
#                         UPLOAD_SIGNING_KEY or PUBLIC_BASE_URL (see README, "Upgrading")
#   --skip-domain-check   ask certbot for a certificate without first checking that the
#                         domain reaches this host's nginx
#   --rollback            put the previous binary back, restart, wait for /healthz
# Exit: 0 done; 1 failed (a failed start is rolled back; a refused reload leaves the server
# on the secrets it had); 2 bad usage; 3 a new env file was written: edit it, then run
# again; 4 the env file lacks secrets the old service made up.
# Paths can be moved for tests: DEPLOY_PREFIX, DEPLOY_ENV_FILE, DEPLOY_UNIT,
# DEPLOY_NGINX_DIR, DEPLOY_LETSENCRYPT_DIR, DEPLOY_ACME_ROOT; DEPLOY_HEALTH_WAIT (seconds, 30).
set -euo pipefail

DRY_RUN=0
BINARY=""
DOMAIN=""
EMAIL=""
ACCEPT_NEW_SECRETS=0
SKIP_DOMAIN_CHECK=0
ROLLBACK=0
SERVICE_USER=uploadsvc
SERVICE=upload-server.service
PREFIX=${DEPLOY_PREFIX:-/opt/upload-server}
ENV_FILE=${DEPLOY_ENV_FILE:-/etc/stream-line/upload.env}
ENV_DIR=$(dirname "$ENV_FILE")
UNIT=${DEPLOY_UNIT:-/etc/systemd/system/$SERVICE}
NGINX_DIR=${DEPLOY_NGINX_DIR:-/etc/nginx}
SITE_AVAILABLE=$NGINX_DIR/sites-available/file-server
SITE_ENABLED=$NGINX_DIR/sites-enabled/file-server
ADMIN_ALLOW=$NGINX_DIR/upload-server-admin-allow.conf
LETSENCRYPT=${DEPLOY_LETSENCRYPT_DIR:-/etc/letsencrypt}
RENEW_HOOK=$LETSENCRYPT/renewal-hooks/deploy/reload-nginx.sh
ACME_ROOT=${DEPLOY_ACME_ROOT:-/var/www/letsencrypt}
BIN=$PREFIX/bin/upload-server
PREVIOUS=$BIN.previous
# At the last successful deploy: the env file's checksum, then the checksum of its settings
# other than the reloadable ones (env_restart_sum). Holds no secret.
DEPLOYED_ENV=$PREFIX/deployed-env.sha256
# How long the server may take to answer /healthz after a start.
HEALTH_WAIT=${DEPLOY_HEALTH_WAIT:-30}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The settings the old Python service made up when unset (README, "Upgrading").
UPGRADE_SETTINGS=(AUTH_SERVICE_TOKEN UPLOAD_SIGNING_KEY PUBLIC_BASE_URL)
# The settings SIGHUP rereads (src/secrets.rs; src/startup.rs, reload_secrets): service
# tokens, signing keys, JWT keys and settings. A change of any other needs a restart.
RELOADABLE_SETTINGS=(AUTH_SERVICE_TOKEN UPLOAD_SIGNING_KEY UPLOAD_SIGNING_KEY_PREVIOUS
    AUTH_JWT_PUBLIC_KEY_BASE64 JWT_PUBLIC_KEY_PATH JWT_PRIVATE_KEY_PATH AUTH_JWT_ALG
    AUTH_JWT_ISSUER AUTH_JWT_AUDIENCE AUTH_JWKS_URL AUTH_JWKS_MIN_REFETCH_SECS JWKS_KID)

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --binary) BINARY=${2:?--binary needs a path}; shift ;;
        --domain) DOMAIN=${2:?--domain needs a name}; shift ;;
        --email) EMAIL=${2:?--email needs an address}; shift ;;
        --accept-new-secrets) ACCEPT_NEW_SECRETS=1 ;;
        --skip-domain-check) SKIP_DOMAIN_CHECK=1 ;;
        --rollback) ROLLBACK=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "deploy.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$DOMAIN" in
    */*|*:*|*' '*) echo "deploy.sh: --domain takes a host name such as files.example.com, not '$DOMAIN'" >&2; exit 2 ;;
esac

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    local code=$1
    shift
    printf 'deploy.sh: %s\n' "$*" >&2
    exit "$code"
}
# Runs a command, or prints it under --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '    [dry-run] would run: %s\n' "$*"
    else
        "$@"
    fi
}

# A value from the env file; empty when unset or commented out.
env_value() {
    local line
    line=$(grep -E "^[[:space:]]*$1=" "$ENV_FILE" 2>/dev/null | tail -n 1 || true)
    line=${line#*=}
    line=${line%\"}
    line=${line#\"}
    printf '%s\n' "$line"
}

# The checksum of the env file's lines that need a restart when they change: every line
# but blank ones, comments (# or ;, as the server reads them) and the reloadable settings.
env_restart_sum() {
    local names
    names=$(IFS='|'; printf '%s' "${RELOADABLE_SETTINGS[*]}")
    { grep -vE '^[[:space:]]*([#;]|$)' "$ENV_FILE" || true; } \
        | { grep -vE "^[[:space:]]*($names)[[:space:]]*=" || true; } \
        | sha256sum | cut -d' ' -f1
}

random_hex() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Writes a new env file from the template: fresh AUTH_SERVICE_TOKEN and UPLOAD_SIGNING_KEY,
# PUBLIC_BASE_URL from --domain; mode 0600 from the start (it holds secrets).
write_env_file() {
    local tmp
    install -d -m 0755 "$ENV_DIR"
    tmp=$(mktemp "$ENV_DIR/.upload.env.XXXXXX")
    chmod 0600 "$tmp"
    sed -e "s|^#AUTH_SERVICE_TOKEN=.*|AUTH_SERVICE_TOKEN=$(random_hex)|" \
        -e "s|^#UPLOAD_SIGNING_KEY=.*|UPLOAD_SIGNING_KEY=$(random_hex)|" \
        "$HERE/upload.env.template" >"$tmp"
    if [ -n "$DOMAIN" ]; then
        sed -i "s|^#PUBLIC_BASE_URL=.*|PUBLIC_BASE_URL=https://$DOMAIN|" "$tmp"
    fi
    mv "$tmp" "$ENV_FILE"
}

# The address /healthz answers on: a wildcard listener is asked on loopback.
health_url() {
    local host port
    host=$(env_value BIND_HOST)
    port=$(env_value PORT)
    case "${host:-127.0.0.1}" in
        0.0.0.0|'') host=127.0.0.1 ;;
        ::|'[::]') host='[::1]' ;;
        *:*) host="[${host#[}"; host="${host%]}]" ;;
    esac
    printf 'http://%s:%s/healthz\n' "$host" "${port:-5070}"
}

wait_healthy() {
    local url
    url=$(health_url)
    for _ in $(seq 1 "$HEALTH_WAIT"); do
        if curl -fsS --max-time 2 "$url" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}

# systemctl restart: SIGTERM, requests in flight get the server's 30 s drain (TimeoutStopSec
# in the unit is a little longer), then the new process starts.
restart_and_wait() {
    note "restarting: uploads in flight get up to 30 s to finish"
    run systemctl restart "$SERVICE"
    if [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] would wait up to ${HEALTH_WAIT} s for $(health_url)"
        return 0
    fi
    wait_healthy
}

# systemctl reload: SIGHUP, the server rereads the env file's secrets and keeps every
# connection open. It logs "reloaded the secrets", or "reload failed" and keeps the ones in
# use (then a restart would not start either: it stops here). Returns 1 then, 2 when
# systemctl itself failed (a restart is the way then), 3 when /healthz does not answer.
reload_and_wait() {
    local since log
    since=$(date +%s)
    note "reloading: the server rereads its secrets, connections stay open"
    if ! run systemctl reload "$SERVICE"; then
        return 2
    fi
    if [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] would look for \"reloaded the secrets\" in journalctl -u $SERVICE, and wait up to ${HEALTH_WAIT} s for $(health_url)"
        return 0
    fi
    if command -v journalctl >/dev/null 2>&1; then
        log=""
        for _ in $(seq 1 10); do
            log=$(journalctl -u "$SERVICE" --since "@$since" -o cat 2>/dev/null || true)
            case "$log" in
                *"reload failed"*)
                    printf 'deploy.sh: the server refused the new env file and kept its secrets:\n%s\n' \
                        "$(grep -F "reload failed" <<<"$log")" >&2
                    return 1
                    ;;
                *"reloaded the secrets"*)
                    note "the server reloaded its secrets"
                    break
                    ;;
            esac
            sleep 1
        done
        case "$log" in
            *"reloaded the secrets"*) ;;
            *) note "the journal does not show the reload yet: look at journalctl -u $SERVICE" ;;
        esac
    fi
    wait_healthy || return 3
}

rollback() {
    step "rollback to the previous binary"
    [ -e "$PREVIOUS" ] || die 1 "no previous binary at $PREVIOUS: nothing to roll back to"
    [ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || die 1 "run as root (or with --dry-run)"
    run cp -p "$BIN" "$BIN.rolled-back"
    run install -m 0755 "$PREVIOUS" "$BIN"
    if restart_and_wait; then
        note "healthy on the previous binary (the one rolled back from: $BIN.rolled-back)"
    else
        die 1 "the previous binary did not become healthy either; see journalctl -u upload-server"
    fi
}

if [ "$ROLLBACK" = 1 ]; then
    rollback
    exit 0
fi

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die 1 "run as root (or with --dry-run)"
fi

step "prerequisites"
cert_present() { [ -e "$LETSENCRYPT/live/$1/fullchain.pem" ]; }
missing=()
for tool in nginx curl systemctl certbot; do
    if [ "$tool" = certbot ] && [ -n "$DOMAIN" ] && cert_present "$DOMAIN"; then
        continue
    fi
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
    msg="missing prerequisites: ${missing[*]} (Debian: apt-get install ${missing[*]/systemctl/systemd})"
    if [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] $msg: a real run stops here"
    else
        die 1 "$msg"
    fi
else
    note "nginx, curl, systemctl and certbot found"
fi

step "env file"
if [ ! -e "$ENV_FILE" ]; then
    what="$ENV_FILE from upload.env.template (mode 0600) with a new AUTH_SERVICE_TOKEN and UPLOAD_SIGNING_KEY"
    [ -z "$DOMAIN" ] || what="$what and PUBLIC_BASE_URL=https://$DOMAIN"
    if [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] would write $what"
    else
        write_env_file
        note "wrote $what"
    fi
    [ -n "$DOMAIN" ] || note "PUBLIC_BASE_URL is not set: give --domain, or set it in the file"
    if [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] a real run stops there (exit 3): review the file, then run deploy.sh again"
    else
        note "nothing else was changed: review $ENV_FILE (JWT keys, quotas), then run deploy.sh again"
    fi
    exit 3
fi
mode=$(stat -c '%a' "$ENV_FILE")
if [ "$mode" != 600 ]; then
    note "$ENV_FILE has mode $mode; it holds secrets"
    run chmod 0600 "$ENV_FILE"
fi
unset_settings=()
for var in "${UPGRADE_SETTINGS[@]}"; do
    [ -n "$(env_value "$var")" ] || unset_settings+=("$var")
done
if ((${#unset_settings[@]} > 0)); then
    if [ "$ACCEPT_NEW_SECRETS" = 1 ]; then
        note "not set, accepted with --accept-new-secrets: ${unset_settings[*]}"
    else
        {
            echo "deploy.sh: refusing to switch over: $ENV_FILE does not set ${unset_settings[*]}."
            echo "  The old Python service made these up when unset (a built-in service token, a public"
            echo "  signing key, a URL from its own address); this server does not, so service clients"
            echo "  would get 401 and signed URLs already handed out would stop verifying."
            echo "  Set them (README.md, \"Upgrading from the Python service\"; check with"
            echo "  upload-server check --env-file $ENV_FILE), or run again with --accept-new-secrets."
        } >&2
        exit 4
    fi
else
    note "AUTH_SERVICE_TOKEN, UPLOAD_SIGNING_KEY and PUBLIC_BASE_URL are set"
fi
base=$(env_value PUBLIC_BASE_URL)
base_host=${base#*://}
base_host=${base_host%%/*}
base_host=${base_host%%:*}
if [ -z "$DOMAIN" ]; then
    DOMAIN=$base_host
    [ -n "$DOMAIN" ] || die 2 "no domain: give --domain NAME or set PUBLIC_BASE_URL in $ENV_FILE"
elif [ -n "$base_host" ] && [ "$base_host" != "$DOMAIN" ]; then
    note "warning: PUBLIC_BASE_URL names $base_host, not $DOMAIN; $ENV_FILE is left as it is"
fi
UPLOAD_ROOT=$(env_value UPLOAD_ROOT)
UPLOAD_ROOT=${UPLOAD_ROOT:-/data/uploads}
PORT=$(env_value PORT)
PORT=${PORT:-5070}
BIND_HOST=$(env_value BIND_HOST)
BIND_HOST=${BIND_HOST:-127.0.0.1}
MAX_BODY_MB=$(env_value MAX_BODY_MB)
MAX_BODY_MB=${MAX_BODY_MB:-5120}

step "binary"
check_args=(check --env-file "$ENV_FILE")
[ "$ACCEPT_NEW_SECRETS" = 0 ] || check_args+=(--accept-new-secrets)
if [ -n "$BINARY" ]; then
    [ "$DRY_RUN" = 1 ] || [ -x "$BINARY" ] || die 1 "$BINARY is not an executable"
    built=$BINARY
else
    run cargo build --release --locked --manifest-path "$HERE/Cargo.toml"
    built=$HERE/target/release/upload-server
fi
# The pre-flight check of the env file and the data root, by the binary about to run.
if [ "$DRY_RUN" = 1 ]; then
    note "[dry-run] would run: $built ${check_args[*]} (and stop on a problem)"
elif ! "$built" "${check_args[@]}"; then
    die 1 "upload-server check found problems (above): nothing was switched"
fi
BINARY_CHANGED=0
if [ "$DRY_RUN" = 1 ] && [ -z "$BINARY" ]; then
    note "[dry-run] would install the build as $BIN if it differs, keeping the current one as $PREVIOUS"
elif ! cmp -s "$built" "$BIN"; then
    BINARY_CHANGED=1
    run install -d -m 0755 "$PREFIX/bin"
    if [ -e "$BIN" ]; then
        run cp -p "$BIN" "$PREVIOUS"
    fi
    run install -m 0755 "$built" "$BIN"
else
    note "$BIN is up to date"
fi
if ! cmp -s "$HERE/README.md" "$PREFIX/README.md"; then
    run install -m 0644 "$HERE/README.md" "$PREFIX/README.md"
fi

step "service user and folders"
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --home-dir "$UPLOAD_ROOT" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
if [ ! -d "$UPLOAD_ROOT" ]; then
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$UPLOAD_ROOT"
else
    note "$UPLOAD_ROOT exists: owner and mode left as they are"
fi
# The server reads the env file itself on SIGHUP (secret rotation): the service user owns
# it, mode 0600 (made so above), nobody else reads it. (The user exists by now, or a dry
# run said it would be made.)
if [ "$(stat -c '%U' "$ENV_FILE" 2>/dev/null)" != "$SERVICE_USER" ]; then
    run chown "$SERVICE_USER:" "$ENV_FILE"
else
    note "$ENV_FILE is owned by $SERVICE_USER"
fi

step "systemd unit"
unit_tmp=$(mktemp)
site_tmp=$(mktemp)
trap 'rm -f "$unit_tmp" "$site_tmp" "$site_tmp.http"' EXIT
sed -e "s|^ReadWritePaths=.*|ReadWritePaths=$UPLOAD_ROOT|" \
    -e "s|^EnvironmentFile=.*|EnvironmentFile=$ENV_FILE|" \
    -e "s|^Environment=UPLOAD_ENV_FILE=.*|Environment=UPLOAD_ENV_FILE=$ENV_FILE|" \
    -e "s|^ExecStart=.*|ExecStart=$BIN|" \
    "$HERE/upload-server.service" >"$unit_tmp"
UNIT_CHANGED=0
if ! cmp -s "$unit_tmp" "$UNIT"; then
    UNIT_CHANGED=1
    [ -d "$(dirname "$UNIT")" ] || run install -d -m 0755 "$(dirname "$UNIT")"
    run install -m 0644 "$unit_tmp" "$UNIT"
    run systemctl daemon-reload
else
    note "$UNIT is up to date"
fi
run systemctl enable "$SERVICE"

step "nginx site"
sed -e "s|file-server.example.com|$DOMAIN|g" \
    -e "s|127.0.0.1:5070|$BIND_HOST:$PORT|" \
    -e "s|/data/uploads/storage/|${UPLOAD_ROOT%/}/storage/|" \
    -e "s|client_max_body_size [0-9]*m;|client_max_body_size ${MAX_BODY_MB}m;|" \
    -e "s|/etc/nginx/upload-server-admin-allow.conf|$ADMIN_ALLOW|" \
    -e "s|/etc/letsencrypt/|$LETSENCRYPT/|g" \
    -e "s|/var/www/letsencrypt|$ACME_ROOT|" \
    "$HERE/nginx-file-server.conf" >"$site_tmp"
if ! cert_present "$DOMAIN"; then
    # Until a certificate exists, serve only port 80 (ACME and redirect) so nginx -t passes:
    # drop the whole server block that listens on 443.
    awk '/^server[ \t]*\{/ { inside = 1; block = ""; tls = 0 }
         inside { block = block $0 "\n"; if ($0 ~ /listen 443/) tls = 1
                  if ($0 ~ /^\}/) { inside = 0; if (!tls) printf "%s", block }
                  next }
         { print }' "$site_tmp" >"$site_tmp.http"
    cat "$site_tmp.http" >"$site_tmp"
fi
NGINX_CHANGED=0
if ! cmp -s "$site_tmp" "$SITE_AVAILABLE"; then
    NGINX_CHANGED=1
    run install -d -m 0755 "$(dirname "$SITE_AVAILABLE")" "$(dirname "$SITE_ENABLED")"
    run install -m 0644 "$site_tmp" "$SITE_AVAILABLE"
else
    note "$SITE_AVAILABLE is up to date"
fi
if [ ! -L "$SITE_ENABLED" ]; then
    NGINX_CHANGED=1
    run ln -sf "$SITE_AVAILABLE" "$SITE_ENABLED"
fi
if [ ! -e "$ADMIN_ALLOW" ]; then
    NGINX_CHANGED=1
    note "/metrics and the docs: loopback only until you edit $ADMIN_ALLOW"
    run install -m 0644 "$HERE/deploy/nginx-admin-allow.conf" "$ADMIN_ALLOW"
else
    note "$ADMIN_ALLOW exists: left as it is"
fi
[ -d "$ACME_ROOT" ] || run install -d -m 0755 "$ACME_ROOT"
if [ "$NGINX_CHANGED" = 1 ]; then
    run nginx -t
    run systemctl reload nginx
else
    note "nginx unchanged: not reloaded"
fi

step "TLS certificate"
# Renewals need nginx to reload to serve the new certificate.
if ! cmp -s "$HERE/deploy/certbot-reload-nginx.sh" "$RENEW_HOOK"; then
    run install -d -m 0755 "$(dirname "$RENEW_HOOK")"
    run install -m 0755 "$HERE/deploy/certbot-reload-nginx.sh" "$RENEW_HOOK"
fi
# Whether http://DOMAIN/ reaches this host's nginx: a file put in the ACME webroot must come
# back through the domain. Unlike comparing DNS with local addresses, this works behind NAT.
domain_reaches_us() {
    local name body
    name="deploy-check-$(random_hex)"
    printf '%s\n' "$name" >"$ACME_ROOT/.well-known/acme-challenge/$name"
    body=$(curl -fsS --max-time 10 "http://$DOMAIN/.well-known/acme-challenge/$name" 2>/dev/null || true)
    rm -f "$ACME_ROOT/.well-known/acme-challenge/$name"
    [ "$body" = "$name" ]
}
if cert_present "$DOMAIN"; then
    note "certificate for $DOMAIN present"
elif ! command -v certbot >/dev/null 2>&1 && [ "$DRY_RUN" = 0 ]; then
    note "certbot not installed: no certificate requested"
else
    if [ -n "$EMAIL" ]; then contact=(--email "$EMAIL"); else contact=(--register-unsafely-without-email); fi
    certbot_cmd=(certbot certonly --webroot -w "$ACME_ROOT" -d "$DOMAIN" --agree-tos --non-interactive "${contact[@]}")
    if [ "$SKIP_DOMAIN_CHECK" = 1 ]; then
        note "domain check skipped (--skip-domain-check)"
        reachable=1
    elif [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] would check that http://$DOMAIN/.well-known/acme-challenge/ reaches this nginx"
        reachable=1
    else
        install -d -m 0755 "$ACME_ROOT/.well-known/acme-challenge"
        if domain_reaches_us; then reachable=1; else reachable=0; fi
    fi
    if [ "$reachable" = 1 ]; then
        run "${certbot_cmd[@]}"
        [ "$DRY_RUN" = 1 ] || note "certificate obtained: run deploy.sh again to enable HTTPS"
    else
        note "http://$DOMAIN/ does not reach this host's nginx (DNS, firewall or port forwarding of"
        note "port 80): no certificate requested; --skip-domain-check lets certbot try anyway"
    fi
fi

step "restart or reload, and health"
env_sum=$(sha256sum "$ENV_FILE" | cut -d' ' -f1)
env_settings_sum=$(env_restart_sum)
deployed_sum=$(sed -n 1p "$DEPLOYED_ENV" 2>/dev/null || true)
deployed_settings_sum=$(sed -n 2p "$DEPLOYED_ENV" 2>/dev/null || true)
record_env() {
    if [ "$DRY_RUN" = 1 ]; then
        note "[dry-run] would record the env file's checksums in $DEPLOYED_ENV"
    else
        printf '%s\n%s\n' "$env_sum" "$env_settings_sum" >"$DEPLOYED_ENV"
    fi
}
ENV_CHANGED=0
[ "$deployed_sum" = "$env_sum" ] || ENV_CHANGED=1
active=0
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
    active=1
fi
if [ "$BINARY_CHANGED$UNIT_CHANGED$ENV_CHANGED" = 000 ] && [ "$active" = 1 ]; then
    note "binary, unit and env file unchanged and the server running: not restarted"
    exit 0
fi
if [ "$BINARY_CHANGED$UNIT_CHANGED" = 00 ] && [ "$active" = 1 ] \
    && [ -n "$deployed_settings_sum" ] && [ "$deployed_settings_sum" = "$env_settings_sum" ]; then
    note "reload needed: the env file changed only in settings SIGHUP rereads (service tokens, signing keys, JWT keys and settings) or in comments"
    set +e
    reload_and_wait
    reloaded=$?
    set -e
    case "$reloaded" in
        0)
            record_env
            [ "$DRY_RUN" = 1 ] || note "healthy"
            exit 0
            ;;
        2) note "systemctl reload failed: restarting instead" ;;
        3) die 1 "the server did not answer $(health_url) within ${HEALTH_WAIT} s after the reload; see journalctl -u upload-server" ;;
        *) die 1 "not reloaded: see journalctl -u upload-server, fix $ENV_FILE, then run deploy.sh again" ;;
    esac
fi
changed=()
[ "$BINARY_CHANGED" = 0 ] || changed+=(binary)
[ "$UNIT_CHANGED" = 0 ] || changed+=(unit)
if [ "$ENV_CHANGED" = 1 ]; then
    if [ -z "$deployed_settings_sum" ]; then
        changed+=("env file (no record of the settings deployed before)")
    elif [ "$deployed_settings_sum" != "$env_settings_sum" ]; then
        changed+=("env file (settings other than the secrets and JWT keys)")
    else
        changed+=("env file")
    fi
fi
[ "$active" = 1 ] || changed+=("server not running")
reasons=$(printf '%s, ' "${changed[@]}")
note "restart needed: ${reasons%, }"
if restart_and_wait; then
    if [ "$DRY_RUN" = 1 ] && [ "$BINARY_CHANGED" = 1 ] && [ -e "$BIN" ]; then
        note "[dry-run] if it does not become healthy: put $PREVIOUS back and restart"
    fi
    record_env
    [ "$DRY_RUN" = 1 ] || note "healthy"
    exit 0
fi
echo "deploy.sh: the server did not answer $(health_url) within ${HEALTH_WAIT} s; see journalctl -u upload-server" >&2
if [ "$BINARY_CHANGED" = 1 ] && [ -e "$PREVIOUS" ]; then
    rollback
    die 1 "rolled back to the previous binary; the new one is kept as $BIN.rolled-back"
fi
exit 1
