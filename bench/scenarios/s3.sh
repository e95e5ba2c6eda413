#!/usr/bin/env bash
# Scenario `s3` (issue 14): one instance of the server with STORAGE_BACKEND=s3 beside the
# bucket's own client, in one run, against the same single-node Garage (replication 1) and
# PostgreSQL, all on 127.0.0.1 and started here:
#   upload   a 1 GiB random file (BENCH_S3_SIZE_MB) through POST /v1/files/upload (raw body,
#            service token), timed to the 200 (spooled, sent to the bucket, catalogued),
#            vs `aws s3 cp` of a file of the same size into the same bucket      >= 0.8 x
#            (info: `aws s3api put-object`, one PUT)
#   ranges   random 64 KiB ranges of one such object, wrk with BENCH_S3_RANGE_CONNS (16)
#            connections for BENCH_S3_RANGE_SECONDS (10): GET /storage/{key} vs presigned
#            GETs straight from Garage (`aws s3 presign`), requests/s           >= 0.7 x
#   listing  10,000 files of one user (BENCH_S3_LIST_FILES), uploaded through the API by
#            16 clients, then GET /v1/files/all BENCH_S3_LIST_CALLS (200) times: p50 <= 50 ms
#   init     POST /v1/files/init (single) for that user, BENCH_S3_INIT_CALLS (200) times:
#            p50 <= 5 ms
#   RSS      our peak RSS during the uploads (VmHWM reset before each, VmRSS sampled) < 64 MiB
#   parts    a 1 GiB three-step upload in 8 MiB raw parts sent in order: the complete's
#            time (they went into one multipart upload: nothing is copied)       < 1 s
#            (info: the same in 1 MiB parts, joined through the instance)
# Each figure runs BENCH_S3_ROUNDS (3) times, the order of ours and the reference
# alternating; the table shows the median with the min-max of the rounds, and a ratio is the
# median of the rounds' ratios. Every upload sends a new random file: Garage stores blocks
# by their hash, so a second upload of the same bytes would write nothing. Each timed
# upload starts after `settle` (BENCH_SETTLE_S, 10 s). PostgreSQL runs with its defaults
# (fsync on): the catalog is part of what is measured (BENCH_S3_PG_OPTS adds `-c` options).
# Details: bench/README.md. Needs garage (BENCH_GARAGE_BIN; without it SKIPPED), PostgreSQL
# (initdb, pg_ctl, psql), the aws CLI, wrk, curl, openssl.
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"
# shellcheck source=../lib/s3stack.sh
source "$BENCH_LIB/s3stack.sh"
# shellcheck source=../lib/wrk.sh
source "$BENCH_LIB/wrk.sh"

SIZE_MB=${BENCH_S3_SIZE_MB:-1024}
ROUNDS=${BENCH_S3_ROUNDS:-3}
RANGE_CONNS=${BENCH_S3_RANGE_CONNS:-16}
RANGE_SECS=${BENCH_S3_RANGE_SECONDS:-10}
WARM_S=${BENCH_S3_WARMUP_S:-2}
LIST_FILES=${BENCH_S3_LIST_FILES:-10000}
LIST_CALLS=${BENCH_S3_LIST_CALLS:-200}
INIT_CALLS=${BENCH_S3_INIT_CALLS:-200}
FILL_CLIENTS=${BENCH_S3_FILL_CLIENTS:-16}
read -r -a PG_OPTS <<<"${BENCH_S3_PG_OPTS:-}"
RANGE_BYTES=65536
UPLOAD_TARGET=0.8
RANGE_TARGET=0.7
LIST_TARGET_MS=50
INIT_TARGET_MS=5
RSS_LIMIT_MIB=64
BYTES=$((SIZE_MB * 1024 * 1024))
((ROUNDS >= 1 && SIZE_MB >= 1)) || die "BENCH_S3_ROUNDS and BENCH_S3_SIZE_MB must be >= 1"

for t in curl python3 openssl sha256sum head cmp dd sync; do
    command -v "$t" >/dev/null || die "needs $t"
done
command -v aws >/dev/null || die "needs the aws CLI (pip install awscli, or apt-get install awscli)"
need_tool wrk wrk
if ! find_garage; then
    echo "s3: SKIPPED: no garage binary (BENCH_GARAGE_BIN, PATH, ~/.cargo/bin); build it with"
    echo "    cargo install garage@2.5.0 --locked     # about 40 min on 2 cores, into ~/.cargo/bin"
    bench_row "s3" "skipped (no garage binary)" - - - skip
    exit 0
fi
find_postgres
[[ -x $BENCH_BIN ]] || die "no server binary at $BENCH_BIN (run bench/run, which builds it)"

LOAD_BEFORE="$(machine_load)"
log "$LOAD_BEFORE"
bench_tmpdir
T=$BENCH_TMP
# Garage keeps every upload (3 per round, 2 three-step ones), plus the file being sent and
# our spool copy (or the parts' objects).
need_free_gib "$T" $(((SIZE_MB * (3 * ROUNDS + 4) + 1023) / 1024 + 1))
# PostgreSQL runs as the postgres user: it must reach its folder inside.
chmod 0711 "$T"
# At exit (also on a timeout; our server is stopped first by start_server's own handler):
# Garage gets SIGTERM, SIGKILL after 10 s; PostgreSQL stops at once.
stop_stack() {
    local p k alive
    for p in "${G_PID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for ((k = 0; k < 100; k++)); do
        alive=0
        for p in "${G_PID[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${G_PID[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pg_stop
}
bench_on_exit stop_stack
echo "s3: ${SIZE_MB} MiB uploads, $ROUNDS rounds, $(nproc) cores, $LOAD_BEFORE at start"

# ---------------------------------------------------------------- the stack

pg_start "${PG_OPTS[@]}"
garage_cluster 1 1 100G lmdb
S3_URL=http://127.0.0.1:${G_S3[1]}
GARAGE_PID=${G_PID[1]}
# The aws CLI: its own config in the temp dir (region garage, path-style addressing), the
# key in its environment only.
AWS_DIR=$T/aws
mkdir -p "$AWS_DIR"
awsc() {
    AWS_CONFIG_FILE=$AWS_DIR/config AWS_SHARED_CREDENTIALS_FILE=$AWS_DIR/credentials \
        AWS_ACCESS_KEY_ID=$S3_KEY_ID AWS_SECRET_ACCESS_KEY=$S3_SECRET \
        timeout -k 5 "${BENCH_HTTP_TIMEOUT:-600}" aws "$@"
}
awsc configure set default.region garage
awsc configure set default.s3.addressing_style path
AWS_VERSION=$(awsc --version 2>&1 | awk '{ print $1 }')
# object_size KEY -> ContentLength of the object (HEAD), or dies.
object_size() {
    awsc --endpoint-url "$S3_URL" s3api head-object --bucket uploads --key "$1" --query ContentLength --output text \
        || die "no object $1 in the bucket"
}

ROOT=$T/root
mkdir -p "$ROOT"
start_server "$ROOT" STORAGE_BACKEND=s3 S3_ENDPOINT="$S3_URL" S3_BUCKET=uploads S3_REGION=garage \
    S3_ACCESS_KEY_ID="$S3_KEY_ID" S3_SECRET_ACCESS_KEY="$S3_SECRET" DATABASE_URL="$DATABASE_URL"
alive() { server_alive; kill -0 "$GARAGE_PID" 2>/dev/null || die "Garage died (log: $T/garage/n1/log)"; }

# Pre-flight: a small upload must land in the catalog and the bucket, not on the disk.
printf 'pre-flight %s' "$(date)" >"$T/probe.txt"
probe_key=$(upload_raw bench probe.txt "$T/probe.txt")
rows=$("${PSQL[@]}" -X -q -t -A -c "SELECT count(*) FROM files WHERE key = '$probe_key'" 2>&1) || rows="none: $rows"
local_files=$({ find "$ROOT" -path '*/storage/*' -type f 2>/dev/null || true; } | wc -l)
[[ $rows == 1 && $local_files == 0 && $(object_size "$probe_key") == "$(stat -c %s "$T/probe.txt")" ]] \
    || die "pre-flight: STORAGE_BACKEND=s3 not in effect (catalog rows $rows, files on disk $local_files)"
log "pre-flight: $probe_key in the catalog and the bucket, nothing on the server's disk"

# median FORMAT VALUE... -> the median (the mean of the middle two for an even count)
median() {
    local fmt=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v f="$fmt" '{ v[NR] = $1 } END {
        if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf f "\n", m }'
}
# pg_cpu_s -> CPU seconds used so far by our PostgreSQL (the postmaster and its children)
pg_cpu_s() {
    local pm p total=0
    pm=$(head -1 "$PG_DATA/postmaster.pid")
    for p in "$pm" $(pgrep -P "$pm" || true); do
        total=$(awk -v a="$total" -v b="$(proc_cpu_s "$p" 2>/dev/null || echo 0)" 'BEGIN { printf "%.2f", a + b }')
    done
    echo "$total"
}
# spread VALUE... -> "min-max"
spread() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { print a "-" b }'; }

# ---------------------------------------------------------------- 1. uploads

# new_file: a new random file at $T/up.bin (Garage would dedupe a file sent twice).
new_file() {
    rm -f "$T/up.bin"
    head -c "${SIZE_MB}M" /dev/urandom >"$T/up.bin"
    sync "$T/up.bin"
}
declare -a OURS_MBPS CP_MBPS PUT_MBPS OURS_RSS OURS_CPU OURS_GCPU CP_GCPU UP_RATIO OURS_SPOOL_S OURS_SEND_S
RANGE_KEY=""
# spool_watch_start: in the background, the time at which a file under UPLOAD_ROOT/.spool
# first holds the whole body goes to $T/spooled (the end of receiving; the rest is sending
# to the bucket). spool_watch_stop ends it.
SPOOL_PID=""
spool_watch_start() {
    rm -f "$T/spooled"
    (
        trap - EXIT INT TERM
        while :; do
            s=$({ find "$ROOT/.spool" -type f -printf '%s\n' 2>/dev/null || true; } | sort -n | tail -1)
            if ((${s:-0} >= BYTES)); then
                now >"$T/spooled"
                break
            fi
            sleep 0.05
        done
    ) &
    SPOOL_PID=$!
}
spool_watch_stop() {
    [[ -n $SPOOL_PID ]] || return 0
    kill "$SPOOL_PID" 2>/dev/null || true
    wait "$SPOOL_PID" 2>/dev/null || true
    SPOOL_PID=""
}
bench_on_exit spool_watch_stop
upload_ours() { # ROUND
    local rd=$1 sha t0 t1 c0 c1 g0 g1 out size got_sha key hwm sampled
    new_file
    sha=$(sha256sum "$T/up.bin" | cut -d' ' -f1)
    settle
    reset_hwm "$SERVER_PID"
    rss_sampler_start "$SERVER_PID" "$T/rss"
    c0=$(proc_cpu_s "$SERVER_PID")
    g0=$(proc_cpu_s "$GARAGE_PID")
    spool_watch_start
    t0=$(now)
    out=$(api POST "/v1/files/upload?user_id=bench&filename=big-r$rd.bin" -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' -T "$T/up.bin")
    t1=$(now)
    c1=$(proc_cpu_s "$SERVER_PID")
    g1=$(proc_cpu_s "$GARAGE_PID")
    rss_sampler_stop
    spool_watch_stop
    alive
    hwm=$(proc_kib "$SERVER_PID" VmHWM)
    sampled=$(cat "$T/rss")
    read -r key size got_sha < <(python3 -c 'import json, sys; f = json.load(sys.stdin)["files"][0]; print(f["key"], f["size"], f["sha256"])' <<<"$out")
    [[ $size == "$BYTES" && $got_sha == "$sha" ]] || die "our upload answered size $size, sha256 $got_sha (file: $BYTES, $sha)"
    [[ $(object_size "$key") == "$BYTES" ]] || die "the object of $key has the wrong size"
    [[ -z $(find "$ROOT/.spool" -type f 2>/dev/null) ]] || die "the spool still holds files after the upload"
    OURS_MBPS[rd]=$(mbps "$BYTES" "$(elapsed "$t0" "$t1")")
    OURS_RSS[rd]=$(kib_to_mib "$((hwm > sampled ? hwm : sampled))")
    OURS_CPU[rd]=$(elapsed "$c0" "$c1")
    OURS_GCPU[rd]=$(elapsed "$g0" "$g1")
    if [[ -s $T/spooled ]]; then
        OURS_SPOOL_S[rd]=$(elapsed "$t0" "$(cat "$T/spooled")")
        OURS_SEND_S[rd]=$(elapsed "$(cat "$T/spooled")" "$t1")
    else
        OURS_SPOOL_S[rd]=nan OURS_SEND_S[rd]=nan
    fi
    log "round $rd ours: ${OURS_MBPS[rd]} MB/s ($(elapsed "$t0" "$t1") s: body spooled after ${OURS_SPOOL_S[rd]} s, sent to the bucket in ${OURS_SEND_S[rd]} s; server CPU ${OURS_CPU[rd]} s, Garage CPU ${OURS_GCPU[rd]} s; peak RSS ${OURS_RSS[rd]} MiB)"
    # The last one is read in part 2: keep a range of it to check the answers against.
    RANGE_KEY=$key
    dd if="$T/up.bin" of="$T/range.ref" iflag=skip_bytes,count_bytes skip=1000 count="$RANGE_BYTES" status=none
    rm -f "$T/up.bin"
}
upload_aws() { # ROUND cp|put
    local rd=$1 how=$2 key t0 t1 g0 g1 v
    key="ref/$how-r$rd.bin"
    new_file
    settle
    g0=$(proc_cpu_s "$GARAGE_PID")
    t0=$(now)
    if [[ $how == cp ]]; then
        awsc --endpoint-url "$S3_URL" s3 cp "$T/up.bin" "s3://uploads/$key" --only-show-errors \
            || die "aws s3 cp failed"
    else
        awsc --endpoint-url "$S3_URL" s3api put-object --bucket uploads --key "$key" --body "$T/up.bin" \
            >/dev/null || die "aws s3api put-object failed"
    fi
    t1=$(now)
    g1=$(proc_cpu_s "$GARAGE_PID")
    alive
    [[ $(object_size "$key") == "$BYTES" ]] || die "the object $key has the wrong size"
    v=$(mbps "$BYTES" "$(elapsed "$t0" "$t1")")
    if [[ $how == cp ]]; then CP_MBPS[rd]=$v CP_GCPU[rd]=$(elapsed "$g0" "$g1"); else PUT_MBPS[rd]=$v; fi
    log "round $rd aws $how: $v MB/s ($(elapsed "$t0" "$t1") s; Garage CPU $(elapsed "$g0" "$g1") s)"
    rm -f "$T/up.bin"
}
# The CLI's own start-up and one request, for reading its figures (they include it).
t0=$(now)
awsc --endpoint-url "$S3_URL" s3api list-buckets >/dev/null || die "aws s3api list-buckets failed"
AWS_START_S=$(elapsed "$t0" "$(now)")
log "uploads: $ROUNDS rounds of ours, aws s3 cp, aws s3api put-object ($AWS_VERSION; one request alone takes $AWS_START_S s)"
for ((rd = 1; rd <= ROUNDS; rd++)); do
    if ((rd % 2 == 1)); then
        upload_ours "$rd"
        upload_aws "$rd" cp
        upload_aws "$rd" put
    else
        upload_aws "$rd" put
        upload_aws "$rd" cp
        upload_ours "$rd"
    fi
    UP_RATIO[rd]=$(ratio "${OURS_MBPS[rd]}" "${CP_MBPS[rd]}")
done

# ---------------------------------------------------------------- 1b. three-step parts

# parts_complete MIB: a new file of SIZE_MB sent as raw parts of MIB MiB in order
# (PUT /v1/files/part), then POST /v1/files/complete with its SHA-256, timed; the answer and
# the object are checked. Sets PC_SEND[MIB] and PC_COMPLETE[MIB] (seconds).
declare -A PC_SEND PC_COMPLETE
parts_complete() {
    local mib=$1 n i id sha t0 t1 t2 out key size got_sha
    new_file
    sha=$(sha256sum "$T/up.bin" | cut -d' ' -f1)
    settle
    out=$(api POST /v1/files/init -H 'Content-Type: application/json' \
        -d "{\"mode\":\"chunked\",\"files\":[{\"name\":\"parts-$mib.bin\",\"size\":$BYTES}],\"meta\":{\"user_id\":\"bench\"}}")
    id=$(json_get uploadId <<<"$out")
    n=$(((SIZE_MB + mib - 1) / mib))
    t0=$(now)
    for ((i = 0; i < n; i++)); do
        dd if="$T/up.bin" bs=1M skip=$((i * mib)) count="$mib" status=none \
            | api PUT "/v1/files/part/$id/$i" -H 'Content-Type: application/octet-stream' --data-binary @- >/dev/null
    done
    t1=$(now)
    out=$(api POST /v1/files/complete -H 'Content-Type: application/json' -d "{\"uploadId\":\"$id\",\"sha256\":\"$sha\"}")
    t2=$(now)
    alive
    read -r key size got_sha < <(python3 -c 'import json, sys; f = json.load(sys.stdin); print(f["key"], f["size"], f["sha256"])' <<<"$out")
    [[ $size == "$BYTES" && $got_sha == "$sha" ]] || die "complete of $mib MiB parts answered size $size, sha256 $got_sha (file: $BYTES, $sha)"
    [[ $(object_size "$key") == "$BYTES" ]] || die "the object of $key has the wrong size"
    PC_SEND[$mib]=$(elapsed "$t0" "$t1")
    PC_COMPLETE[$mib]=$(elapsed "$t1" "$t2")
    log "parts of $mib MiB: $n sent in ${PC_SEND[$mib]} s, complete in ${PC_COMPLETE[$mib]} s"
    rm -f "$T/up.bin"
}
# In order, 8 MiB (straight into the session's multipart upload: complete only completes
# it) and 1 MiB (the old SDK's other clients: each part its own object, joined through the
# instance at complete). Once each: the figure is the complete's time, not a ratio.
log "three-step uploads of $SIZE_MB MiB: parts of 8 MiB, then of 1 MiB"
parts_complete 8
parts_complete 1

# ---------------------------------------------------------------- 2. range reads

PRESIGNED=$(awsc --endpoint-url "$S3_URL" s3 presign "s3://uploads/$RANGE_KEY" --expires-in 3600) \
    || die "aws s3 presign failed"
url_of() { if [[ $1 == ours ]]; then echo "$SERVER_URL/$RANGE_KEY"; else echo "$PRESIGNED"; fi; }
cpu_of() { if [[ $1 == ours ]]; then proc_cpu_s "$SERVER_PID"; else echo 0; fi; }
for who in ours garage; do
    code=$(curl -sS --max-time 60 -o "$T/range.got" -w '%{http_code}' -r 1000-$((1000 + RANGE_BYTES - 1)) \
        "$(url_of "$who")") || die "$who: range request failed"
    [[ $code == 206 ]] || die "$who: a range request answered $code"
    cmp -s "$T/range.got" "$T/range.ref" || die "$who: a range request returned other bytes"
done
rm -f "$T/range.got"
log "ranges: both answer 206 with the right bytes; $RANGE_CONNS connections, ${RANGE_SECS} s x $ROUNDS rounds"
declare -A RPS=() P99=() SCPU=() GCPU=()
WRK_VARS=(WRK_RANGE_BYTES="$RANGE_BYTES" WRK_FILE_SIZE="$BYTES")
for who in ours garage; do run_wrk "$(url_of "$who")" "$RANGE_CONNS" "$WARM_S" "${WRK_VARS[@]}"; done
declare -a RANGE_RATIO
for ((rd = 1; rd <= ROUNDS; rd++)); do
    if ((rd % 2 == 1)); then order=(ours garage); else order=(garage ours); fi
    for who in "${order[@]}"; do
        c0=$(cpu_of "$who")
        g0=$(proc_cpu_s "$GARAGE_PID")
        run_wrk "$(url_of "$who")" "$RANGE_CONNS" "$RANGE_SECS" "${WRK_VARS[@]}"
        c1=$(cpu_of "$who")
        g1=$(proc_cpu_s "$GARAGE_PID")
        alive
        if ((WRK_BYTES_PER_REQ < RANGE_BYTES || WRK_BYTES_PER_REQ > 2 * RANGE_BYTES)); then
            die "$who answered $WRK_BYTES_PER_REQ bytes per range request of $RANGE_BYTES"
        fi
        RPS[$who.$rd]=$WRK_RPS
        P99[$who.$rd]=$WRK_P99_MS
        # CPU milliseconds per 1,000 requests: our server's, and Garage's
        SCPU[$who.$rd]=$(awk -v c="$(elapsed "$c0" "$c1")" -v n="$WRK_REQS" 'BEGIN { printf "%.0f", c * 1e6 / n }')
        GCPU[$who.$rd]=$(awk -v c="$(elapsed "$g0" "$g1")" -v n="$WRK_REQS" 'BEGIN { printf "%.0f", c * 1e6 / n }')
        log "ranges round $rd $who: $WRK_RPS req/s, p50 $WRK_P50_MS ms, p99 $WRK_P99_MS ms, CPU per 1k requests: ours ${SCPU[$who.$rd]} ms, Garage ${GCPU[$who.$rd]} ms"
    done
    RANGE_RATIO[rd]=$(ratio "${RPS[ours.$rd]}" "${RPS[garage.$rd]}")
done
rm -f "$T/range.ref"

# ---------------------------------------------------------------- 3. listing and init

log "listing: uploading $LIST_FILES small files for user lister ($FILL_CLIENTS clients)"
read -r n FILL_BYTES FILL_S < <(python3 "$BENCH_LIB/s3api.py" fill "$SERVER_URL" "$BENCH_TOKEN" lister \
    "$LIST_FILES" "$FILL_CLIENTS") || true
[[ ${n:-} == "$LIST_FILES" ]] || die "the fill stored ${n:-no} files"
alive
FILL_RATE=$(awk -v n="$n" -v s="$FILL_S" 'BEGIN { printf "%.0f", n / s }')
log "listing: $n files ($FILL_BYTES bytes) in $FILL_S s, $FILL_RATE uploads/s"
declare -a LIST_P50 LIST_P95 INIT_P50 INIT_P95 LIST_SCPU LIST_PGCPU INIT_SCPU INIT_PGCPU
FIRST_LIST_MS=""
# cpu_per_call START_CPU END_CPU CALLS -> milliseconds per call
cpu_per_call() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }'; }
for ((rd = 1; rd <= ROUNDS; rd++)); do
    c0=$(proc_cpu_s "$SERVER_PID")
    p0=$(pg_cpu_s)
    python3 "$BENCH_LIB/s3api.py" list "$SERVER_URL" "$BENCH_TOKEN" lister "$LIST_CALLS" "$LIST_FILES" \
        >"$T/list.times" || die "listing failed"
    c1=$(proc_cpu_s "$SERVER_PID")
    p1=$(pg_cpu_s)
    LIST_SCPU[rd]=$(cpu_per_call "$c0" "$c1" "$LIST_CALLS")
    LIST_PGCPU[rd]=$(cpu_per_call "$p0" "$p1" "$LIST_CALLS")
    [[ -n $FIRST_LIST_MS ]] || FIRST_LIST_MS=$(printf %.1f "$(head -1 "$T/list.times")")
    LIST_P50[rd]=$(printf %.1f "$(percentile 50 <"$T/list.times")")
    LIST_P95[rd]=$(printf %.1f "$(percentile 95 <"$T/list.times")")
    c0=$(proc_cpu_s "$SERVER_PID")
    p0=$(pg_cpu_s)
    # (the CPU includes the untimed aborts of the sessions)
    python3 "$BENCH_LIB/s3api.py" init "$SERVER_URL" "$BENCH_TOKEN" lister "$INIT_CALLS" \
        >"$T/init.times" || die "init failed"
    c1=$(proc_cpu_s "$SERVER_PID")
    p1=$(pg_cpu_s)
    INIT_SCPU[rd]=$(cpu_per_call "$c0" "$c1" "$INIT_CALLS")
    INIT_PGCPU[rd]=$(cpu_per_call "$p0" "$p1" "$INIT_CALLS")
    INIT_P50[rd]=$(printf %.2f "$(percentile 50 <"$T/init.times")")
    INIT_P95[rd]=$(printf %.2f "$(percentile 95 <"$T/init.times")")
    alive
    log "round $rd: listing p50 ${LIST_P50[rd]} ms, p95 ${LIST_P95[rd]} ms (CPU per call: server ${LIST_SCPU[rd]} ms, PostgreSQL ${LIST_PGCPU[rd]} ms); init p50 ${INIT_P50[rd]} ms, p95 ${INIT_P95[rd]} ms (CPU per init + abort: server ${INIT_SCPU[rd]} ms, PostgreSQL ${INIT_PGCPU[rd]} ms)"
done
# The listing's query alone: the same rows through psql (to /dev/null), psql's \timing, the
# median of 5; what PostgreSQL and the transfer of the rows cost before our server's part.
: >"$T/sql.times"
for ((k = 0; k < 5; k++)); do
    "${PSQL[@]}" -X -q -o /dev/null -c '\timing on' -c "SELECT key, size, sha256, crc32, mime, meta::text AS meta,
        created_at FROM files WHERE user_id = 'lister' ORDER BY created_at DESC, key" 2>/dev/null \
        | awk '/^Time:/ { print $2 }' >>"$T/sql.times" || true
done
mapfile -t sql_times <"$T/sql.times"
LIST_SQL_MS="?"
((${#sql_times[@]} == 0)) || LIST_SQL_MS=$(median %.1f "${sql_times[@]}")
LIST_JSON_BYTES=$(curl -sS --max-time 60 -o /dev/null -w '%{size_download}' -H "X-Service-Token: $BENCH_TOKEN" \
    "$SERVER_URL/v1/files/all?user_id=lister")

# ---------------------------------------------------------------- report

rounds_of() { local a=("$@"); local IFS=/; echo "${a[*]}"; }
echo
echo "s3: one instance, STORAGE_BACKEND=s3, Garage $("$GARAGE" --version | awk '{ print $2 }') single node (replication 1, lmdb), PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }')${PG_OPTS[*]:+ (${PG_OPTS[*]})}, $AWS_VERSION; $(nproc) cores, $LOAD_BEFORE at start; values: median (min-max) of $ROUNDS rounds, ratio: median of the rounds' ratios"
v=$(median %.1f "${OURS_MBPS[@]}")
ref=$(median %.1f "${CP_MBPS[@]}")
rt=$(median %.2f "${UP_RATIO[@]}")
bench_row "upload ${SIZE_MB} MiB, POST /v1/files/upload vs aws s3 cp" "$v MB/s ($(spread "${OURS_MBPS[@]}"))" \
    "$ref MB/s ($(spread "${CP_MBPS[@]}"))" "$rt" ">= $UPLOAD_TARGET x" "$(verdict ge "$rt" "$UPLOAD_TARGET")"
bench_row "  ratio per round" "$(rounds_of "${UP_RATIO[@]}")" "-" "-" "-" info
put_ratios=()
for ((rd = 1; rd <= ROUNDS; rd++)); do put_ratios+=("$(ratio "${OURS_MBPS[rd]}" "${PUT_MBPS[rd]}")"); done
bench_row "  aws s3api put-object (one PUT)" "$(median %.1f "${PUT_MBPS[@]}") MB/s ($(spread "${PUT_MBPS[@]}"))" "-" \
    "$(median %.2f "${put_ratios[@]}")" "-" info
bench_row "  aws CLI start-up + one request" "$AWS_START_S s" "-" "-" "-" info
bench_row "  ours: body received and spooled / sent to the bucket" \
    "$(median %.2f "${OURS_SPOOL_S[@]}") s / $(median %.2f "${OURS_SEND_S[@]}") s" "-" "-" "-" info
bench_row "  CPU per upload: our server / Garage" "$(median %.2f "${OURS_CPU[@]}") s / $(median %.2f "${OURS_GCPU[@]}") s" \
    "Garage $(median %.2f "${CP_GCPU[@]}") s (cp)" "-" "-" info
peak=$(printf '%s\n' "${OURS_RSS[@]}" | sort -g | tail -1)
bench_row "peak RSS during the uploads (highest)" "$peak MiB ($(spread "${OURS_RSS[@]}"))" "$RSS_LIMIT_MIB MiB limit" \
    "$(ratio "$peak" "$RSS_LIMIT_MIB")" "< $RSS_LIMIT_MIB MiB" "$(verdict lt "$peak" "$RSS_LIMIT_MIB")"
bench_row "complete of $SIZE_MB MiB sent in 8 MiB parts in order" "${PC_COMPLETE[8]} s" "-" "-" "< 1 s" \
    "$(verdict lt "${PC_COMPLETE[8]}" 1)"
bench_row "  the parts' sending (PUT, one at a time)" "${PC_SEND[8]} s" "-" "-" "-" info
bench_row "  the same in 1 MiB parts: complete / sending" "${PC_COMPLETE[1]} s / ${PC_SEND[1]} s" "-" "-" "-" info
ours_rps=() garage_rps=() ours_p99=() garage_p99=() scpu=() gcpu_ours=() gcpu_direct=()
for ((rd = 1; rd <= ROUNDS; rd++)); do
    ours_rps+=("${RPS[ours.$rd]}") garage_rps+=("${RPS[garage.$rd]}")
    ours_p99+=("${P99[ours.$rd]}") garage_p99+=("${P99[garage.$rd]}")
    scpu+=("${SCPU[ours.$rd]}") gcpu_ours+=("${GCPU[ours.$rd]}") gcpu_direct+=("${GCPU[garage.$rd]}")
done
rt=$(median %.2f "${RANGE_RATIO[@]}")
bench_row "64 KiB ranges, c$RANGE_CONNS, /storage vs presigned GET" "$(median %.0f "${ours_rps[@]}") req/s ($(spread "${ours_rps[@]}"))" \
    "$(median %.0f "${garage_rps[@]}") req/s ($(spread "${garage_rps[@]}"))" "$rt" ">= $RANGE_TARGET x" "$(verdict ge "$rt" "$RANGE_TARGET")"
bench_row "  ratio per round" "$(rounds_of "${RANGE_RATIO[@]}")" "-" "-" "-" info
bench_row "  p99 latency" "$(median %.2f "${ours_p99[@]}") ms" "$(median %.2f "${garage_p99[@]}") ms" "-" "-" info
bench_row "  CPU per 1k requests: ours + Garage" "$(median %.0f "${scpu[@]}") + $(median %.0f "${gcpu_ours[@]}") ms" \
    "$(median %.0f "${gcpu_direct[@]}") ms" "-" "-" info
bench_row "fill: $LIST_FILES small uploads, $FILL_CLIENTS clients" "$FILL_S s" "-" "-" "-" "info"
bench_row "  uploads/s" "$FILL_RATE" "-" "-" "-" info
v=$(median %.1f "${LIST_P50[@]}")
bench_row "list $LIST_FILES files: p50 of $LIST_CALLS" "$v ms ($(spread "${LIST_P50[@]}"))" "-" "-" "<= $LIST_TARGET_MS ms" \
    "$(verdict le "$v" "$LIST_TARGET_MS")"
bench_row "list $LIST_FILES files: p95 of $LIST_CALLS" "$(median %.1f "${LIST_P95[@]}") ms ($(spread "${LIST_P95[@]}"))" \
    "-" "-" "-" info
bench_row "  first call after the fill; answer size" "$FIRST_LIST_MS ms; $LIST_JSON_BYTES bytes" "-" "-" "-" info
bench_row "  CPU per listing: server / PostgreSQL" "$(median %.1f "${LIST_SCPU[@]}") ms / $(median %.1f "${LIST_PGCPU[@]}") ms" \
    "-" "-" "-" info
bench_row "  the same query through psql, median of 5" "$LIST_SQL_MS ms" "-" "-" "-" info
v=$(median %.2f "${INIT_P50[@]}")
bench_row "init (single), user with $LIST_FILES files: p50 of $INIT_CALLS" "$v ms ($(spread "${INIT_P50[@]}"))" "-" "-" \
    "<= $INIT_TARGET_MS ms" "$(verdict le "$v" "$INIT_TARGET_MS")"
bench_row "  CPU per init + abort: server / PostgreSQL" "$(median %.1f "${INIT_SCPU[@]}") ms / $(median %.1f "${INIT_PGCPU[@]}") ms" \
    "-" "-" "-" info
bench_row "  init p95" "$(median %.2f "${INIT_P95[@]}") ms ($(spread "${INIT_P95[@]}"))" "-" "-" "-" info
bench_table
