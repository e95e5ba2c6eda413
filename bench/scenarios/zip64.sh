#!/usr/bin/env bash
# Scenario `zip64` (issue 5): a batch ZIP past 4 GiB must be a valid ZIP64 archive.
#
# A sparse file of BENCH_ZIP64_MB (4608 = 4.5 GiB) is placed directly on disk at
# UPLOAD_ROOT/storage/big/0badcafe_sparse.bin (`truncate -s`, no sidecar: a file of the
# old service, so the server computes its CRC-32 on first use), one small file is uploaded
# through the API; a batch of both is downloaded into a file (needs ~5 GiB free), then
#   unzip -t, Python zipfile testzip() (plus names, sizes, the small file's SHA-256 and a
#   ZIP64 end record), and `java tests/tools/ZipCheck.java` (java.util.zip.ZipInputStream,
#   the streaming reader; sizes checked)
# must all accept it. Each check is a PASS/FAIL row; a wrong status, a Content-Length
# other than the bytes received, or a missing tool breaks the run. Reported as info: the
# POST's time (it computes the sparse file's CRC-32, which has no sidecar), the GET's time
# to first byte, the download time and MB/s, the archive size and each check's time.
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"

SPARSE_MB="${BENCH_ZIP64_MB:-4608}"
SPARSE_BYTES=$((SPARSE_MB * 1024 * 1024))

for t in curl python3 sha256sum truncate; do
    command -v "$t" >/dev/null || die "needs $t"
done
need_tool unzip unzip
need_tool java default-jre-headless
ZIPCHECK="$REPO/tests/tools/ZipCheck.java"
[[ -f $ZIPCHECK ]] || die "no $ZIPCHECK"

LOAD_BEFORE="$(machine_load)"
log "$LOAD_BEFORE"
bench_tmpdir
T=$BENCH_TMP
ROOT="$T/root"
need_free_gib "$T" $(((SPARSE_MB + 1023) / 1024 + 2))
log "temp dir $T ($(df -h --output=source,avail "$T" | tail -1 | tr -s ' '))"
mkdir -p "$ROOT"
start_server "$ROOT"

# 1. The files.
head -c 100000 /dev/urandom >"$T/small.txt"
SMALL_SHA="$(sha256sum "$T/small.txt" | cut -d' ' -f1)"
SMALL_KEY="$(upload_raw big small.txt "$T/small.txt")"
SPARSE_KEY="storage/big/0badcafe_sparse.bin"
truncate -s "$SPARSE_BYTES" "$ROOT/$SPARSE_KEY"
log "sparse $SPARSE_KEY: $SPARSE_BYTES bytes, $(du -k "$ROOT/$SPARSE_KEY" | cut -f1) KiB allocated; small $SMALL_KEY"
printf '%s\t%s\t%s\n' sparse.bin "$SPARSE_BYTES" - small.txt 100000 "$SMALL_SHA" >"$T/expected"

BODY="$(python3 -c 'import json, sys; print(json.dumps({"keys": sys.argv[1:]}))' "$SPARSE_KEY" "$SMALL_KEY")"
# The POST records the CRC-32 of files without one (here: reads the 4.5 GiB sparse file).
t0=$(now)
TOKEN="$(api POST /v1/files/batch-download -H 'Content-Type: application/json' --data "$BODY" | json_get token)"
POST_S=$(elapsed "$t0" "$(now)")
log "POST batch-download: $POST_S s"
ZIP_URL="$SERVER_URL/v1/files/batch-download/$TOKEN"

# 2. Download into a file; then a one-byte range of it.
c0=$(proc_cpu_s "$SERVER_PID")
code="" got="" ttfb="" total=""
read -r code got ttfb total < <(curl -sS --max-time "${BENCH_HTTP_TIMEOUT:-900}" -o "$T/out.zip" -D "$T/headers" \
    -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' "$ZIP_URL") || true
c1=$(proc_cpu_s "$SERVER_PID")
server_alive
[[ $code == 200 ]] || die "GET batch-download answered ${code:-nothing}"
CL="$(tr -d '\r' <"$T/headers" | awk 'tolower($1) == "content-length:" { print $2 }')"
[[ $CL == "$got" ]] || die "Content-Length ${CL:-none} but $got bytes received"
[[ $(stat -c %s "$T/out.zip") == "$got" ]] || die "the saved archive has the wrong size"
ZIP_BYTES=$got
FIRST_TTFB_MS=$(awk -v s="$ttfb" 'BEGIN { printf "%.1f", s * 1000 }')
DL_S=$(printf '%.3f' "$total")
DL_MBPS=$(mbps "$ZIP_BYTES" "$total")
log "download: $ZIP_BYTES bytes in $DL_S s ($DL_MBPS MB/s), first byte after $FIRST_TTFB_MS ms, server CPU $(elapsed "$c0" "$c1") s"
read -r code ttfb2 < <(curl -sS --max-time 60 -o /dev/null -r 0-0 -w '%{http_code} %{time_starttransfer}\n' "$ZIP_URL") || true
[[ $code == 206 ]] || die "a range of the archive answered ${code:-nothing}"
SECOND_TTFB_MS=$(awk -v s="$ttfb2" 'BEGIN { printf "%.1f", s * 1000 }')

# 3. The readers. A reader that rejects the archive is a FAIL row, not a broken run.
declare -A RES=() SECS=() NOTE=()
check() { # NAME COMMAND...
    local name=$1 t0 t1
    shift
    t0=$(now)
    if "$@" >"$T/check.out" 2>&1; then RES[$name]=PASS; else RES[$name]=FAIL; fi
    t1=$(now)
    SECS[$name]=$(elapsed "$t0" "$t1")
    NOTE[$name]="$(tail -c 300 "$T/check.out" | tr '\n\t' '  ')"
    log "$name: ${RES[$name]} in ${SECS[$name]} s: ${NOTE[$name]}"
}
check "unzip -t" unzip -t "$T/out.zip"
check "python zipfile testzip" python3 "$BENCH_LIB/zipverify.py" "$T/out.zip" "$T/expected"
# An archive past 4 GiB needs the ZIP64 end records (a smaller BENCH_ZIP64_MB need not).
if [[ ${RES[python zipfile testzip]} == PASS ]] && ((ZIP_BYTES >= 0xFFFFFFFF)) \
    && [[ $(json_get zip64 <"$T/check.out") != true ]]; then
    RES[python zipfile testzip]=FAIL
    log "no ZIP64 end-of-central-directory record"
fi
java_check() {
    java "$ZIPCHECK" "$T/out.zip" >"$T/java.out" || return 1
    cat "$T/java.out"
    # name, size, crc per entry; the sizes must be right.
    [[ "$(cut -f1,2 "$T/java.out")" == "$(printf 'sparse.bin\t%s\nsmall.txt\t100000' "$SPARSE_BYTES")" ]]
}
check "java ZipInputStream" java_check

# 4. Report.
echo
echo "zip64: a sparse $SPARSE_MB MiB file (no sidecar) + a 100000-byte file, archive of $ZIP_BYTES bytes, $(nproc) cores, $LOAD_BEFORE at start"
bench_row "archive size" "$ZIP_BYTES bytes" "$((SPARSE_BYTES + 100000)) file bytes" "-" "-" "info"
bench_row "POST batch (CRC-32 of the sparse file)" "$POST_S s" "-" "-" "-" "info"
bench_row "first byte of the GET" "$FIRST_TTFB_MS ms" "-" "-" "-" "info"
bench_row "first byte of a 1-byte range GET" "$SECOND_TTFB_MS ms" "-" "-" "-" "info"
bench_row "download to a file" "$DL_MBPS MB/s" "$DL_S s" "-" "-" "info"
for name in "unzip -t" "python zipfile testzip" "java ZipInputStream"; do
    bench_row "$name" "${SECS[$name]} s" "-" "-" "accepts it" "${RES[$name]}"
done
bench_table
