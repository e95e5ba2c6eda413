#!/usr/bin/env bash
# Scenario `read` (issue 4): reading files through our server beside nginx serving the same
# files from the same UPLOAD_ROOT, in the same run.
#
#   small   requests/s for one 4 KiB file, wrk -t2 -c64 for BENCH_READ_SECONDS (10)  >= 0.5 x nginx
#   large   MB/s for one 512 MiB file, sequential full `curl -o /dev/null` downloads >= 0.8 x nginx
#   ranges  requests/s for random 64 KiB ranges of the 512 MiB file, wrk -c32 with a
#           random `Range` per request (lib/wrk.lua)                                  >= 0.8 x nginx
#   listing GET /v1/files/all for a user with 10,000 files (written on disk as the old
#           service did, with thin sidecars, over 10 folders): first call, then p50/p99
#           of 20 calls; nginx has no equivalent                                     < 100 ms
#   copied  the same for a second user whose 10,000 sidecars share one created_at (a
#           copied tree, a bulk import: the order falls to the keys): p50 of the whole
#           list (<= 30 ms) and of a page of 100 from the middle (<= 5 ms)
#   proxied the ranges figure through the deployed path (info): nginx in front (a second
#           server block of the same nginx) proxies to our server, bytes and all
#   offload the same with our server restarted with ACCEL_REDIRECT_PREFIX=/_files/: it
#           checks and answers X-Accel-Redirect, nginx sends the bytes (sendfile). The CPU
#           of both is both processes'; the ratios are to nginx serving the file directly
#
# Both servers are warm (the files were just written; nothing is dropped from the page
# cache) and each wrk figure is the best of BENCH_READ_ROUNDS (2) runs per server, in ABBA
# order (ours, nginx, nginx, ours), after a BENCH_READ_WARMUP_S (2) s warm-up of each; the
# large file is the best of BENCH_READ_LARGE_RUNS (3) downloads per server, alternating.
# Knobs: BENCH_READ_LARGE_MB (512), BENCH_READ_SECONDS (10), BENCH_READ_SMALL_CONNS (64),
# BENCH_READ_RANGE_CONNS (32), BENCH_LIST_FILES (10000), BENCH_LIST_CALLS (20).
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"
# shellcheck source=../lib/nginx.sh
source "$BENCH_LIB/nginx.sh"
# shellcheck source=../lib/wrk.sh
source "$BENCH_LIB/wrk.sh"

LARGE_MB="${BENCH_READ_LARGE_MB:-512}"
SECS="${BENCH_READ_SECONDS:-10}"
WARM_S="${BENCH_READ_WARMUP_S:-2}"
ROUNDS="${BENCH_READ_ROUNDS:-2}"
SMALL_CONNS="${BENCH_READ_SMALL_CONNS:-64}"
RANGE_CONNS="${BENCH_READ_RANGE_CONNS:-32}"
LARGE_RUNS="${BENCH_READ_LARGE_RUNS:-3}"
LIST_FILES="${BENCH_LIST_FILES:-10000}"
LIST_CALLS="${BENCH_LIST_CALLS:-20}"
SMALL_BYTES=4096
RANGE_BYTES=65536
SMALL_TARGET=0.5
LARGE_TARGET=0.8
RANGE_TARGET=0.8
LIST_TARGET_MS=100
COPIED_ALL_TARGET_MS=30
COPIED_PAGE_TARGET_MS=5

for t in curl python3 sha256sum head cmp; do
    command -v "$t" >/dev/null || die "needs $t"
done
need_tool wrk wrk
need_tool nginx nginx

LOAD_BEFORE="$(machine_load)"
log "$LOAD_BEFORE"
bench_tmpdir
T=$BENCH_TMP
ROOT="$T/root"
LARGE_BYTES=$((LARGE_MB * 1024 * 1024))
need_free_gib "$T" $(((LARGE_MB * 2 + 1023) / 1024 + 1))
log "temp dir $T ($(df -h --output=source,avail "$T" | tail -1 | tr -s ' '))"

# 1. The files: the two to read, through our API; the lister's 10,000 straight on disk.
head -c "$SMALL_BYTES" /dev/urandom >"$T/small.bin"
head -c "${LARGE_MB}M" /dev/urandom >"$T/large.bin"
SMALL_SHA="$(sha256sum "$T/small.bin" | cut -d' ' -f1)"
LARGE_SHA="$(sha256sum "$T/large.bin" | cut -d' ' -f1)"
mkdir -p "$ROOT"
t0=$(now)
read -r n LIST_BYTES < <(python3 "$BENCH_LIB/mkfiles.py" "$ROOT" lister "$LIST_FILES") || true
[[ ${n:-} == "$LIST_FILES" ]] || die "mkfiles.py wrote ${n:-no} files"
log "wrote $n files ($LIST_BYTES bytes) for user lister on disk in $(elapsed "$t0" "$(now)") s"
read -r n _ < <(python3 "$BENCH_LIB/mkfiles.py" "$ROOT" copied "$LIST_FILES" same-created-at) || true
[[ ${n:-} == "$LIST_FILES" ]] || die "mkfiles.py wrote ${n:-no} files for copied"

# Our server's port is named in advance: nginx's second server block (step 6) proxies to
# it, as deployed.
OFFLOAD_PORT="$(free_port)"
NGINX_OFFLOAD_UPSTREAM="127.0.0.1:$OFFLOAD_PORT"
SERVER_PORT=$OFFLOAD_PORT start_server "$ROOT"
start_nginx "$ROOT"
SMALL_KEY="$(upload_raw bench small.bin "$T/small.bin")"
LARGE_KEY="$(upload_raw bench large.bin "$T/large.bin")"
log "uploaded $SMALL_KEY and $LARGE_KEY"
# Keep a copy of a range to check against; the local large file is no longer needed.
dd if="$T/large.bin" of="$T/range.ref" iflag=skip_bytes,count_bytes skip=1000 count="$RANGE_BYTES" status=none
rm -f "$T/large.bin"

url_of() { # WHO KEY -> URL
    case $1 in
        ours) echo "$SERVER_URL/$2" ;;
        offload) echo "$NGINX_OFFLOAD_URL/$2" ;;
        *) echo "$NGINX_URL/$2" ;;
    esac
}
cpu_of() { # WHO -> CPU seconds so far (offload: nginx and our server together)
    case $1 in
        ours) proc_cpu_s "$SERVER_PID" ;;
        offload) awk -v a="$(proc_cpu_s "$SERVER_PID")" -v b="$(nginx_cpu_s)" 'BEGIN { printf "%.2f", a + b }' ;;
        *) nginx_cpu_s ;;
    esac
}
alive() { server_alive; nginx_alive; }

# 2. Both serve the same bytes: whole files (hash), and one range (206, exact bytes).
for who in ours nginx; do
    for f in small large; do
        if [[ $f == small ]]; then key=$SMALL_KEY want=$SMALL_SHA; else key=$LARGE_KEY want=$LARGE_SHA; fi
        got="$(curl -sS --fail --max-time 300 "$(url_of "$who" "$key")" | sha256sum | cut -d' ' -f1)" \
            || die "$who: GET $key failed"
        [[ $got == "$want" ]] || die "$who: GET $key returned other bytes (sha256 $got)"
    done
    code="$(curl -sS --max-time 60 -o "$T/range.got" -w '%{http_code}' -r 1000-$((1000 + RANGE_BYTES - 1)) \
        "$(url_of "$who" "$LARGE_KEY")")" || die "$who: range request failed"
    [[ $code == 206 ]] || die "$who: a range request answered $code"
    cmp -s "$T/range.got" "$T/range.ref" || die "$who: a range request returned other bytes"
done
rm -f "$T/range.got"
log "both servers return the right bytes for the files and for a range"

# 3. wrk figures: warm-up, then ABBA rounds; the best run of each server counts.
declare -A RPS=() CPU=() P99=()
# wrk_round FIGURE LABEL WHO KEY CONNS ROUND [VAR=VALUE...]: one timed wrk run of WHO's URL
# for KEY; the best run is kept in RPS/P99/CPU under FIGURE.LABEL.
wrk_round() {
    local figure=$1 label=$2 who=$3 key=$4 conns=$5 round=$6 c0 c1
    shift 6
    c0=$(cpu_of "$who")
    run_wrk "$(url_of "$who" "$key")" "$conns" "$SECS" "$@"
    c1=$(cpu_of "$who")
    alive
    log "$figure $label round $round: $WRK_RPS req/s, p50 $WRK_P50_MS ms, p99 $WRK_P99_MS ms, $WRK_BYTES_PER_REQ bytes/request, server CPU $(elapsed "$c0" "$c1") s in $WRK_SECONDS s"
    # wrk also counts the bytes of the answers still in flight when it stops, so
    # allow some slack above; a server that ignored the Range would send 8192 x more.
    if [[ $figure == ranges ]] && ((WRK_BYTES_PER_REQ < RANGE_BYTES || WRK_BYTES_PER_REQ > 2 * RANGE_BYTES)); then
        die "$label answered $WRK_BYTES_PER_REQ bytes per range request of $RANGE_BYTES"
    fi
    if [[ -z ${RPS[$figure.$label]:-} ]] || ge "$WRK_RPS" "${RPS[$figure.$label]}"; then
        RPS[$figure.$label]=$WRK_RPS
        P99[$figure.$label]=$WRK_P99_MS
        # CPU milliseconds per 1000 requests
        CPU[$figure.$label]=$(awk -v c="$(elapsed "$c0" "$c1")" -v n="$WRK_REQS" 'BEGIN { printf "%.0f", c * 1e6 / n }')
    fi
}
wrk_figure() { # NAME KEY CONNS [VAR=VALUE...]
    local name=$1 key=$2 conns=$3 who r order
    shift 3
    for who in ours nginx; do
        run_wrk "$(url_of "$who" "$key")" "$conns" "$WARM_S" "$@"
    done
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r % 2 == 1)); then order=(ours nginx); else order=(nginx ours); fi
        for who in "${order[@]}"; do
            wrk_round "$name" "$who" "$who" "$key" "$conns" "$r" "$@"
        done
    done
}
log "small: $SMALL_BYTES-byte file, $SMALL_CONNS connections, ${SECS} s x $ROUNDS rounds"
wrk_figure small "$SMALL_KEY" "$SMALL_CONNS"
log "ranges: random $RANGE_BYTES-byte ranges of the $LARGE_MB MiB file, $RANGE_CONNS connections"
wrk_figure ranges "$LARGE_KEY" "$RANGE_CONNS" WRK_RANGE_BYTES=$RANGE_BYTES WRK_FILE_SIZE=$LARGE_BYTES

# 4. The large file, whole, one download at a time.
declare -A MBPS=() LCPU=()
for ((r = 1; r <= LARGE_RUNS; r++)); do
    for who in ours nginx; do
        c0=$(cpu_of "$who")
        read -r code got secs < <(curl -sS --max-time 300 -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
            "$(url_of "$who" "$LARGE_KEY")") || die "$who: download of $LARGE_KEY failed"
        c1=$(cpu_of "$who")
        [[ $code == 200 && $got == "$LARGE_BYTES" ]] || die "$who: download answered $code with $got bytes"
        v=$(mbps "$LARGE_BYTES" "$secs")
        log "large $who run $r: $v MB/s ($secs s, server CPU $(elapsed "$c0" "$c1") s)"
        if [[ -z ${MBPS[$who]:-} ]] || ge "$v" "${MBPS[$who]}"; then
            MBPS[$who]=$v
            LCPU[$who]="$(elapsed "$c0" "$c1") s / $(printf '%.3f' "$secs") s"
        fi
    done
done
alive

# 5. Listing the user with 10,000 files: the server's first listing (its cache is cold,
# the page cache warm), then LIST_CALLS more.
list_once() { # [QUERY] -> seconds; checks 200
    local code secs
    read -r code secs < <(curl -sS --max-time 60 -o "$T/list.json" -w '%{http_code} %{time_total}\n' \
        -H "X-Service-Token: $BENCH_TOKEN" "$SERVER_URL/v1/files/all?${1:-user_id=lister}") \
        || die "listing failed"
    [[ $code == 200 ]] || die "listing answered $code: $(head -c 300 "$T/list.json")"
    echo "$secs"
}
FIRST_S=$(list_once)
COUNT="$(json_get total_count <"$T/list.json")"
[[ $COUNT == "$LIST_FILES" ]] || die "listing counted $COUNT files, expected $LIST_FILES"
LIST_JSON_BYTES=$(stat -c %s "$T/list.json")
: >"$T/list.times"
c0=$(proc_cpu_s "$SERVER_PID")
for ((i = 0; i < LIST_CALLS; i++)); do
    list_once >>"$T/list.times"
done
c1=$(proc_cpu_s "$SERVER_PID")
ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }
FIRST_MS=$(ms "$FIRST_S")
P50_MS=$(ms "$(percentile 50 <"$T/list.times")")
P99_MS=$(ms "$(percentile 99 <"$T/list.times")")
LIST_CPU_MS=$(awk -v c="$(elapsed "$c0" "$c1")" -v n="$LIST_CALLS" 'BEGIN { printf "%.0f", c * 1000 / n }')
log "listing: first $FIRST_MS ms, then p50 $P50_MS ms, p99 $P99_MS ms over $LIST_CALLS calls ($LIST_JSON_BYTES-byte answer, server CPU ${LIST_CPU_MS} ms per call)"
alive
# The copied tree: every created_at the same. The first call reads it (cold cache).
list_p50() { # QUERY -> p50 ms of LIST_CALLS calls
    local i
    : >"$T/list.times"
    for ((i = 0; i < LIST_CALLS; i++)); do
        list_once "$1" >>"$T/list.times"
    done
    ms "$(percentile 50 <"$T/list.times")"
}
list_once user_id=copied >/dev/null
COUNT="$(json_get total_count <"$T/list.json")"
[[ $COUNT == "$LIST_FILES" ]] || die "listing copied counted $COUNT files, expected $LIST_FILES"
COPIED_ALL_MS=$(list_p50 user_id=copied)
PAGE_QUERY="user_id=copied&limit=100&offset=$((LIST_FILES / 2))"
COPIED_PAGE_MS=$(list_p50 "$PAGE_QUERY")
python3 -c 'import json,sys; n=len(json.load(sys.stdin)["files"]); sys.exit(0 if n == 100 else f"page holds {n} files")' <"$T/list.json" \
    || die "the page of 100 does not hold 100 files"
log "listing copied (one created_at): all p50 $COPIED_ALL_MS ms, page of 100 p50 $COPIED_PAGE_MS ms"
alive

# 6. The deployed paths for ranges, nginx in front: proxying our answers (bytes and all),
# then with our server restarted with the offload on (headers only, nginx sends the bytes).
front_figure() { # NAME: ranges through nginx's second server block, best of ROUNDS
    local name=$1 r code
    local vars=(WRK_RANGE_BYTES="$RANGE_BYTES" WRK_FILE_SIZE="$LARGE_BYTES")
    code="$(curl -sS --max-time 60 -o "$T/range.got" -w '%{http_code}' -r 1000-$((1000 + RANGE_BYTES - 1)) \
        "$(url_of offload "$LARGE_KEY")")" || die "$name: range request failed"
    [[ $code == 206 ]] || die "$name: a range request answered $code"
    cmp -s "$T/range.got" "$T/range.ref" || die "$name: a range request returned other bytes"
    run_wrk "$(url_of offload "$LARGE_KEY")" "$RANGE_CONNS" "$WARM_S" "${vars[@]}"
    for ((r = 1; r <= ROUNDS; r++)); do
        wrk_round ranges "$name" offload "$LARGE_KEY" "$RANGE_CONNS" "$r" "${vars[@]}"
    done
}
log "proxied: nginx in front of our server ($NGINX_OFFLOAD_URL), no offload"
front_figure proxied
log "offload: our server restarted with ACCEL_REDIRECT_PREFIX=/_files/ behind nginx"
stop_server
SERVER_PORT=$OFFLOAD_PORT start_server "$ROOT" ACCEL_REDIRECT_PREFIX=/_files/
front_figure offload
rm -f "$T/range.got" "$T/range.ref"

# 7. Report.
echo
echo "read: $SMALL_BYTES-byte and $LARGE_MB MiB files, $LIST_FILES-file listing, $(nproc) cores, $LOAD_BEFORE at start; reference = nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (sendfile) on the same files, same run; all warm"
ratio_row() { # FIGURE KEY UNIT TARGET
    local ours=${RPS[$2.ours]} ref=${RPS[$2.nginx]} rt
    rt=$(ratio "$ours" "$ref")
    bench_row "$1" "$ours $3" "$ref $3" "$rt" ">= $4 x nginx" "$(verdict ge "$rt" "$4")"
}
ratio_row "4 KiB file, c$SMALL_CONNS" small req/s $SMALL_TARGET
bench_row "4 KiB: p99 latency" "${P99[small.ours]} ms" "${P99[small.nginx]} ms" "$(ratio "${P99[small.ours]}" "${P99[small.nginx]}")" "-" "info"
bench_row "4 KiB: server CPU per 1k req" "${CPU[small.ours]} ms" "${CPU[small.nginx]} ms" "$(ratio "${CPU[small.ours]}" "${CPU[small.nginx]}")" "-" "info"
LR=$(ratio "${MBPS[ours]}" "${MBPS[nginx]}")
bench_row "$LARGE_MB MiB file, curl, 1 conn" "${MBPS[ours]} MB/s" "${MBPS[nginx]} MB/s" "$LR" ">= $LARGE_TARGET x nginx" "$(verdict ge "$LR" "$LARGE_TARGET")"
bench_row "$LARGE_MB MiB: server CPU / wall" "${LCPU[ours]}" "${LCPU[nginx]}" "-" "-" "info"
ratio_row "64 KiB random ranges, c$RANGE_CONNS" ranges req/s $RANGE_TARGET
bench_row "ranges: p99 latency" "${P99[ranges.ours]} ms" "${P99[ranges.nginx]} ms" "$(ratio "${P99[ranges.ours]}" "${P99[ranges.nginx]}")" "-" "info"
bench_row "ranges: server CPU per 1k req" "${CPU[ranges.ours]} ms" "${CPU[ranges.nginx]} ms" "$(ratio "${CPU[ranges.ours]}" "${CPU[ranges.nginx]}")" "-" "info"
for name in proxied offload; do
    if [[ $name == proxied ]]; then label="ranges via nginx, proxied"; else label="ranges via nginx + X-Accel"; fi
    bench_row "$label" "${RPS[ranges.$name]} req/s" "${RPS[ranges.nginx]} req/s" "$(ratio "${RPS[ranges.$name]}" "${RPS[ranges.nginx]}")" "-" "info"
    bench_row "  CPU per 1k req, nginx + ours" "${CPU[ranges.$name]} ms" "${CPU[ranges.nginx]} ms" "$(ratio "${CPU[ranges.$name]}" "${CPU[ranges.nginx]}")" "-" "info"
done
bench_row "list $LIST_FILES files: first call" "$FIRST_MS ms" "-" "-" "< $LIST_TARGET_MS ms" "$(verdict lt "$FIRST_MS" "$LIST_TARGET_MS")"
bench_row "list $LIST_FILES files: p50 of $LIST_CALLS" "$P50_MS ms" "-" "-" "< $LIST_TARGET_MS ms" "$(verdict lt "$P50_MS" "$LIST_TARGET_MS")"
bench_row "list $LIST_FILES files: p99 of $LIST_CALLS" "$P99_MS ms" "-" "-" "< $LIST_TARGET_MS ms" "$(verdict lt "$P99_MS" "$LIST_TARGET_MS")"
bench_row "list: server CPU per call" "$LIST_CPU_MS ms" "-" "-" "-" "info"
bench_row "list copied $LIST_FILES (one created_at): p50" "$COPIED_ALL_MS ms" "-" "-" "<= $COPIED_ALL_TARGET_MS ms" "$(verdict le "$COPIED_ALL_MS" "$COPIED_ALL_TARGET_MS")"
bench_row "list copied: page of 100, p50" "$COPIED_PAGE_MS ms" "-" "-" "<= $COPIED_PAGE_TARGET_MS ms" "$(verdict le "$COPIED_PAGE_MS" "$COPIED_PAGE_TARGET_MS")"
bench_table
