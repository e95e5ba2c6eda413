#!/usr/bin/env bash
# Scenario `tus`: a 1 GiB file uploaded with tus 1.0 to our server (/v1/files/tus/) and to
# @tus/server 2.4.5 with @tus/file-store (bench/tus-node/server.mjs, its store in the same
# temp dir), each as ONE PATCH and as 8 MiB PATCHes, beside `dd if=FILE of=... bs=8M
# conv=fsync` of the same file; BENCH_ROUNDS rounds (default 3), the order of the steps
# alternating from round to round. The client is curl for every step: creation POST, then
# `curl -T FILE` for one PATCH, or one curl over one keep-alive connection with `--next`
# per 8 MiB piece (pieces cut by `split` before the clock). Timed from the POST to the last
# answer; ours publishes on that last PATCH (SHA-256 and CRC-32 hashed as bytes come,
# file fsynced and linked), @tus/server does neither.
# Targets: ours >= @tus/server in each pattern, >= 0.9 x dd, our peak RSS < 64 MiB.
# Checks: our sidecar's sha256 and @tus/server's stored bytes equal the file's SHA-256.
# Knobs: BENCH_SIZE_MB (1024), BENCH_TUS_CHUNK_MIB (8), BENCH_ROUNDS (3), BENCH_SETTLE_S.
# Needs node >= 20.19 and npm (@tus/server's engines); installs bench/tus-node with npm ci.
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"

SIZE_MB="${BENCH_SIZE_MB:-1024}"
CHUNK_MIB="${BENCH_TUS_CHUNK_MIB:-8}"
ROUNDS="${BENCH_ROUNDS:-3}"
DD_TARGET_RATIO=0.90
RSS_LIMIT_MIB=64
: "${BENCH_DIR:=$(cd "$BENCH_LIB/.." && pwd)}"
PEER_DIR="$BENCH_DIR/tus-node"

for t in curl openssl dd split python3 node npm sync; do
    command -v "$t" >/dev/null || die "needs $t"
done

# @tus/server, from the committed lockfile; npm ci only when it changed since last time.
stamp="$PEER_DIR/node_modules/.installed-package-lock.json"
if ! cmp -s "$PEER_DIR/package-lock.json" "$stamp"; then
    log "npm ci in $PEER_DIR"
    (cd "$PEER_DIR" && npm ci --no-audit --no-fund >&2)
    cp "$PEER_DIR/package-lock.json" "$stamp"
fi

LOAD_BEFORE="$(machine_load)"
log "$LOAD_BEFORE"
bench_tmpdir
T=$BENCH_TMP
# File, pieces, dd target and both stores in one temp dir: the same filesystem.
need_free_gib "$T" $(((SIZE_MB * 4 + 1023) / 1024 + 1))
FILE="$T/big.bin"
BYTES=$((SIZE_MB * 1024 * 1024))
CHUNK=$((CHUNK_MIB * 1024 * 1024))
log "temp dir $T ($(df -h --output=source,avail "$T" | tail -1 | tr -s ' '))"

log "writing $SIZE_MB MiB of random data, and its ${CHUNK_MIB} MiB pieces"
head -c "${SIZE_MB}M" /dev/urandom >"$FILE"
mkdir "$T/pieces"
split -b "$CHUNK" -d -a 5 "$FILE" "$T/pieces/p."
sync
SHA="$(openssl dgst -sha256 -r "$FILE" | cut -d' ' -f1)"

# Our server, and the peer.
ROOT="$T/root"
mkdir -p "$ROOT"
start_server "$ROOT"
PEER_STORE="$T/tus-node"
mkdir -p "$PEER_STORE"
PEER_LOG="$T/tus-node.log"
: >"$PEER_LOG"
TUS_DIR="$PEER_STORE" node "$PEER_DIR/server.mjs" >"$PEER_LOG" 2>&1 &
PEER_PID=$!
bench_on_exit "kill $PEER_PID 2>/dev/null; wait $PEER_PID 2>/dev/null"
for ((i = 0; i < 100; i++)); do
    grep -q '^listening on ' "$PEER_LOG" && break
    kill -0 "$PEER_PID" 2>/dev/null || { cat "$PEER_LOG" >&2; die "@tus/server exited at start"; }
    sleep 0.1
done
PEER_URL="http://127.0.0.1:$(sed -n 's/^listening on //p' "$PEER_LOG")"
log "@tus/server pid $PEER_PID on $PEER_URL"

OURS_HEADERS=(-H "X-Service-Token: $BENCH_TOKEN" -H "Upload-Metadata: user_id YmVuY2g=,filename YmlnLmJpbg==")
PEER_HEADERS=(-H "Upload-Metadata: filename YmlnLmJpbg==")
TUS=(-H 'Tus-Resumable: 1.0.0')
PATCH_H=(-H 'Content-Type: application/offset+octet-stream' -H 'Expect:')

# tus_upload BASE CREATE_PATH one|chunks HEADER-ARGS...: creates an upload of FILE and sends
# it; sets UP_S (seconds, POST to last answer), UP_URL (the upload's path) and UP_KEY (our
# X-Upload-Key, empty from the peer). Dies unless every PATCH answers 204.
tus_upload() {
    local base=$1 create=$2 how=$3 t0 t1 out codes
    shift 3
    local auth=("$@")
    out="$T/curl.out"
    t0=$(now)
    curl -sS --max-time 30 -o /dev/null -D "$out" -X POST "${TUS[@]}" "${auth[@]}" \
        -H "Upload-Length: $BYTES" "$base$create" || die "POST $create failed"
    UP_URL="$(tr -d '\r' <"$out" | sed -n 's/^[Ll]ocation: *//p')"
    [[ -n $UP_URL ]] || die "POST $create: no Location ($(head -1 "$out"))"
    # Relative (ours) or absolute (@tus/server): the path.
    [[ $UP_URL == http* ]] && UP_URL="/${UP_URL#http*://*/}"
    if [[ $how == one ]]; then
        codes="$(curl -sS --max-time "${BENCH_HTTP_TIMEOUT:-600}" -o /dev/null \
            -w '%{http_code} %header{x-upload-key}\n' -X PATCH "${TUS[@]}" "${auth[@]}" "${PATCH_H[@]}" \
            -H 'Upload-Offset: 0' -T "$FILE" "$base$UP_URL")" || die "PATCH failed"
    else
        local args=() offset=0 p first=1
        for p in "$T"/pieces/p.*; do
            ((first)) || args+=(--next)
            first=0
            args+=(-sS -o /dev/null -w '%{http_code} %header{x-upload-key}\n' -X PATCH "${TUS[@]}" "${auth[@]}"
                "${PATCH_H[@]}" -H "Upload-Offset: $offset" -T "$p" "$base$UP_URL")
            offset=$((offset + $(stat -c %s "$p")))
        done
        codes="$(curl --max-time "${BENCH_HTTP_TIMEOUT:-600}" "${args[@]}")" || die "PATCHes failed"
    fi
    t1=$(now)
    if grep -qv '^204 ' <<<"$codes"; then
        die "a PATCH did not answer 204: $(grep -v '^204 ' <<<"$codes" | head -3)"
    fi
    UP_PATCHES=$(wc -l <<<"$codes")
    UP_KEY="$(tail -1 <<<"$codes" | cut -s -d' ' -f2)"
    UP_S=$(elapsed "$t0" "$t1")
}

# One step of a round: ours|peer one|chunks. Sets STEP_MBPS (and, for ours, STEP_RSS_MIB).
step() {
    local who=$1 how=$2 c0 c1 hwm sampled
    settle
    if [[ $who == ours ]]; then
        reset_hwm "$SERVER_PID"
        rss_sampler_start "$SERVER_PID" "$T/rss"
        c0=$(proc_cpu_s "$SERVER_PID")
        tus_upload "$SERVER_URL" /v1/files/tus/ "$how" "${OURS_HEADERS[@]}"
        c1=$(proc_cpu_s "$SERVER_PID")
        rss_sampler_stop
        server_alive
        hwm=$(proc_kib "$SERVER_PID" VmHWM)
        sampled=$(cat "$T/rss")
        STEP_RSS_MIB=$(kib_to_mib "$((hwm > sampled ? hwm : sampled))")
        [[ -n $UP_KEY ]] || die "ours: no X-Upload-Key on the last PATCH"
        local meta
        meta="$(api GET "/v1/files/metadata/$UP_KEY")"
        [[ $(json_get sha256 <<<"$meta") == "$SHA" ]] || die "ours: sidecar sha256 $(json_get sha256 <<<"$meta"), file $SHA"
        [[ $(json_get size <<<"$meta") == "$BYTES" ]] || die "ours: stored size $(json_get size <<<"$meta")"
        rm -f "$ROOT/$UP_KEY" "$ROOT/$UP_KEY.meta"
        log "ours, $how: $UP_PATCHES PATCH(es), $UP_S s, server CPU $(elapsed "$c0" "$c1") s, peak RSS $STEP_RSS_MIB MiB"
    else
        reset_hwm "$PEER_PID"
        c0=$(proc_cpu_s "$PEER_PID")
        tus_upload "$PEER_URL" /files "$how" "${PEER_HEADERS[@]}"
        c1=$(proc_cpu_s "$PEER_PID")
        kill -0 "$PEER_PID" 2>/dev/null || { tail -20 "$PEER_LOG" >&2; die "@tus/server died"; }
        local id=${UP_URL##*/}
        [[ $(stat -c %s "$PEER_STORE/$id") == "$BYTES" ]] || die "@tus/server stored $(stat -c %s "$PEER_STORE/$id") bytes"
        [[ $(openssl dgst -sha256 -r "$PEER_STORE/$id" | cut -d' ' -f1) == "$SHA" ]] || die "@tus/server stored other bytes"
        rm -f "$PEER_STORE/$id" "$PEER_STORE/$id.json"
        log "@tus/server, $how: $UP_PATCHES PATCH(es), $UP_S s, server CPU $(elapsed "$c0" "$c1") s, peak RSS $(kib_to_mib "$(proc_kib "$PEER_PID" VmHWM)") MiB"
    fi
    STEP_MBPS=$(mbps "$BYTES" "$UP_S")
}

dd_step() {
    settle
    local t0 t1
    t0=$(now)
    dd if="$FILE" of="$T/dd.bin" bs=8M conv=fsync status=none
    t1=$(now)
    rm -f "$T/dd.bin"
    DD_MBPS=$(mbps "$BYTES" "$(elapsed "$t0" "$t1")")
    log "dd bs=8M conv=fsync: $DD_MBPS MB/s"
}

declare -A R
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS ($(machine_load))"
    # Odd rounds: dd last, ours before the peer; even rounds: dd first, the peer before ours.
    if ((r % 2 == 1)); then order=(ours peer); else order=(peer ours); dd_step; fi
    for how in one chunks; do
        for who in "${order[@]}"; do
            step "$who" "$how"
            R[$r,$who,$how]=$STEP_MBPS
            if [[ $who == ours ]]; then R[$r,rss,$how]=$STEP_RSS_MIB; fi
        done
    done
    if ((r % 2 == 1)); then dd_step; fi
    R[$r,dd]=$DD_MBPS
done

# Report: one block of rows per round, then the ranges.
echo
echo "tus: $SIZE_MB MiB random file, ${CHUNK_MIB} MiB PATCHes, $ROUNDS rounds, $(nproc) cores, $LOAD_BEFORE at start"
range() { tr ' ' '\n' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
for how in one chunks; do
    label=$([[ $how == one ]] && echo "1 PATCH" || echo "${CHUNK_MIB} MiB PATCHes")
    vs_peer="" vs_dd="" ours_all="" peer_all="" rss_all=""
    for ((r = 1; r <= ROUNDS; r++)); do
        o=${R[$r,ours,$how]} p=${R[$r,peer,$how]} d=${R[$r,dd]} m=${R[$r,rss,$how]}
        bench_row "r$r ours, $label" "$o MB/s" "@tus/server $p MB/s" "$(ratio "$o" "$p")" ">= 1.0 x @tus/server" \
            "$(verdict ge "$(ratio "$o" "$p")" 1.0)"
        bench_row "r$r ours, $label vs dd" "$o MB/s" "dd $d MB/s" "$(ratio "$o" "$d")" ">= $DD_TARGET_RATIO x dd" \
            "$(verdict ge "$(ratio "$o" "$d")" "$DD_TARGET_RATIO")"
        bench_row "r$r ours, $label, peak RSS" "$m MiB" "$RSS_LIMIT_MIB MiB limit" "$(ratio "$m" "$RSS_LIMIT_MIB")" \
            "< $RSS_LIMIT_MIB MiB" "$(verdict lt "$m" "$RSS_LIMIT_MIB")"
        vs_peer+=" $(ratio "$o" "$p")" vs_dd+=" $(ratio "$o" "$d")"
        ours_all+=" $o" peer_all+=" $p" rss_all+=" $m"
    done
    bench_row "all: ours, $label" "$(range <<<"${ours_all# }") MB/s" "@tus/server $(range <<<"${peer_all# }") MB/s" \
        "$(range <<<"${vs_peer# }")" "-" "info"
    bench_row "all: ours, $label vs dd" "$(range <<<"${vs_dd# }")" "-" "-" "-" "info"
    bench_row "all: ours, $label, peak RSS" "$(range <<<"${rss_all# }") MiB" "-" "-" "-" "info"
done
dd_all=""
for ((r = 1; r <= ROUNDS; r++)); do
    dd_all+=" ${R[$r,dd]}"
done
bench_row "all: dd bs=8M conv=fsync" "$(range <<<"${dd_all# }") MB/s" "-" "-" "-" "ref"
bench_table
