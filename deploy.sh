#!/usr/bin/env bash
# Deploys the Stream-Line upload server on this host: binary, service user, folders,
# systemd unit, env file (never overwritten), nginx site, TLS certificate, restart, health.
# Idempotent: a second run changes nothing that is already right.
#
# Usage: sudo ./deploy.sh [--dry-run] [--binary PATH] [--domain NAME] [--email ADDR]
#   --dry-run      print every step without doing it
#   --binary PATH  install this prebuilt binary instead of building one
#   --domain NAME  public host name (default: file-server.example.com, or PUBLIC_BASE_URL's host)
#   --email ADDR   e-mail for certbot (without it, certbot is asked to register without one)
set -euo pipefail

DRY_RUN=0
BINARY=""
DOMAIN=""
EMAIL=""
SERVICE_USER=uploadsvc
PREFIX=/opt/upload-server
ENV_DIR=/etc/stream-line
ENV_FILE=$ENV_DIR/upload.env
UNIT=/etc/systemd/system/upload-server.service
SITE_AVAILABLE=/etc/nginx/sites-available/file-server
SITE_ENABLED=/etc/nginx/sites-enabled/file-server
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --binary) BINARY=${2:?--binary needs a path}; shift ;;
        --domain) DOMAIN=${2:?--domain needs a name}; shift ;;
        --email) EMAIL=${2:?--email needs an address}; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "deploy.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

step() { printf '==> %s\n' "$*"; }
# Runs a command, or prints it under --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '    [dry-run] %s\n' "$*"
    else
        "$@"
    fi
}

# Writes a fresh random AUTH_SERVICE_TOKEN into an env file (never printed).
set_new_service_token() {
    local token
    token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    sed -i "s|^#AUTH_SERVICE_TOKEN=.*|AUTH_SERVICE_TOKEN=$token|" "$1"
}

# A value from the env file (or the template when the env file does not exist yet).
env_value() {
    local key=$1 default=$2 file=$ENV_FILE
    [ -r "$file" ] || file=$HERE/upload.env.template
    local line
    line=$(grep -E "^${key}=" "$file" 2>/dev/null | tail -n 1 || true)
    if [ -n "$line" ]; then printf '%s\n' "${line#*=}"; else printf '%s\n' "$default"; fi
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "deploy.sh: run as root (or with --dry-run)" >&2
    exit 1
fi

UPLOAD_ROOT=$(env_value UPLOAD_ROOT /data/uploads)
PORT=$(env_value PORT 5070)
BIND_HOST=$(env_value BIND_HOST 127.0.0.1)
MAX_BODY_MB=$(env_value MAX_BODY_MB 5120)
if [ -z "$DOMAIN" ]; then
    base=$(env_value PUBLIC_BASE_URL "")
    DOMAIN=${base#*://}
    DOMAIN=${DOMAIN%%/*}
    DOMAIN=${DOMAIN%%:*}
    [ -n "$DOMAIN" ] || DOMAIN="file-server.example.com"
fi

step "binary"
if [ -n "$BINARY" ]; then
    [ "$DRY_RUN" = 1 ] || [ -x "$BINARY" ] || { echo "deploy.sh: $BINARY is not an executable" >&2; exit 1; }
    built=$BINARY
else
    run cargo build --release --locked --manifest-path "$HERE/Cargo.toml"
    built=$HERE/target/release/upload-server
fi
run install -d -m 0755 "$PREFIX/bin"
if [ "$DRY_RUN" = 1 ] || ! cmp -s "$built" "$PREFIX/bin/upload-server"; then
    run install -m 0755 "$built" "$PREFIX/bin/upload-server"
fi
run install -m 0644 "$HERE/README.md" "$PREFIX/README.md"

step "service user and folders"
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --home-dir "$UPLOAD_ROOT" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$UPLOAD_ROOT"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$ENV_DIR"

step "env file"
if [ -e "$ENV_FILE" ]; then
    echo "    $ENV_FILE exists: left as it is"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$HERE/upload.env.template" "$ENV_FILE"
    run set_new_service_token "$ENV_FILE"
    echo "    wrote $ENV_FILE with a new AUTH_SERVICE_TOKEN; edit it, then run deploy.sh again"
fi

step "systemd unit"
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp" "${site_tmp:-}"' EXIT
sed "s|^ReadWritePaths=.*|ReadWritePaths=$UPLOAD_ROOT|" "$HERE/upload-server.service" >"$unit_tmp"
if [ "$DRY_RUN" = 1 ] || ! cmp -s "$unit_tmp" "$UNIT"; then
    run install -m 0644 "$unit_tmp" "$UNIT"
    run systemctl daemon-reload
fi
if command -v systemd-analyze >/dev/null 2>&1; then
    run systemd-analyze verify "$UNIT" || echo "    systemd-analyze reported the above"
fi
run systemctl enable upload-server.service

step "nginx site"
site_tmp=$(mktemp)
sed -e "s|file-server.example.com|$DOMAIN|g" \
    -e "s|127.0.0.1:5070|$BIND_HOST:$PORT|" \
    -e "s|/data/uploads/storage/|${UPLOAD_ROOT%/}/storage/|" \
    -e "s|client_max_body_size [0-9]*m;|client_max_body_size ${MAX_BODY_MB}m;|" \
    "$HERE/nginx-file-server.conf" >"$site_tmp"
cert=/etc/letsencrypt/live/$DOMAIN/fullchain.pem
if [ ! -e "$cert" ]; then
    # Until a certificate exists, serve only port 80 (ACME and redirect) so nginx -t passes.
    awk '/listen 443/{skip=1} skip&&/^}/{skip=0;next} !skip' "$site_tmp" >"$site_tmp.http" && mv "$site_tmp.http" "$site_tmp"
fi
if [ "$DRY_RUN" = 1 ] || ! cmp -s "$site_tmp" "$SITE_AVAILABLE"; then
    run install -m 0644 "$site_tmp" "$SITE_AVAILABLE"
fi
[ -L "$SITE_ENABLED" ] || run ln -sf "$SITE_AVAILABLE" "$SITE_ENABLED"
run install -d -m 0755 /var/www/letsencrypt
run nginx -t
run systemctl reload nginx

step "TLS certificate"
if [ -e "$cert" ]; then
    echo "    certificate for $DOMAIN present"
elif command -v certbot >/dev/null 2>&1 && command -v getent >/dev/null 2>&1; then
    resolved=$(getent ahosts "$DOMAIN" | awk '{print $1; exit}' || true)
    mine=$(hostname -I 2>/dev/null | tr ' ' '\n' || true)
    if [ -n "$resolved" ] && printf '%s\n' "$mine" | grep -qx "$resolved"; then
        if [ -n "$EMAIL" ]; then contact=(--email "$EMAIL"); else contact=(--register-unsafely-without-email); fi
        run certbot certonly --webroot -w /var/www/letsencrypt -d "$DOMAIN" --agree-tos --non-interactive "${contact[@]}"
        echo "    certificate obtained: run deploy.sh again to enable HTTPS"
    else
        echo "    $DOMAIN does not resolve to this host: no certificate requested"
    fi
else
    echo "    certbot not installed: no certificate requested"
fi

step "restart and health"
run systemctl restart upload-server.service
if [ "$DRY_RUN" = 0 ]; then
    for _ in $(seq 1 30); do
        if curl -fsS "http://$BIND_HOST:$PORT/healthz" >/dev/null 2>&1; then
            echo "    healthy"
            exit 0
        fi
        sleep 1
    done
    echo "deploy.sh: the server did not become healthy; see journalctl -u upload-server" >&2
    exit 1
else
    echo "    [dry-run] wait for http://$BIND_HOST:$PORT/healthz"
fi
