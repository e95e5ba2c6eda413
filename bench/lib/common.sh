# shellcheck shell=bash
# Helpers shared by the bench scenarios. Source it from a scenario:
#     source "$BENCH_LIB/common.sh"
# It sets an EXIT trap that runs everything registered with `bench_on_exit` (last first):
# the server and samplers are stopped and temp dirs removed whatever happens.
# bench/run exports BENCH_BIN, BENCH_LIB, BENCH_ROWS, BENCH_TMPDIR, BENCH_SCENARIO; a
# scenario run by hand gets defaults (the binary must then already be built).

: "${BENCH_LIB:=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
: "${REPO:=$(cd "$BENCH_LIB/../.." && pwd)}"
: "${BENCH_BIN:=$REPO/target/release/upload-server}"
: "${BENCH_TMPDIR:=/tmp}"
: "${BENCH_SCENARIO:=$(basename "${0%.*}")}"
BENCH_TOKEN=bench

_bench_exit_cmds=()
bench_on_exit() { _bench_exit_cmds+=("$1"); }
_bench_run_exit() {
    local rc=$? i
    for ((i = ${#_bench_exit_cmds[@]} - 1; i >= 0; i--)); do
        eval "${_bench_exit_cmds[i]}" || true
    done
    exit "$rc"
}
trap _bench_run_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "BROKEN: $*" >&2; exit 1; }
log() { echo "-- $*" >&2; }

# settle: flush dirty pages, then wait BENCH_SETTLE_S (default 10) seconds, so every timed
# step starts from the same state. On this VM (virtio-balloon free page reporting), memory
# freed by an earlier step goes back to the host within ~5 s; writing into pages the guest
# still holds costs ~0.5 s of kernel CPU per GiB, into fresh ones ~4 s. Without the pause,
# a step that happens to follow a large `rm` looks several times faster.
settle() {
    sync
    sleep "${BENCH_SETTLE_S:-10}"
}

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# elapsed START END -> seconds (3 decimals)
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# mbps BYTES SECONDS -> MB/s (10^6 bytes per second, 1 decimal)
mbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s / 1e6 }'; }
# ratio A B -> A/B (2 decimals)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# ge A B -> success when A >= B (floats)
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
# lt A B -> success when A < B (floats)
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
# le A B -> success when A <= B (floats)
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
# verdict CONDITION-COMMAND... -> PASS or FAIL
verdict() { if "$@"; then echo PASS; else echo FAIL; fi; }

# Makes a temp dir (under BENCH_TMPDIR) removed at exit, in BENCH_TMP. Not in $(...): the
# cleanup must be registered in this shell.
bench_tmpdir() {
    BENCH_TMP="$(mktemp -d "$BENCH_TMPDIR/bench-$BENCH_SCENARIO.XXXXXX")"
    bench_on_exit "rm -rf '$BENCH_TMP'"
}

# need_free_gib DIR GIB: stop if DIR's filesystem has less room.
need_free_gib() {
    local avail_kb
    avail_kb="$(df -Pk "$1" | awk 'NR == 2 { print $4 }')"
    ((avail_kb >= $2 * 1024 * 1024)) || die "$1 has $((avail_kb / 1024 / 1024)) GiB free, need $2"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Table rows: bench_row FIGURE VALUE REFERENCE RATIO TARGET RESULT
_bench_rows_local=""
bench_row() {
    local line
    line="$(printf '%s\t' "$BENCH_SCENARIO" "$@")"
    line="${line%$'\t'}"
    [[ -n $_bench_rows_local ]] || { _bench_rows_local="$(mktemp "$BENCH_TMPDIR/bench-rows.XXXXXX")"; bench_on_exit "rm -f '$_bench_rows_local'"; }
    echo "$line" >>"$_bench_rows_local"
    [[ -z ${BENCH_ROWS:-} ]] || echo "$line" >>"$BENCH_ROWS"
}
bench_table() {
    [[ -n $_bench_rows_local ]] || return 0
    python3 "$BENCH_LIB/table.py" --no-scenario <"$_bench_rows_local"
}

# start_server UPLOAD_ROOT [VAR=VALUE...]: starts the release binary on a free 127.0.0.1
# port with a clean environment, waits for /healthz (30 s at most). Sets SERVER_PID,
# SERVER_URL, SERVER_LOG. Extra VAR=VALUE pairs override the defaults. SERVER_PORT, when
# set, is the port to use instead of a free one (one named in advance, e.g. in nginx's
# config).
start_server() {
    local root=$1
    shift
    [[ -x $BENCH_BIN ]] || die "no server binary at $BENCH_BIN (run bench/run, which builds it)"
    local port
    port="${SERVER_PORT:-$(free_port)}"
    SERVER_URL="http://127.0.0.1:$port"
    SERVER_LOG="$root.server.log"
    env -i PATH="$PATH" HOME="${HOME:-/root}" \
        UPLOAD_ROOT="$root" BIND_HOST=127.0.0.1 PORT="$port" \
        AUTH_SERVICE_TOKEN="$BENCH_TOKEN" RUST_LOG=warn \
        MAX_BODY_MB=4096 PER_USER_QUOTA_GB=100 "$@" \
        "$BENCH_BIN" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    bench_on_exit "stop_server; rm -f '$SERVER_LOG'"
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; die "server exited at start"; }
        if curl -sf --max-time 2 -o /dev/null "$SERVER_URL/healthz"; then
            log "server pid $SERVER_PID on $SERVER_URL"
            return 0
        fi
        sleep 0.1
    done
    cat "$SERVER_LOG" >&2
    die "server not healthy after 30 s"
}

stop_server() {
    [[ -n ${SERVER_PID:-} ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

server_alive() { kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$SERVER_LOG" >&2; die "server died"; }; }

# proc_kib PID FIELD -> a /proc/PID/status field in KiB (VmRSS, VmHWM)
proc_kib() {
    local k v _
    while read -r k v _; do
        [[ $k == "$2:" ]] && { echo "$v"; return 0; }
    done <"/proc/$1/status"
    return 1
}

# proc_cpu_s PID -> user+system CPU seconds the process used so far (all threads)
proc_cpu_s() {
    local tck
    tck=$(getconf CLK_TCK)
    # Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat"
}

# Load average and the CPU pressure of the last 60 s: other work on the machine skews
# every figure, so the report shows it.
machine_load() {
    local la psi=""
    la="$(cut -d' ' -f1-3 /proc/loadavg)"
    [[ -r /proc/pressure/cpu ]] && psi=", cpu pressure avg60 $(awk '/^some/ { sub("avg60=", "", $3); print $3 "%" }' /proc/pressure/cpu)"
    echo "load $la$psi"
}

# Resets the kernel's peak-RSS counter (VmHWM) of PID, so a phase's peak is its own.
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || log "cannot reset VmHWM of $1"; }

# rss_sampler_start PID OUTFILE: samples VmRSS every 100 ms, keeping the max (KiB) in
# OUTFILE. Sets SAMPLER_PID. rss_sampler_stop ends it.
rss_sampler_start() {
    local pid=$1 out=$2
    echo 0 >"$out"
    (
        trap - EXIT INT TERM
        max=0
        while [[ -r /proc/$pid/status ]]; do
            while read -r k v _; do
                if [[ $k == VmRSS: ]]; then
                    ((v > max)) && { max=$v; echo "$max" >"$out"; }
                    break
                fi
            done <"/proc/$pid/status" 2>/dev/null || break
            sleep 0.1
        done
    ) &
    SAMPLER_PID=$!
    bench_on_exit "rss_sampler_stop"
}
rss_sampler_stop() {
    [[ -n ${SAMPLER_PID:-} ]] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# api METHOD PATH [curl args...]: a service-token request to the server; prints the body,
# dies on a non-200 status. Bounded by BENCH_HTTP_TIMEOUT (default 600 s).
api() {
    local method=$1 path=$2 body code
    shift 2
    body="$(mktemp "$BENCH_TMPDIR/bench-body.XXXXXX")"
    code="$(curl -sS --max-time "${BENCH_HTTP_TIMEOUT:-600}" -o "$body" -w '%{http_code}' \
        -X "$method" -H "X-Service-Token: $BENCH_TOKEN" "$@" "$SERVER_URL$path")" || {
        rm -f "$body"
        die "$method $path: curl failed"
    }
    if [[ $code != 200 ]]; then
        echo "$method $path -> $code: $(head -c 500 "$body")" >&2
        rm -f "$body"
        die "$method $path answered $code"
    fi
    cat "$body"
    rm -f "$body"
}

# json_get KEY < JSON -> the value (strings bare)
json_get() {
    python3 -c 'import json, sys; v = json.load(sys.stdin)[sys.argv[1]]; print(v if isinstance(v, str) else json.dumps(v))' "$1"
}

# need_tool CMD [PACKAGE]: makes sure CMD is on PATH; when it is not and we run as root,
# installs PACKAGE (default CMD) with apt-get (after apt-get update), else dies.
need_tool() {
    local cmd=$1 pkg=${2:-$1}
    command -v "$cmd" >/dev/null && return 0
    [[ -x /usr/sbin/$cmd ]] && { PATH="$PATH:/usr/sbin"; return 0; }
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "needs $cmd (apt-get install $pkg)"
    fi
    log "installing $pkg"
    timeout 300 apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed; trying the install anyway"
    local out
    out="$(DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$pkg" 2>&1)" \
        || { echo "$out" | tail -20 >&2; die "apt-get install $pkg failed"; }
    command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || die "$pkg installed no $cmd"
    [[ -x /usr/sbin/$cmd ]] && PATH="$PATH:/usr/sbin"
    return 0
}

# percentile P < numbers (one a line) -> the P-th percentile, nearest rank (3 decimals)
percentile() {
    sort -g | awk -v p="$1" '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        r = int((p / 100) * NR + 0.999999); if (r < 1) r = 1; if (r > NR) r = NR
        printf "%.3f", v[r] }'
}

# max_of A B -> the larger (floats)
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b ? a : b) }'; }
# kib_to_mib KIB -> MiB (1 decimal)
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# upload_raw USER FILENAME FILE [FOLDER]: stores FILE through POST /v1/files/upload (raw
# body, one request) and prints the key; dies unless 200 with the right size.
upload_raw() {
    local user=$1 name=$2 file=$3 folder=${4:-} q out key size
    q="user_id=$user&filename=$name"
    [[ -n $folder ]] && q+="&folder=$folder"
    out="$(api POST "/v1/files/upload?$q" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        -T "$file")"
    key="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["files"][0]["key"])' <<<"$out")"
    size="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["files"][0]["size"])' <<<"$out")"
    [[ $size == "$(stat -c %s "$file")" ]] || die "upload of $name answered size $size"
    echo "$key"
}
