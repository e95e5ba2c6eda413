# shellcheck shell=bash
# wrk runs for the bench scenarios. Source it after common.sh:
#     source "$BENCH_LIB/wrk.sh"
#     run_wrk URL CONNECTIONS SECONDS [VAR=VALUE...]    # VAR=VALUE go to wrk.lua's environment
# run_wrk installs wrk when missing (need_tool), runs `wrk -t BENCH_WRK_THREADS (2)
# -c CONNECTIONS -d SECONDS --timeout 10s -s lib/wrk.lua URL` under `timeout`, and sets
#   WRK_RPS (requests/s), WRK_REQS, WRK_BYTES, WRK_SECONDS, WRK_P50_MS, WRK_P99_MS,
#   WRK_MAX_MS, WRK_SOCK_ERRS (connect+read+write+timeout errors), WRK_BYTES_PER_REQ.
# It dies (the run is broken) when any answer had a status >= 400 or nothing was answered.

# shellcheck disable=SC2034  # the WRK_* variables are for the caller
run_wrk() {
    local url=$1 conns=$2 secs=$3 out
    shift 3
    need_tool wrk wrk
    # In the scenario's temp dir when it has one, so a timeout cannot leave it behind.
    out="$(mktemp "${BENCH_TMP:-$BENCH_TMPDIR}/bench-wrk.XXXXXX")"
    if ! env "$@" timeout -k 5 $((secs + 30)) wrk -t "${BENCH_WRK_THREADS:-2}" -c "$conns" -d "${secs}s" \
        --timeout 10s -s "$BENCH_LIB/wrk.lua" "$url" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "wrk $url failed"
    fi
    local line
    line="$(grep '^WRK_RESULT ' "$out" || true)"
    if [[ -z $line ]]; then
        cat "$out" >&2
        rm -f "$out"
        die "wrk printed no result for $url"
    fi
    rm -f "$out"
    local kv k v
    declare -A r=()
    for kv in ${line#WRK_RESULT }; do
        k=${kv%%=*} v=${kv#*=}
        r[$k]=$v
    done
    ((r[requests] > 0)) || die "wrk: no request answered by $url"
    ((r[status] == 0)) || die "wrk: ${r[status]} of ${r[requests]} answers from $url had a status >= 400"
    WRK_REQS=${r[requests]}
    WRK_BYTES=${r[bytes]}
    WRK_SECONDS=$(awk -v d="${r[duration_us]}" 'BEGIN { printf "%.3f", d / 1e6 }')
    WRK_RPS=$(awk -v n="${r[requests]}" -v d="${r[duration_us]}" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
    WRK_P50_MS=$(awk -v u="${r[p50_us]}" 'BEGIN { printf "%.2f", u / 1000 }')
    WRK_P99_MS=$(awk -v u="${r[p99_us]}" 'BEGIN { printf "%.2f", u / 1000 }')
    WRK_MAX_MS=$(awk -v u="${r[max_us]}" 'BEGIN { printf "%.2f", u / 1000 }')
    WRK_SOCK_ERRS=$((r[connect] + r[read] + r[write] + r[timeout]))
    WRK_BYTES_PER_REQ=$((r[bytes] / r[requests]))
    ((WRK_SOCK_ERRS == 0)) || log "wrk $url: socket errors connect ${r[connect]}, read ${r[read]}, write ${r[write]}, timeout ${r[timeout]}"
}
