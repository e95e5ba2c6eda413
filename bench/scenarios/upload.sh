#!/usr/bin/env bash
# Scenario `upload`: a 1 GiB file uploaded as one raw part (PUT) and as 8 MiB base64 JSON
# parts, against references measured in the same run on the same disk:
#   sha    openssl dgst -sha256 FILE                                (read + hash)
#   disk   dd if=/dev/zero of=TMP bs=8M count=128 conv=fsync        (write + fsync)
# The slower of the two is the reference. Targets:
#   raw end-to-end (PUT start .. complete end)  >= 70% of the reference
#   JSON parts end-to-end (file bytes)          >= 280 MB/s (old Python service: 27.9 MB/s)
#   server peak RSS in each phase               <  64 MiB
# Knobs: BENCH_SIZE_MB (default 1024), BENCH_PART_MIB (default 8), BENCH_SETTLE_S (pause
# before each timed step, default 10; see `settle` in lib/common.sh).
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"

SIZE_MB="${BENCH_SIZE_MB:-1024}"
PART_MIB="${BENCH_PART_MIB:-8}"
RAW_TARGET_RATIO=0.70
JSON_TARGET_MBPS=280
OLD_PYTHON_MBPS=27.9
RSS_LIMIT_MIB=64

for t in curl openssl dd python3 head sync; do
    command -v "$t" >/dev/null || die "needs $t"
done

LOAD_BEFORE="$(machine_load)"
log "$LOAD_BEFORE"
bench_tmpdir
T=$BENCH_TMP
# File, dd target and UPLOAD_ROOT all in one temp dir: same filesystem.
need_free_gib "$T" $(((SIZE_MB * 6 + 1023) / 1024 + 1))
FILE="$T/big.bin"
ROOT="$T/root"
BYTES=$((SIZE_MB * 1024 * 1024))
log "temp dir $T ($(df -h --output=source,avail "$T" | tail -1 | tr -s ' '))"

# 1. The file.
log "writing $SIZE_MB MiB of random data"
head -c "${SIZE_MB}M" /dev/urandom >"$FILE"
sync "$FILE"
[[ $(stat -c %s "$FILE") == "$BYTES" ]] || die "file size"

# 2. References.
t0=$(now)
SHA="$(openssl dgst -sha256 -r "$FILE" | cut -d' ' -f1)"
t1=$(now)
SHA_S=$(elapsed "$t0" "$t1")
SHA_MBPS=$(mbps "$BYTES" "$SHA_S")

settle
t0=$(now)
dd if=/dev/zero of="$T/dd.bin" bs=8M count=$((SIZE_MB / 8)) conv=fsync status=none
t1=$(now)
rm -f "$T/dd.bin"
DD_BYTES=$(((SIZE_MB / 8) * 8 * 1024 * 1024))
DD_S=$(elapsed "$t0" "$t1")
DD_MBPS=$(mbps "$DD_BYTES" "$DD_S")
sync

if lt "$SHA_MBPS" "$DD_MBPS"; then REF=$SHA_MBPS REF_NAME=sha256; else REF=$DD_MBPS REF_NAME=dd; fi
log "references: openssl sha256 $SHA_MBPS MB/s ($SHA_S s), dd+fsync $DD_MBPS MB/s ($DD_S s); reference = $REF_NAME"

# 3. The server.
mkdir -p "$ROOT"
start_server "$ROOT"

# 4. Raw part.
log "raw: PUT $SIZE_MB MiB as one part"
INIT="$(api POST /v1/files/init -H 'Content-Type: application/json' \
    --data "{\"mode\":\"single\",\"files\":[{\"name\":\"big.bin\",\"size\":$BYTES}],\"meta\":{\"user_id\":\"bench\"}}")"
UPLOAD_ID="$(json_get uploadId <<<"$INIT")"

settle
reset_hwm "$SERVER_PID"
rss_sampler_start "$SERVER_PID" "$T/rss-raw"
c0=$(proc_cpu_s "$SERVER_PID")
t0=$(now)
PUT="$(api PUT "/v1/files/part/$UPLOAD_ID/0" -H 'Expect:' -H 'Content-Type: application/octet-stream' -T "$FILE")"
t1=$(now)
c1=$(proc_cpu_s "$SERVER_PID")
DONE="$(api POST /v1/files/complete -H 'Content-Type: application/json' \
    --data "{\"uploadId\":\"$UPLOAD_ID\",\"sha256\":\"$SHA\",\"meta\":{\"user_id\":\"bench\"}}")"
t2=$(now)
c2=$(proc_cpu_s "$SERVER_PID")
rss_sampler_stop
server_alive
RAW_HWM_KIB=$(proc_kib "$SERVER_PID" VmHWM)
RAW_SAMPLED_KIB=$(cat "$T/rss-raw")

[[ $(json_get size <<<"$PUT") == "$BYTES" ]] || die "PUT answered $PUT"
[[ $(json_get sha256 <<<"$DONE") == "$SHA" ]] || die "complete returned sha256 $(json_get sha256 <<<"$DONE"), file has $SHA"
[[ $(json_get size <<<"$DONE") == "$BYTES" ]] || die "complete returned size $(json_get size <<<"$DONE")"
KEY="$(json_get key <<<"$DONE")"
[[ -f "$ROOT/$KEY" ]] || die "no file at $ROOT/$KEY"
[[ $(stat -c %s "$ROOT/$KEY") == "$BYTES" ]] || die "stored file has the wrong size"

PUT_S=$(elapsed "$t0" "$t1")
COMPLETE_S=$(elapsed "$t1" "$t2")
RAW_S=$(elapsed "$t0" "$t2")
PUT_MBPS=$(mbps "$BYTES" "$PUT_S")
RAW_MBPS=$(mbps "$BYTES" "$RAW_S")
PUT_CPU=$(elapsed "$c0" "$c1")
COMPLETE_CPU=$(elapsed "$c1" "$c2")
log "raw: PUT $PUT_S s (server CPU $PUT_CPU s), complete $COMPLETE_S s (server CPU $COMPLETE_CPU s), end-to-end $RAW_S s; peak RSS $((RAW_HWM_KIB / 1024)) MiB (sampled $((RAW_SAMPLED_KIB / 1024)) MiB)"
rm -f "$ROOT/$KEY" "$ROOT/$KEY.meta"
sync

# 6. Base64 JSON parts.
log "json: $SIZE_MB MiB as ${PART_MIB} MiB base64 parts"
# The client encodes the bodies, settles (--settle), then sends: the samplers start now,
# the server's CPU is counted from here (it idles while the client encodes).
reset_hwm "$SERVER_PID"
rss_sampler_start "$SERVER_PID" "$T/rss-json"
c0=$(proc_cpu_s "$SERVER_PID")
JSON_OUT="$(python3 "$BENCH_LIB/json_parts.py" "$SERVER_URL" "$BENCH_TOKEN" "$FILE" "$SHA" \
    --part-mib "$PART_MIB" --settle "${BENCH_SETTLE_S:-10}")" \
    || die "JSON part upload failed"
c1=$(proc_cpu_s "$SERVER_PID")
rss_sampler_stop
server_alive
JSON_HWM_KIB=$(proc_kib "$SERVER_PID" VmHWM)
JSON_SAMPLED_KIB=$(cat "$T/rss-json")
jget() { json_get "$1" <<<"$JSON_OUT"; }
JSON_S=$(printf '%.3f' "$(jget end_to_end_s)")
JSON_PARTS_S=$(printf '%.3f' "$(jget parts_s)")
JSON_COMPLETE_S=$(printf '%.3f' "$(jget complete_s)")
JSON_B64_S=$(printf '%.3f' "$(jget client_b64_s)")
JSON_MBPS=$(mbps "$BYTES" "$JSON_S")
JSON_PARTS_MBPS=$(mbps "$BYTES" "$JSON_PARTS_S")
JSON_CPU=$(elapsed "$c0" "$c1")
log "json: client base64-encoded the bodies in $JSON_B64_S s (before the clock); $(jget parts) parts in $JSON_PARTS_S s (per part: median $(printf '%.3f' "$(jget part_s_median)") s, max $(printf '%.3f' "$(jget part_s_max)") s), complete $JSON_COMPLETE_S s, end-to-end $JSON_S s; server CPU $JSON_CPU s; peak RSS $((JSON_HWM_KIB / 1024)) MiB (sampled $((JSON_SAMPLED_KIB / 1024)) MiB)"
JSON_KEY="$(jget key)"
[[ $(stat -c %s "$ROOT/$JSON_KEY") == "$BYTES" ]] || die "stored JSON-part file has the wrong size"

# 7. Report.
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
RAW_PEAK=$(mib "$((RAW_HWM_KIB > RAW_SAMPLED_KIB ? RAW_HWM_KIB : RAW_SAMPLED_KIB))")
JSON_PEAK=$(mib "$((JSON_HWM_KIB > JSON_SAMPLED_KIB ? JSON_HWM_KIB : JSON_SAMPLED_KIB))")
RAW_TARGET=$(awk -v r="$REF" -v t="$RAW_TARGET_RATIO" 'BEGIN { printf "%.1f", r * t }')

echo
echo "upload: $SIZE_MB MiB random file, $(nproc) cores, $LOAD_BEFORE at start; reference = slower of sha256 / dd+fsync = $REF_NAME $REF MB/s"
bench_row "ref: openssl dgst -sha256" "$SHA_MBPS MB/s" "-" "-" "-" "ref"
bench_row "ref: dd bs=8M conv=fsync" "$DD_MBPS MB/s" "-" "-" "-" "ref"
bench_row "raw PUT part" "$PUT_MBPS MB/s" "$REF MB/s" "$(ratio "$PUT_MBPS" "$REF")" "-" "info"
bench_row "raw PUT part, server CPU" "$PUT_CPU s" "$PUT_S s wall" "$(ratio "$PUT_CPU" "$PUT_S")" "-" "info"
bench_row "raw complete (check+fsync+link)" "$COMPLETE_S s" "-" "-" "-" "info"
bench_row "raw complete, server CPU" "$COMPLETE_CPU s" "$COMPLETE_S s wall" "$(ratio "$COMPLETE_CPU" "$COMPLETE_S")" "-" "info"
bench_row "raw end-to-end (PUT+complete)" "$RAW_MBPS MB/s" "$REF MB/s" "$(ratio "$RAW_MBPS" "$REF")" ">= 0.70 x ref ($RAW_TARGET)" \
    "$(verdict ge "$RAW_MBPS" "$RAW_TARGET")"
bench_row "raw peak RSS" "$RAW_PEAK MiB" "$RSS_LIMIT_MIB MiB limit" "$(ratio "$RAW_PEAK" "$RSS_LIMIT_MIB")" "< $RSS_LIMIT_MIB MiB" \
    "$(verdict lt "$RAW_PEAK" "$RSS_LIMIT_MIB")"
bench_row "json parts only" "$JSON_PARTS_MBPS MB/s" "$REF MB/s" "$(ratio "$JSON_PARTS_MBPS" "$REF")" "-" "info"
bench_row "json complete" "$JSON_COMPLETE_S s" "-" "-" "-" "info"
bench_row "json server CPU (parts+complete)" "$JSON_CPU s" "$JSON_S s wall" "$(ratio "$JSON_CPU" "$JSON_S")" "-" "info"
bench_row "json end-to-end (file bytes)" "$JSON_MBPS MB/s" "$REF MB/s" "$(ratio "$JSON_MBPS" "$REF")" ">= $JSON_TARGET_MBPS MB/s" \
    "$(verdict ge "$JSON_MBPS" "$JSON_TARGET_MBPS")"
JSON_WITH_B64_MBPS=$(mbps "$BYTES" "$(awk -v a="$JSON_S" -v b="$JSON_B64_S" 'BEGIN { print a + b }')")
bench_row "json + Python client b64 encode" "$JSON_WITH_B64_MBPS MB/s" "$REF MB/s" "$(ratio "$JSON_WITH_B64_MBPS" "$REF")" "-" "info"
bench_row "json vs old Python service" "$JSON_MBPS MB/s" "$OLD_PYTHON_MBPS MB/s" "$(ratio "$JSON_MBPS" "$OLD_PYTHON_MBPS")" "-" "info"
bench_row "json peak RSS" "$JSON_PEAK MiB" "$RSS_LIMIT_MIB MiB limit" "$(ratio "$JSON_PEAK" "$RSS_LIMIT_MIB")" "< $RSS_LIMIT_MIB MiB" \
    "$(verdict lt "$JSON_PEAK" "$RSS_LIMIT_MIB")"
bench_table
