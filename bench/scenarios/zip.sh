#!/usr/bin/env bash
# Scenario `zip` (issue 5): the streamed batch ZIP of 8 files of 64 MiB, uploaded through
# the API, beside `cat` of the same 8 files into /dev/null in the same run.
#
#   first byte   curl's time_starttransfer of GET /v1/files/batch-download/{token}  < 50 ms
#   throughput   archive bytes / curl's time_total, to /dev/null      >= 0.8 x cat of the files
#   peak RSS     VmHWM (reset through /proc/PID/clear_refs) and VmRSS sampled every 100 ms
#                during the downloads, the larger                                    < 64 MiB
#
# Warm: the files were just uploaded and nothing is dropped from the page cache, for the
# server and for `cat` alike. BENCH_ZIP_RUNS (3) rounds of (cat, download); the best
# throughput of each counts, the first byte of the very first download (the token's first
# use) and the worst of the later ones are both held to the target, the peak RSS is the
# highest of all downloads. Then one more download into a file is verified: Content-Length
# equals the bytes received, Python's zipfile testzip() passes and every entry has the
# name, size and SHA-256 of the uploaded file; anything else breaks the run.
# Info rows: the same 8 files fetched one by one from our /storage and from nginx
# (sendfile) with one curl each, the HTTP ceiling on this machine without any ZIP work.
# Knobs: BENCH_ZIP_FILES (8), BENCH_ZIP_FILE_MB (64), BENCH_ZIP_RUNS (3).
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"
# shellcheck source=../lib/nginx.sh
source "$BENCH_LIB/nginx.sh"

NFILES="${BENCH_ZIP_FILES:-8}"
FILE_MB="${BENCH_ZIP_FILE_MB:-64}"
RUNS="${BENCH_ZIP_RUNS:-3}"
TTFB_TARGET_MS=50
RSS_LIMIT_MIB=64
TPUT_TARGET=0.8

for t in curl python3 sha256sum cat head; do
    command -v "$t" >/dev/null || die "needs $t"
done

LOAD_BEFORE="$(machine_load)"
log "$LOAD_BEFORE"
bench_tmpdir
T=$BENCH_TMP
ROOT="$T/root"
FILE_BYTES=$((FILE_MB * 1024 * 1024))
TOTAL_BYTES=$((NFILES * FILE_BYTES))
need_free_gib "$T" $(((TOTAL_BYTES * 3 / 1024 / 1024 + 1023) / 1024 + 1))
log "temp dir $T ($(df -h --output=source,avail "$T" | tail -1 | tr -s ' '))"
mkdir -p "$ROOT"
start_server "$ROOT"

# 1. The files, through the API.
KEYS=()
: >"$T/expected"
for ((i = 1; i <= NFILES; i++)); do
    name="$(printf 'zip%02d.bin' "$i")"
    head -c "${FILE_MB}M" /dev/urandom >"$T/$name"
    sha="$(sha256sum "$T/$name" | cut -d' ' -f1)"
    KEYS+=("$(upload_raw bench "$name" "$T/$name")")
    printf '%s\t%s\t%s\n' "$name" "$FILE_BYTES" "$sha" >>"$T/expected"
    rm -f "$T/$name"
done
PATHS=()
for k in "${KEYS[@]}"; do
    [[ $(stat -c %s "$ROOT/$k") == "$FILE_BYTES" ]] || die "$k has the wrong size on disk"
    PATHS+=("$ROOT/$k")
done
log "uploaded $NFILES x $FILE_MB MiB"

BODY="$(python3 -c 'import json, sys; print(json.dumps({"keys": sys.argv[1:]}))' "${KEYS[@]}")"
TOKEN="$(api POST /v1/files/batch-download -H 'Content-Type: application/json' --data "$BODY" | json_get token)"
ZIP_URL="$SERVER_URL/v1/files/batch-download/$TOKEN"

# download OUT -> "code bytes ttfb_s total_s content_length"; headers in $T/headers
download() {
    local out=$1 code got ttfb total cl
    read -r code got ttfb total < <(curl -sS --max-time "${BENCH_HTTP_TIMEOUT:-600}" -o "$out" -D "$T/headers" \
        -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' "$ZIP_URL") || true
    [[ ${code:-000} == 200 ]] || die "GET batch-download answered ${code:-nothing}"
    cl="$(tr -d '\r' <"$T/headers" | awk 'tolower($1) == "content-length:" { print $2 }')"
    [[ -n $cl ]] || die "the archive came without Content-Length"
    [[ $cl == "$got" ]] || die "Content-Length $cl but $got bytes received"
    echo "$code $got $ttfb $total $cl"
}

# 2. Rounds of (cat, download), both warm.
CAT_BEST="" ZIP_BEST="" FIRST_TTFB_MS="" LATER_TTFB_MS=0 PEAK_KIB=0 ZIP_CPU="" ZIP_BYTES=""
for ((r = 1; r <= RUNS; r++)); do
    t0=$(now)
    cat "${PATHS[@]}" >/dev/null
    t1=$(now)
    v=$(mbps "$TOTAL_BYTES" "$(elapsed "$t0" "$t1")")
    log "cat round $r: $v MB/s ($(elapsed "$t0" "$t1") s)"
    if [[ -z $CAT_BEST ]] || ge "$v" "$CAT_BEST"; then CAT_BEST=$v; fi

    reset_hwm "$SERVER_PID"
    rss_sampler_start "$SERVER_PID" "$T/rss"
    c0=$(proc_cpu_s "$SERVER_PID")
    got=""
    read -r _ got ttfb total _ < <(download /dev/null) || true
    [[ -n $got ]] || die "download failed"
    c1=$(proc_cpu_s "$SERVER_PID")
    rss_sampler_stop
    server_alive
    hwm=$(proc_kib "$SERVER_PID" VmHWM)
    sampled=$(cat "$T/rss")
    peak=$((hwm > sampled ? hwm : sampled))
    ((peak > PEAK_KIB)) && PEAK_KIB=$peak
    ttfb_ms=$(awk -v s="$ttfb" 'BEGIN { printf "%.1f", s * 1000 }')
    if [[ -z $FIRST_TTFB_MS ]]; then FIRST_TTFB_MS=$ttfb_ms; else LATER_TTFB_MS=$(max_of "$LATER_TTFB_MS" "$ttfb_ms"); fi
    v=$(mbps "$got" "$total")
    log "zip round $r: $got bytes, first byte $ttfb_ms ms, $v MB/s ($total s, server CPU $(elapsed "$c0" "$c1") s), peak RSS $(kib_to_mib "$peak") MiB (VmHWM $(kib_to_mib "$hwm"), sampled $(kib_to_mib "$sampled"))"
    if [[ -z $ZIP_BEST ]] || ge "$v" "$ZIP_BEST"; then
        ZIP_BEST=$v
        ZIP_CPU="$(elapsed "$c0" "$c1") s / $(printf '%.3f' "$total") s"
    fi
    ZIP_BYTES=$got
done

# 3. One more download into a file, verified.
got=""
read -r _ got ttfb total _ < <(download "$T/out.zip") || true
[[ -n $got ]] || die "download failed"
[[ $(stat -c %s "$T/out.zip") == "$got" ]] || die "the saved archive has the wrong size"
[[ $got == "$ZIP_BYTES" ]] || die "the archive changed size between downloads ($ZIP_BYTES, then $got)"
VERIFY="$(python3 "$BENCH_LIB/zipverify.py" "$T/out.zip" "$T/expected")" || die "the archive does not verify"
log "archive verified: $got bytes = Content-Length, zipfile testzip OK in $(json_get testzip_s <<<"$VERIFY") s, $NFILES entries with the uploaded names, sizes and SHA-256"
rm -f "$T/out.zip"

# 4. Info: the same files over plain HTTP, one by one, ours and nginx.
start_nginx "$ROOT"
plain_get() { # BASE -> seconds for all files, one curl, one connection
    local base=$1 args=() k total
    for k in "${KEYS[@]}"; do args+=(-o /dev/null "$base/$k"); done
    total="$(curl -sS --fail --max-time 600 -w '%{time_total}\n' "${args[@]}" | awk '{ s += $1 } END { printf "%.3f", s }')" \
        || die "GET of the files from $base failed"
    echo "$total"
}
PLAIN_OURS=$(mbps "$TOTAL_BYTES" "$(plain_get "$SERVER_URL")")
PLAIN_NGINX=$(mbps "$TOTAL_BYTES" "$(plain_get "$NGINX_URL")")
log "plain GETs of the $NFILES files: ours $PLAIN_OURS MB/s, nginx $PLAIN_NGINX MB/s"

# 5. Report.
echo
echo "zip: $NFILES x $FILE_MB MiB, Stored archive of $ZIP_BYTES bytes, $(nproc) cores, $LOAD_BEFORE at start; reference = cat of the same files > /dev/null, same run; all warm (page cache kept), best of $RUNS"
bench_row "ref: cat files > /dev/null" "$CAT_BEST MB/s" "-" "-" "-" "ref"
bench_row "first byte, first GET" "$FIRST_TTFB_MS ms" "-" "-" "< $TTFB_TARGET_MS ms" "$(verdict lt "$FIRST_TTFB_MS" "$TTFB_TARGET_MS")"
if ((RUNS > 1)); then
    bench_row "first byte, later GETs (max)" "$LATER_TTFB_MS ms" "-" "-" "< $TTFB_TARGET_MS ms" "$(verdict lt "$LATER_TTFB_MS" "$TTFB_TARGET_MS")"
fi
ZR=$(ratio "$ZIP_BEST" "$CAT_BEST")
bench_row "zip download throughput" "$ZIP_BEST MB/s" "$CAT_BEST MB/s" "$ZR" ">= $TPUT_TARGET x cat" "$(verdict ge "$ZR" "$TPUT_TARGET")"
bench_row "zip: server CPU / wall" "$ZIP_CPU" "-" "-" "-" "info"
PEAK_MIB=$(kib_to_mib "$PEAK_KIB")
bench_row "zip peak RSS" "$PEAK_MIB MiB" "$RSS_LIMIT_MIB MiB limit" "$(ratio "$PEAK_MIB" "$RSS_LIMIT_MIB")" "< $RSS_LIMIT_MIB MiB" "$(verdict lt "$PEAK_MIB" "$RSS_LIMIT_MIB")"
bench_row "plain GETs via our /storage" "$PLAIN_OURS MB/s" "$CAT_BEST MB/s" "$(ratio "$PLAIN_OURS" "$CAT_BEST")" "-" "info"
bench_row "plain GETs via nginx" "$PLAIN_NGINX MB/s" "$CAT_BEST MB/s" "$(ratio "$PLAIN_NGINX" "$CAT_BEST")" "-" "info"
bench_row "zip vs plain GETs via nginx" "$ZIP_BEST MB/s" "$PLAIN_NGINX MB/s" "$(ratio "$ZIP_BEST" "$PLAIN_NGINX")" "-" "info"
bench_row "archive verified" "testzip OK" "-" "-" "CL = bytes, testzip" "PASS"
bench_table
