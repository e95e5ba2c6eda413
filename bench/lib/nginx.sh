# shellcheck shell=bash
# nginx as a reference file server, for scenarios that compare our reads with it. Source it
# after common.sh:
#     source "$BENCH_LIB/nginx.sh"
#     start_nginx "$ROOT"        # NGINX_URL, NGINX_PID; stopped at exit
# With NGINX_OFFLOAD_UPSTREAM=HOST:PORT set, the same nginx also listens on a second port
# (NGINX_OFFLOAD_URL) as deployed in front of our server: `/storage/` proxied to the
# upstream (kept-alive connections), and `/_files/` the internal location an
# `X-Accel-Redirect` from a server started with ACCEL_REDIRECT_PREFIX=/_files/ lands on,
# serving the file with sendfile.
# The instance is private: its own prefix, config, pid file, error log and temp paths under
# BENCH_TMP, one 127.0.0.1 port, nothing under /etc/nginx or /var/log/nginx is used.
# `root` is the UPLOAD_ROOT, so `/storage/{key path}` names the same file for both servers.
# Settings: sendfile on, access_log off, keepalive_requests 1000000 (our server has no
# per-connection limit either), worker_processes BENCH_NGINX_WORKERS (default auto = one
# per core). As root the workers run as root (`user root root`), so they can read the 0700
# temp dir. tcp_nopush is BENCH_NGINX_TCP_NOPUSH, default off: with `sendfile on` and
# `tcp_nopush on` (Debian's default), every random 64 KiB range answer stalls ~40 ms here
# (p50 43.9 ms, ~830 req/s at 32 connections, nginx idle at 8 % CPU); with it off nginx
# answers 11,000-19,000 ranges/s, and the 4 KiB and whole-file figures do not change beyond
# the noise. The reference should be nginx at its best.

# shellcheck disable=SC2034  # NGINX_OFFLOAD_URL is for the caller
start_nginx() {
    local root=$1 port prefix user_line="" i
    need_tool nginx nginx
    prefix="$BENCH_TMP/nginx"
    mkdir -p "$prefix/tmp"
    port="$(free_port)"
    NGINX_URL="http://127.0.0.1:$port"
    local offload=""
    NGINX_OFFLOAD_URL=""
    if [[ -n ${NGINX_OFFLOAD_UPSTREAM:-} ]]; then
        local oport
        oport="$(free_port)"
        NGINX_OFFLOAD_URL="http://127.0.0.1:$oport"
        offload="
    upstream upload_server {
        server $NGINX_OFFLOAD_UPSTREAM;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$oport;
        location /storage/ {
            proxy_pass http://upload_server;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }
        location /_files/ {
            internal;
            alias $root/storage/;
        }
    }"
    fi
    ((EUID == 0)) && user_line="user root root;"
    cat >"$prefix/nginx.conf" <<EOF
$user_line
worker_processes ${BENCH_NGINX_WORKERS:-auto};
daemon off;
master_process on;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    sendfile on;
    tcp_nopush ${BENCH_NGINX_TCP_NOPUSH:-off};
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path $prefix/tmp/client_body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $root;
        location /storage/ { }
        location / { return 404; }
    }$offload
}
EOF
    nginx -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
        || { cat "$prefix/error.log" >&2; die "nginx rejects its config"; }
    nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" >"$prefix/stdout.log" 2>&1 &
    NGINX_PID=$!
    bench_on_exit "stop_nginx"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$NGINX_PID" 2>/dev/null || { cat "$prefix/error.log" >&2; die "nginx exited at start"; }
        # Any answer (a 404 for /) means it listens.
        if curl -s --max-time 2 -o /dev/null "$NGINX_URL/"; then
            log "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') pid $NGINX_PID on $NGINX_URL, $(nginx_workers | wc -w) workers"
            return 0
        fi
        sleep 0.1
    done
    cat "$prefix/error.log" >&2
    die "nginx not answering after 10 s"
}

stop_nginx() {
    [[ -n ${NGINX_PID:-} ]] || return 0
    if kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        # Its workers first (children of this master only), then the master.
        local w
        for w in $(nginx_workers); do kill -KILL "$w" 2>/dev/null || true; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
}

# nginx_workers -> the pids of our nginx master's children
nginx_workers() {
    [[ -n ${NGINX_PID:-} ]] || return 0
    pgrep -P "$NGINX_PID" || true
}

# nginx_cpu_s -> CPU seconds used so far by our nginx master and its workers
nginx_cpu_s() {
    local total=0 p c
    for p in "$NGINX_PID" $(nginx_workers); do
        c="$(proc_cpu_s "$p" 2>/dev/null)" || continue
        total="$(awk -v a="$total" -v b="$c" 'BEGIN { printf "%.2f", a + b }')"
    done
    echo "$total"
}

nginx_alive() {
    kill -0 "$NGINX_PID" 2>/dev/null || { tail -20 "$BENCH_TMP/nginx/error.log" >&2; die "nginx died"; }
}
