#!/usr/bin/env bash
# Scenario `distributed` (issue 14, scale-out): three instances of the server with
# STORAGE_BACKEND=s3 over a three-node Garage cluster and a PostgreSQL, behind nginx with
# the multi-instance site (deploy/nginx-multi-instance.conf), all on 127.0.0.1 and started
# here. 64 clients (bench/lib/distload.py) upload three ways (JSON parts through nginx; raw
# parts sent straight to different instances; one request), read, sign, zip, list and
# delete for 60 s, while one instance is SIGKILLed and restarted, and later one Garage node.
# Then every file is downloaded and hashed, every listing and usage compared with what the
# clients were told, the catalog's quota rows with its file rows; peak RSS per instance.
# Details and knobs: bench/README.md. Needs garage (BENCH_GARAGE_BIN; without it the
# scenario is SKIPPED, saying how to build it), PostgreSQL (initdb, pg_ctl, psql), nginx and
# openssl; as root, PostgreSQL runs as the postgres user.
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"
# shellcheck source=../lib/s3stack.sh
source "$BENCH_LIB/s3stack.sh"

SECONDS_RUN=${BENCH_DIST_SECONDS:-60}
BACKEND=${BENCH_DIST_BACKEND:-s3}
N=3                                             # instances (the site lists three)
KILL_INSTANCE=${BENCH_DIST_KILL_INSTANCE:-2}
KILL_NODE=${BENCH_DIST_KILL_NODE:-3}
# The instance is killed at min(20 s, a third of the run), the Garage node at 55 % of it.
KILL_AT=${BENCH_DIST_KILL_AT:-$(awk -v d="$SECONDS_RUN" 'BEGIN { v = d / 3; print (v < 20 ? v : 20) }')}
NODE_KILL_AT=${BENCH_DIST_NODE_KILL_AT:-$(awk -v d="$SECONDS_RUN" 'BEGIN { print d * 0.55 }')}
DOWN_S=${BENCH_DIST_DOWN_S:-3}
NODE_DOWN_S=${BENCH_DIST_NODE_DOWN_S:-8}
REPO_DIR=$(cd "$BENCH_LIB/../.." && pwd)
[[ $BACKEND == s3 || $BACKEND == fs ]] || die "BENCH_DIST_BACKEND is s3 or fs, not $BACKEND"
((KILL_INSTANCE >= 1 && KILL_INSTANCE <= N)) || die "BENCH_DIST_KILL_INSTANCE is 1..$N"
((KILL_NODE >= 1 && KILL_NODE <= 3)) || die "BENCH_DIST_KILL_NODE is 1..3"

need_tool nginx nginx
need_tool openssl openssl
[[ -x $BENCH_BIN ]] || die "no server binary at $BENCH_BIN (run bench/run, which builds it)"

if [[ $BACKEND == s3 ]]; then
    if ! find_garage; then
        echo "distributed: SKIPPED: no garage binary (BENCH_GARAGE_BIN, PATH, ~/.cargo/bin); build it with"
        echo "    cargo install garage@2.5.0 --locked     # about 40 min on 2 cores, into ~/.cargo/bin"
        echo "or run the instances on a shared UPLOAD_ROOT instead: BENCH_DIST_BACKEND=fs bench/run distributed"
        bench_row "distributed" "skipped (no garage binary)" - - - skip
        exit 0
    fi
    find_postgres
fi

# Each instance keeps client and upstream connections open.
ulimit -n 8192 2>/dev/null || ulimit -n 4096 2>/dev/null || true
bench_tmpdir
T=$BENCH_TMP
# At exit, also on a timeout (bench/run gives 30 s before SIGKILL): every process started
# here is sent SIGTERM at once, what is left after 10 s gets SIGKILL, and PostgreSQL stops
# without waiting for its clients. Runs before the temp dir is removed.
declare -a I_PID
LOAD_PID=""
NGINX_PID=""
stop_all() {
    local pids=() p k alive
    for p in "$LOAD_PID" "$NGINX_PID" "${I_PID[@]}" "${G_PID[@]}"; do [[ -n $p ]] && pids+=("$p"); done
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for ((k = 0; k < 100; k++)); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    # nginx's workers first (children of our master only), then everything left.
    [[ -z $NGINX_PID ]] || for p in $(pgrep -P "$NGINX_PID" || true); do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pg_stop
}
# keep_logs: the instances', nginx's and Garage's logs to BENCH_TMPDIR, when the run fails
# or dies (at exit, after everything stopped, before the temp dir goes).
FINISHED=0
keep_logs() {
    local i n
    for i in $(seq 1 $N); do
        cp "$T/i$i.log" "$BENCH_TMPDIR/bench-distributed-last-i$i.log" 2>/dev/null || true
    done
    cp "$T/nginx/error.log" "$BENCH_TMPDIR/bench-distributed-last-nginx-error.log" 2>/dev/null || true
    for n in 1 2 3; do
        cp "$T/garage/n$n/log" "$BENCH_TMPDIR/bench-distributed-last-garage-n$n.log" 2>/dev/null || true
    done
    echo "   logs kept in $BENCH_TMPDIR/bench-distributed-last-*.log"
}
keep_logs_on_failure() { ((FINISHED)) || keep_logs; }
bench_on_exit keep_logs_on_failure
bench_on_exit stop_all
# PostgreSQL runs as the postgres user: it must reach its folder inside.
chmod 0711 "$T"
EVENTS=$T/events
: >"$EVENTS"
failures=0
bad() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
# event TIME WHAT KIND NAME ADDR: one line for the load client's classification (TIME in
# epoch seconds, as `now` prints it).
event() { echo "$1 $2 $3 $4 $5" >>"$EVENTS"; }
echo "distributed: $BACKEND backend, $N instances, $(nproc) cores, $(machine_load) at start"

# ---------------------------------------------------------------- PostgreSQL

# Not under test and never killed: no fsync, to leave the disk to Garage.
[[ $BACKEND != s3 ]] || pg_start -c fsync=off -c synchronous_commit=off -c full_page_writes=off

# ---------------------------------------------------------------- Garage

[[ $BACKEND != s3 ]] || garage_cluster 3 3 1G sqlite

# ---------------------------------------------------------------- the instances

declare -a I_PORT I_HWM I_ROOT
pick_port NGINX_PORT
for i in $(seq 1 $N); do
    pick_port "I_PORT[$i]"
    I_HWM[i]=0
    # fs: one UPLOAD_ROOT for all (API.md 8). s3: one each, as on separate hosts; nothing
    # may land there.
    if [[ $BACKEND == fs ]]; then I_ROOT[i]=$T/shared-root; else I_ROOT[i]=$T/i$i/root; fi
done
# The shared settings, as /etc/stream-line/upload.env holds them for upload-server@.service;
# each instance's own (PORT, and here UPLOAD_ROOT and its Garage node) in its environment.
# UPLOAD_SIGNING_KEY is left unset: in s3 mode the instances share one kept in PostgreSQL.
{
    echo "BIND_HOST=127.0.0.1"
    echo "PUBLIC_BASE_URL=http://127.0.0.1:$NGINX_PORT"
    echo "AUTH_SERVICE_TOKEN=$BENCH_TOKEN"
    echo "RUST_LOG=warn"
    echo "MAX_BODY_MB=4096"
    echo "PER_USER_QUOTA_GB=100"
    echo "STORAGE_BACKEND=$BACKEND"
    if [[ $BACKEND == s3 ]]; then
        echo "S3_BUCKET=uploads"
        echo "S3_REGION=garage"
        echo "S3_ACCESS_KEY_ID=$S3_KEY_ID"
        echo "S3_SECRET_ACCESS_KEY=$S3_SECRET"
        echo "S3_PREFIX=bench"
        echo "DATABASE_URL=$DATABASE_URL"
        echo "DATABASE_POOL_SIZE=10"
    else
        echo "UPLOAD_SIGNING_KEY=$(openssl rand -hex 32)"
    fi
} >"$T/upload.env"
# Instance i talks to Garage node 1 or 2 (i odd: 1, even: 2); node 3 is no instance's
# endpoint, so its kill tests the cluster (quorum writes and reads with a replica gone, and
# its return), not a client's failover.
gateway() { echo $(((($1 - 1) % 2) + 1)); }
start_instance() {
    local i=$1 t0 s3=()
    t0=$(now)
    [[ $BACKEND == s3 ]] && s3=(S3_ENDPOINT="http://127.0.0.1:${G_S3[$(gateway "$i")]}")
    env -i PATH="$PATH" HOME="${HOME:-/root}" UPLOAD_ENV_FILE="$T/upload.env" PORT="${I_PORT[i]}" \
        UPLOAD_ROOT="${I_ROOT[i]}" "${s3[@]}" "$BENCH_BIN" >>"$T/i$i.log" 2>&1 &
    I_PID[i]=$!
    local k
    for ((k = 0; k < 600; k++)); do
        kill -0 "${I_PID[i]}" 2>/dev/null || { tail -20 "$T/i$i.log" >&2; die "instance $i exited at start"; }
        if curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:${I_PORT[i]}/healthz"; then
            I_UP_AT=$(now)
            log "instance $i pid ${I_PID[i]} on 127.0.0.1:${I_PORT[i]} (healthy after $(elapsed "$t0" "$(now)") s)"
            return 0
        fi
        sleep 0.1
    done
    tail -20 "$T/i$i.log" >&2
    die "instance $i not healthy after 60 s"
}
note_hwm() {
    local h
    h=$(proc_kib "${I_PID[$1]}" VmHWM 2>/dev/null) || return 0
    ((h > I_HWM[$1])) && I_HWM[$1]=$h
    return 0
}
stop_instance() {
    local i=$1 pid=${I_PID[$1]:-} k rc=0
    [[ -n $pid ]] || return 0
    note_hwm "$i"
    kill -TERM "$pid" 2>/dev/null || true
    for ((k = 0; k < 400; k++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || rc=$?
    I_PID[i]=""
    return "$rc"
}
for i in $(seq 1 $N); do start_instance "$i"; done

# ---------------------------------------------------------------- nginx

ng=$T/nginx
mkdir -p "$ng"
pick_port NGINX_HTTP_PORT
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$ng/privkey.pem" -out "$ng/fullchain.pem" 2>/dev/null
cp "$REPO_DIR/deploy/nginx-admin-allow.conf" "$ng/admin-allow.conf"
# The site as deployed, but: plain HTTP on a free port (TLS is not what this measures), the
# instances' ports, the rate limits lifted (every client here has one address), files in the
# temp dir, and X-Bench-Upstream naming the instances nginx tried (for the classification).
sed -e "s|listen 80;|listen 127.0.0.1:$NGINX_HTTP_PORT;|" -e '/listen \[::\]/d' \
    -e "s|listen 443 ssl http2;|listen 127.0.0.1:$NGINX_PORT;|" \
    -e "s|/etc/letsencrypt/live/file-server.example.com/|$ng/|" \
    -e "s|server 127.0.0.1:5071 |server 127.0.0.1:${I_PORT[1]} |" \
    -e "s|server 127.0.0.1:5072 |server 127.0.0.1:${I_PORT[2]} |" \
    -e "s|server 127.0.0.1:5073 |server 127.0.0.1:${I_PORT[3]} |" \
    -e "s|rate=[0-9]*r/s|rate=100000r/s|" \
    -e "s|/var/log/nginx/file-server.access.log|$ng/access.log|" \
    -e "s|/etc/nginx/upload-server-admin-allow.conf|$ng/admin-allow.conf|" \
    -e "s|/data/uploads/storage/|${I_ROOT[1]}/storage/|" \
    -e "0,/^    add_header X-Request-Id \\\$request_id always;/s//&\\n    add_header X-Bench-Upstream \\\$upstream_addr always;/" \
    "$REPO_DIR/deploy/nginx-multi-instance.conf" >"$ng/site.conf"
if ! grep -q 'X-Bench-Upstream' "$ng/site.conf" || grep -qE '127\.0\.0\.1:507[0-9]' "$ng/site.conf" \
    || ! grep -q "server 127.0.0.1:${I_PORT[3]} " "$ng/site.conf"; then
    die "could not derive the site from deploy/nginx-multi-instance.conf"
fi
sed "s|{dir}|$ng|g" "$REPO_DIR/deploy/nginx-test.conf" >"$ng/nginx.conf"
for d in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$ng/$d"; done
nginx -t -q -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" || { cat "$ng/error.log" >&2; die "nginx -t failed"; }
nginx -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" >/dev/null 2>&1 &
NGINX_PID=$!
wait_for 10 "nginx" curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/healthz"
log "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') pid $NGINX_PID on 127.0.0.1:$NGINX_PORT (site deploy/nginx-multi-instance.conf)"

# ---------------------------------------------------------------- pre-flight

# One file through nginx; in s3 mode it must be in the catalog and the bucket, and nothing
# on an instance's own disk: else the binary does not run the s3 backend, and the load
# would prove nothing.
printf 'pre-flight %s' "$(date)" >"$T/probe.txt"
probe=$(curl -sS --max-time 30 -H "X-Service-Token: $BENCH_TOKEN" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$T/probe.txt" "http://127.0.0.1:$NGINX_PORT/v1/files/upload?user_id=dist-probe&filename=probe.txt") \
    || die "pre-flight: the one-request upload through nginx failed"
probe_key=$(json_get files <<<"$probe" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["key"])') \
    || die "pre-flight: upload answered $probe"
if [[ $BACKEND == s3 ]]; then
    rows=$("${PSQL[@]}" -X -q -t -A -c "SELECT count(*) FROM files WHERE key = '$probe_key'" 2>&1) \
        || rows="none, $(head -1 <<<"$rows")"
    local_files=$({ find "$T"/i*/root -path '*/storage/*' -type f 2>/dev/null || true; } | wc -l)
    objects=0
    for ((k = 0; k < 150 && objects == 0; k++)); do
        sleep 0.1
        objects=$(g bucket info uploads 2>/dev/null | awk '/^Objects:/ { print $2 }')
        objects=${objects:-0}
    done
    if [[ $rows != 1 || $local_files != 0 || $objects == 0 ]]; then
        die "pre-flight: STORAGE_BACKEND=s3 is not in effect: catalog rows for $probe_key in PostgreSQL:
    $rows (want 1); files under the instances' own UPLOAD_ROOTs: $local_files (want 0); objects in
    the bucket after 15 s: $objects (want 1 or more). The binary
    $BENCH_BIN does not run the s3 backend (not wired into the server yet?)"
    fi
fi
for i in $(seq 1 $N); do
    if ! curl -sf --max-time 10 -o "$T/probe.back" "http://127.0.0.1:${I_PORT[i]}/$probe_key" \
        || ! cmp -s "$T/probe.txt" "$T/probe.back"; then
        die "pre-flight: instance $i does not serve $probe_key as uploaded"
    fi
done
log "pre-flight: $probe_key stored through nginx, served by every instance"

# ---------------------------------------------------------------- the load, and the faults

rows_py=$T/rows.py
: >"$rows_py"
psql_line=""
[[ $BACKEND == s3 ]] && psql_line=$(printf '%q ' "${PSQL[@]}")
instances=$(IFS=,; echo "${I_PORT[*]:1:$N}")
# shellcheck disable=SC2097,SC2098  # BENCH_ROWS for the client only: its rows come back here
BENCH_ROWS=$rows_py DIST_NGINX=$NGINX_PORT DIST_INSTANCES=$instances DIST_EVENTS=$EVENTS \
    DIST_STARTED=$T/started DIST_FAULTS_DONE=$T/faults-done DIST_PSQL=$psql_line DIST_TOKEN=$BENCH_TOKEN \
    BENCH_DIST_SECONDS=$SECONDS_RUN python3 "$BENCH_LIB/distload.py" &
LOAD_PID=$!
wait_for 60 "the load client's start" test -s "$T/started"
t_start=$(cat "$T/started")
# sleep_until SECONDS: until that many seconds after the load's start (dies with the client).
sleep_until() {
    while awk -v s="$t_start" -v d="$1" -v n="$(now)" 'BEGIN { exit !(n < s + d) }'; do
        kill -0 "$LOAD_PID" 2>/dev/null || die "the load client ended early"
        sleep 0.1
    done
}
sleep_until "$KILL_AT"
k=$KILL_INSTANCE
note_hwm "$k"
event "$(now)" kill instance "i$k" "127.0.0.1:${I_PORT[k]}"
kill -KILL "${I_PID[k]}"
wait "${I_PID[k]}" 2>/dev/null || true
log "instance $k SIGKILLed at $(elapsed "$t_start" "$(now)") s, $(date -u +%T.%3N) UTC (VmHWM $(kib_to_mib "${I_HWM[k]}") MiB)"
sleep "$DOWN_S"
t_restart=$(now)
start_instance "$k"
event "$I_UP_AT" up instance "i$k" "127.0.0.1:${I_PORT[k]}"
restart_s=$(elapsed "$t_restart" "$I_UP_AT")
node_back_s=""
if [[ $BACKEND == s3 ]]; then
    sleep_until "$NODE_KILL_AT"
    event "$(now)" kill garage "g$KILL_NODE" "127.0.0.1:${G_S3[KILL_NODE]}"
    kill -KILL "${G_PID[KILL_NODE]}"
    wait "${G_PID[KILL_NODE]}" 2>/dev/null || true
    log "Garage node $KILL_NODE SIGKILLed at $(elapsed "$t_start" "$(now)") s"
    sleep "$NODE_DOWN_S"
    t_restart=$(now)
    start_node "$KILL_NODE"
    wait_for 30 "Garage node $KILL_NODE back" "$GARAGE" -c "$(garage_conf "$KILL_NODE")" node id -q
    # A restarted node finds its peers again by itself, but only after ~30 s: help it.
    [[ $KILL_NODE == 1 ]] || g node connect "${G_ID[KILL_NODE]}" >/dev/null 2>&1 || true
    wait_for 60 "three healthy Garage nodes after the restart" nodes_healthy 3
    event "$(now)" up garage "g$KILL_NODE" "127.0.0.1:${G_S3[KILL_NODE]}"
    node_back_s=$(elapsed "$t_restart" "$(now)")
    log "Garage node $KILL_NODE back in the cluster after $node_back_s s"
fi
touch "$T/faults-done"
load_rc=0
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=""

# ---------------------------------------------------------------- after the run

for i in $(seq 1 $N); do note_hwm "$i"; done
bucket_objects=""
if [[ $BACKEND == s3 ]]; then
    bucket_objects=$(g bucket info uploads 2>/dev/null | awk '/^Objects:/ { print $2 }')
    leftover_rows=$("${PSQL[@]}" -X -q -t -A -F ' ' -c \
        "SELECT (SELECT count(*) FROM reservations), (SELECT count(*) FROM sessions WHERE state <> 'finished'),
            (SELECT count(*) FROM sessions WHERE state = 'claimed')" 2>&1 | awk '{ print $1, $2, "(" $3 " claimed)" }') \
        || leftover_rows="? ?"
    # Sessions a complete claimed and never finished (its instance died in it, say): named
    # in the log with when they were claimed, beside the instance's kill time.
    "${PSQL[@]}" -X -q -t -A -F ' ' -c "SELECT id, user_id, to_char(claimed_at AT TIME ZONE 'UTC',
        'HH24:MI:SS.MS') FROM sessions WHERE state = 'claimed' ORDER BY claimed_at" 2>/dev/null \
        | while read -r sid suser sat; do log "session $sid ($suser) left claimed, claimed at $sat UTC"; done || true
    local_files=$({ find "$T"/i*/root -path '*/storage/*' -type f 2>/dev/null || true; } | wc -l)
fi
declare -a STOP_RC ERR_LINES
for i in $(seq 1 $N); do
    STOP_RC[i]=0
    stop_instance "$i" || STOP_RC[i]=$?
    ERR_LINES[i]=$(sed 's/\x1b\[[0-9;]*m//g' "$T/i$i.log" | grep -c ' ERROR ' || true)
done

while IFS= read -r line; do
    IFS=$'\t' read -r -a f <<<"$line"
    bench_row "${f[@]:1}"
done <"$rows_py"
bench_row "instance $KILL_INSTANCE: SIGKILL, restart until healthy" "$restart_s s" "-" "-" "-" info
if [[ -n $node_back_s ]]; then
    bench_row "Garage node $KILL_NODE: SIGKILL, restart until the cluster has 3 healthy nodes" "$node_back_s s" "-" "-" "-" info
fi
for i in $(seq 1 $N); do
    bench_row "peak RSS instance $i (VmHWM$([[ $i == "$KILL_INSTANCE" ]] && echo ", both lives"))" \
        "$(kib_to_mib "${I_HWM[i]}") MiB" "-" "-" "-" info
done
stops=""
for i in $(seq 1 $N); do stops+="${STOP_RC[i]} "; done
ok=PASS
for i in $(seq 1 $N); do [[ ${STOP_RC[i]} == 0 ]] || ok=FAIL; done
bench_row "exit status on SIGTERM (each instance)" "${stops% }" "0" "-" "0" "$ok"
[[ $ok == PASS ]] || bad "an instance did not stop cleanly on SIGTERM"
errs=""
for i in $(seq 1 $N); do errs+="${ERR_LINES[i]} "; done
bench_row "server ERROR log lines (each instance)" "${errs% }" "-" "-" "-" info
if [[ $BACKEND == s3 ]]; then
    bench_row "objects in the bucket (Garage's count, data and sidecars)" "${bucket_objects:-?}" "-" "-" "-" info
    bench_row "reservations / unfinished sessions (of which claimed) left in PostgreSQL" "$leftover_rows" "-" "-" "-" info
    ok=PASS
    ((local_files == 0)) || ok=FAIL
    bench_row "files on the instances' own disks" "$local_files" "-" "-" "0" "$ok"
    [[ $ok == PASS ]] || bad "files landed on an instance's own disk"
fi
bench_table
if ((load_rc != 0 || failures > 0)); then
    echo "distributed: FAIL" >&2
    exit 1
fi
FINISHED=1
