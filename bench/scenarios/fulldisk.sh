#!/usr/bin/env bash
# Scenario `fulldisk`: the server on a tiny tmpfs (BENCH_FULLDISK_MIB, default 8 MiB) as its
# UPLOAD_ROOT. Uploads through every path (one-request raw, init single + raw PUT + complete,
# chunked base64 JSON parts + complete) until the disk is full, then:
#   - every failed answer is 507 {"detail":"Insufficient storage"} (never 500),
#   - nothing partial stays: no dot-file or orphan sidecar under storage/, no .tmp-* part in a
#     session, no one-request work folder; each session left answers its status,
#   - reads keep working on the full disk: listing equal to what was stored, every stored file
#     downloaded and hashed, a ranged GET, a signed URL (info: healthz and batch ZIP),
#   - deletes work on the full disk, and once space is freed uploads work again, including
#     completing a session whose complete got 507,
#   - the quota ledger equals the bytes on disk.
# Needs root (mount -t tmpfs); without it the scenario prints why and skips (exit 0).
set -euo pipefail
# shellcheck source=../lib/common.sh
source "${BENCH_LIB:-$(dirname "$0")/../lib}/common.sh"

FS_MIB="${BENCH_FULLDISK_MIB:-8}"
for t in curl python3 mount umount sha256sum; do
    command -v "$t" >/dev/null || die "needs $t"
done

bench_tmpdir
T=$BENCH_TMP
ROOT="$T/root"
mkdir -p "$ROOT" "$T/files"
if ((EUID != 0)); then
    echo "fulldisk: SKIPPED: mounting a tmpfs needs root (run as root)"
    bench_row "fulldisk" "skipped (not root)" - - - skip
    exit 0
fi
if ! mount -t tmpfs -o "size=${FS_MIB}m,mode=0755" tmpfs "$ROOT" 2>"$T/mount.err"; then
    echo "fulldisk: SKIPPED: cannot mount a tmpfs: $(cat "$T/mount.err")"
    bench_row "fulldisk" "skipped (no tmpfs mount)" - - - skip
    exit 0
fi
# Registered before the server: runs after the server has stopped.
bench_on_exit "umount '$ROOT' 2>/dev/null || umount -l '$ROOT' 2>/dev/null || true"
log "tmpfs of $FS_MIB MiB on $ROOT"

start_server "$ROOT" UPLOAD_SIGNING_KEY=k

# req METHOD PATH [curl args...]: sets CODE and BODY; never dies on a status.
req() {
    local method=$1 path=$2
    shift 2
    local out="$T/body"
    CODE="$(curl -sS --max-time 60 -o "$out" -w '%{http_code}' -X "$method" \
        -H "X-Service-Token: $BENCH_TOKEN" "$@" "$SERVER_URL$path")" || CODE=000
    BODY="$(cat "$out" 2>/dev/null || true)"
}
jq_() { python3 -c 'import json,sys; d=json.load(sys.stdin); exec("print("+sys.argv[1]+")")' "$1"; }

STORED="$T/stored.tsv"   # key \t sha256 \t size of every upload answered 200
: >"$STORED"
BAD=0          # answers that are neither 200 nor a proper 507
N507=0
declare -A SEEN507=()
OTHER=()
note_fail() { # what
    if [[ $CODE == 507 ]]; then
        N507=$((N507 + 1))
        SEEN507[$1]=1
        [[ $BODY == '{"detail":"Insufficient storage"}' ]] || { BAD=$((BAD + 1)); OTHER+=("$1: 507 with body $BODY"); }
    else
        BAD=$((BAD + 1))
        OTHER+=("$1: $CODE $BODY")
    fi
}
mkfile() { # NAME KIB -> path
    head -c "$(($2 * 1024))" /dev/urandom >"$T/files/$1"
    echo "$T/files/$1"
}
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# One upload by path KIND of a fresh KIB-sized file; appends to STORED on 200. Leaves the id
# of a session whose complete failed in LAST_SESSION (and its file in LAST_FILE).
LAST_SESSION=""
LAST_FILE=""
upload_one() { # KIND KIB N
    local kind=$1 kib=$2 n=$3 f sha size uid
    f="$(mkfile "$kind-$n.bin" "$kib")"
    sha="$(sha_of "$f")"
    size=$(stat -c %s "$f")
    case $kind in
        raw)
            req POST "/v1/files/upload?user_id=disk&filename=$kind-$n.bin" -H 'Expect:' \
                -H 'Content-Type: application/octet-stream' --data-binary "@$f"
            [[ $CODE == 200 ]] || { note_fail "one-request upload"; return 1; }
            printf '%s\t%s\t%s\n' "$(jq_ 'd["files"][0]["key"]' <<<"$BODY")" "$sha" "$size" >>"$STORED"
            ;;
        put | json)
            local mode=single
            [[ $kind == json ]] && mode=chunked
            req POST /v1/files/init -H 'Content-Type: application/json' \
                --data "{\"mode\":\"$mode\",\"files\":[{\"name\":\"$kind-$n.bin\",\"size\":$size}],\"meta\":{\"user_id\":\"disk\"}}"
            [[ $CODE == 200 ]] || { note_fail "init"; return 1; }
            uid="$(jq_ 'd["uploadId"]' <<<"$BODY")"
            if [[ $kind == put ]]; then
                req PUT "/v1/files/part/$uid/0" -H 'Expect:' -H 'Content-Type: application/octet-stream' --data-binary "@$f"
                [[ $CODE == 200 ]] || { note_fail "raw part"; return 1; }
            else
                local half=$((size / 2)) p
                for p in 0 1; do
                    python3 - "$f" "$uid" "$p" "$half" >"$T/part.json" <<'EOF'
import base64, json, sys
f, uid, p, half = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b = open(f, "rb").read()
chunk = b[:half] if p == 0 else b[half:]
print(json.dumps({"uploadId": uid, "partNumber": p, "chunkBase64": base64.b64encode(chunk).decode()}))
EOF
                    req POST /v1/files/part -H 'Expect:' -H 'Content-Type: application/json' --data-binary "@$T/part.json"
                    [[ $CODE == 200 ]] || { note_fail "json part"; return 1; }
                done
            fi
            req POST /v1/files/complete -H 'Content-Type: application/json' \
                --data "{\"uploadId\":\"$uid\",\"sha256\":\"$sha\"}"
            if [[ $CODE != 200 ]]; then
                note_fail "complete"
                LAST_SESSION=$uid
                LAST_FILE=$f
                return 1
            fi
            printf '%s\t%s\t%s\n' "$(jq_ 'd["key"]' <<<"$BODY")" "$sha" "$size" >>"$STORED"
            ;;
    esac
    rm -f "$f"
    return 0
}

# 1. Fill: 160-480 KiB files through the three paths in turn, until each path has met a
# 507 and ten uploads in a row have failed (bounded: 400 attempts).
log "filling the disk"
KINDS=(raw put json)
fails_in_row=0
attempts=0
ok_uploads=0
while ((attempts < 400)); do
    kind=${KINDS[attempts % 3]}
    kib=$((160 + (attempts * 37) % 320))
    if upload_one "$kind" "$kib" "$attempts"; then
        ok_uploads=$((ok_uploads + 1))
        fails_in_row=0
    else
        fails_in_row=$((fails_in_row + 1))
    fi
    attempts=$((attempts + 1))
    ((fails_in_row >= 10)) && break
done
# And a few small ones, to take the last bytes (each path reaches ENOSPC at a different step).
for kib in 64 16 4 1; do
    for kind in raw put json; do
        upload_one "$kind" "$kib" "s$kib$kind" && ok_uploads=$((ok_uploads + 1)) || true
        attempts=$((attempts + 1))
    done
done
df_line="$(df -k --output=used,avail "$ROOT" | tail -1 | tr -s ' ')"
log "after $attempts attempts: $ok_uploads uploads stored, $N507 answers 507, disk used/avail KiB:$df_line"
for line in "${OTHER[@]+"${OTHER[@]}"}"; do echo "   unexpected: $line"; done
server_alive

# 2. Nothing partial.
check_tree() {
    python3 -B - "$ROOT" "$BENCH_LIB" <<'EOF'
import json, os, sys
sys.path.insert(0, sys.argv[2])
import loadlib as L
rep = L.check_tree(sys.argv[1])
print(json.dumps({"problems": rep.problems, "quota": rep.quota_problems, "sessions": rep.sessions,
                  "leftovers": rep.parts_leftovers, "quota_tmp": rep.quota_tmp, "files": rep.files}))
EOF
}
TREE="$(check_tree)"
PROBLEMS="$(jq_ 'len(d["problems"])' <<<"$TREE")"
LEFTOVERS="$(jq_ 'len(d["leftovers"])' <<<"$TREE")"
QTMP="$(jq_ 'len(d["quota_tmp"])' <<<"$TREE")"
SESSIONS="$(jq_ '" ".join(d["sessions"])' <<<"$TREE")"
jq_ '"\n".join("   storage: "+p for p in d["problems"]+d["leftovers"])' <<<"$TREE"
bad_sessions=0
n_sessions=0
for s in $SESSIONS; do
    n_sessions=$((n_sessions + 1))
    req GET "/v1/files/uploads/$s"
    if [[ $CODE != 200 ]]; then
        bad_sessions=$((bad_sessions + 1))
        echo "   session $s: status $CODE $BODY"
        continue
    fi
    on_disk=$(find "$ROOT/.parts/$s" -maxdepth 1 -name 'part_*' ! -name '*.sum' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    got="$(jq_ 'd["receivedBytes"]' <<<"$BODY")"
    [[ $got == "$on_disk" ]] || { bad_sessions=$((bad_sessions + 1)); echo "   session $s: receivedBytes $got, parts on disk $on_disk"; }
done

# 3. Reads on the full disk.
verify_stored() { # -> sets VERIFIED, READ_BAD
    VERIFIED=0
    READ_BAD=0
    local key sha size got
    while IFS=$'\t' read -r key sha size; do
        got="$(curl -sS --max-time 30 "$SERVER_URL/${key}" | sha256sum | cut -d' ' -f1)" || got=x
        if [[ $got == "$sha" ]]; then VERIFIED=$((VERIFIED + 1)); else READ_BAD=$((READ_BAD + 1)); echo "   read: $key differs or failed"; fi
    done <"$STORED"
}
req GET "/v1/files/all?user_id=disk"
LIST_CODE=$CODE
listed="$( [[ $CODE == 200 ]] && jq_ 'len(d["files"])' <<<"$BODY" || echo -1)"
list_ok=FAIL
if [[ $LIST_CODE == 200 ]]; then
    python3 - "$STORED" "$T/body" <<'EOF' && list_ok=PASS || true
import json, sys
d = json.load(open(sys.argv[2]))
listed = {f["key"]: f["size"] for f in d["files"]}
want = {}
for line in open(sys.argv[1]):
    k, _, s = line.rstrip("\n").split("\t")
    want[k] = int(s)
if listed != want:
    print(f"   listing: {len(listed)} files, {len(want)} stored; missing {sorted(set(want) - set(listed))[:5]}, "
          f"extra {sorted(set(listed) - set(want))[:5]}")
    sys.exit(1)
EOF
fi
verify_stored
VERIFIED_FULL=$VERIFIED
READ_BAD_FULL=$READ_BAD
first_key="$(head -1 "$STORED" | cut -f1)"
range_code="$(curl -sS -o /dev/null -w '%{http_code}' -H 'Range: bytes=10-1033' "$SERVER_URL/$first_key")"
req GET "/v1/files/signed-url?key=$first_key"
signed_code=$CODE
if [[ $CODE == 200 ]]; then
    url="$(jq_ 'd["url"]' <<<"$BODY")"
    signed_code="$(curl -sS -o /dev/null -w '%{http_code}' "$url")"
fi
health_code="$(curl -sS -o "$T/health" -w '%{http_code}' "$SERVER_URL/healthz")"
health_body="$(cat "$T/health")"
req POST /v1/files/batch-download -H 'Content-Type: application/json' --data "{\"keys\":[\"$first_key\"]}"
zip_post_code=$CODE
zip_get_code=-
if [[ $CODE == 200 ]]; then
    zip_get_code="$(curl -sS -o /dev/null -w '%{http_code}' "$SERVER_URL/v1/files/batch-download/$(jq_ 'd["token"]' <<<"$BODY")")"
fi
read_5xx=0
for c in "$LIST_CODE" "$range_code" "$signed_code" "$zip_get_code"; do
    [[ $c == 5* ]] && read_5xx=$((read_5xx + 1))
done
[[ $zip_post_code == 5* && $zip_post_code != 507 ]] && read_5xx=$((read_5xx + 1))

# 4. Deletes on the full disk, then uploads again.
n_stored=$(wc -l <"$STORED")
n_del=$(((n_stored + 1) / 2))
del_ok=0
head -n "$n_del" "$STORED" >"$T/doomed.tsv"
tail -n +"$((n_del + 1))" "$STORED" >"$T/kept.tsv"
while IFS=$'\t' read -r key _ _; do
    req DELETE "/v1/files/$key"
    if [[ $CODE == 200 ]]; then del_ok=$((del_ok + 1)); else echo "   delete $key: $CODE $BODY"; fi
done <"$T/doomed.tsv"
mv "$T/kept.tsv" "$STORED"
log "deleted $del_ok of $n_del files; disk used/avail KiB:$(df -k --output=used,avail "$ROOT" | tail -1 | tr -s ' ')"

# The session whose complete got 507, if any, completes now.
resumed=-
if [[ -n $LAST_SESSION ]]; then
    req POST /v1/files/complete -H 'Content-Type: application/json' \
        --data "{\"uploadId\":\"$LAST_SESSION\",\"sha256\":\"$(sha_of "$LAST_FILE")\"}"
    if [[ $CODE == 200 ]]; then
        resumed=PASS
        printf '%s\t%s\t%s\n' "$(jq_ 'd["key"]' <<<"$BODY")" "$(sha_of "$LAST_FILE")" "$(stat -c %s "$LAST_FILE")" >>"$STORED"
    else
        resumed=FAIL
        echo "   complete of $LAST_SESSION after freeing space: $CODE $BODY"
    fi
fi
again=0
N507_BEFORE=$N507
for kind in raw put json; do
    upload_one "$kind" 200 "again-$kind" && again=$((again + 1)) || echo "   upload after freeing space ($kind): $CODE $BODY"
done
verify_stored
TREE2="$(check_tree)"
PROBLEMS2="$(jq_ 'len(d["problems"])' <<<"$TREE2")"
QUOTA2="$(jq_ 'len(d["quota"])' <<<"$TREE2")"
jq_ '"\n".join("   after: "+p for p in d["problems"]+d["quota"])' <<<"$TREE2"
server_alive
err_lines="$(sed 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" | grep -c ' ERROR ' || true)"

echo "fulldisk: ${FS_MIB} MiB tmpfs, $(nproc) cores, $(machine_load)"
bench_row "uploads stored before full" "$ok_uploads" "$attempts attempts" - - info
bench_row "507 answers (by step)" "$N507_BEFORE" "$(printf '%s ' "${!SEEN507[@]}")" - ">= 1" "$( ((N507_BEFORE > 0)) && echo PASS || echo FAIL)"
bench_row "other failures (500, wrong 507 body, ...)" "$BAD" - - 0 "$( ((BAD == 0)) && echo PASS || echo FAIL)"
bench_row "dot-files / orphans under storage/" "$PROBLEMS" - - 0 "$( ((PROBLEMS == 0)) && echo PASS || echo FAIL)"
bench_row "leftovers in .parts (.tmp-*, .upload-*, staging)" "$LEFTOVERS" - - 0 "$( ((LEFTOVERS == 0)) && echo PASS || echo FAIL)"
bench_row "sessions left, status consistent" "$((n_sessions - bad_sessions)) of $n_sessions" - - all "$( ((bad_sessions == 0)) && echo PASS || echo FAIL)"
bench_row "temp files left in .quota" "$QTMP" - - - info
bench_row "listing on the full disk" "$LIST_CODE, $listed files" "$n_stored stored" - "= stored" "$list_ok"
bench_row "downloads on the full disk (sha256)" "$VERIFIED_FULL ok, $READ_BAD_FULL bad" - - "all ok" "$( ((READ_BAD_FULL == 0 && VERIFIED_FULL == n_stored)) && echo PASS || echo FAIL)"
bench_row "range GET / signed GET on the full disk" "$range_code / $signed_code" "206 / 200" - "206 / 200" "$([[ $range_code == 206 && $signed_code == 200 ]] && echo PASS || echo FAIL)"
bench_row "healthz on the full disk" "$health_code $health_body" - - - info
bench_row "batch ZIP on the full disk (POST / GET)" "$zip_post_code / $zip_get_code" - - "no 500" "$( ((read_5xx == 0)) && echo PASS || echo FAIL)"
bench_row "deletes on the full disk" "$del_ok of $n_del" - - all "$( ((del_ok == n_del)) && echo PASS || echo FAIL)"
bench_row "complete that got 507, after freeing space" "$resumed" - - 200 "$([[ $resumed != FAIL ]] && echo PASS || echo FAIL)"
bench_row "uploads after freeing space" "$again of 3" - - "3 of 3" "$( ((again == 3)) && echo PASS || echo FAIL)"
bench_row "all stored files intact at the end" "$VERIFIED of $(wc -l <"$STORED")" - - all "$( ((READ_BAD == 0)) && echo PASS || echo FAIL)"
bench_row "quota ledger = bytes on disk" "$QUOTA2 mismatches" - - 0 "$( ((QUOTA2 == 0 && PROBLEMS2 == 0)) && echo PASS || echo FAIL)"
bench_row "server ERROR log lines" "$err_lines" - - - info
bench_table
if ((BAD > 0 || PROBLEMS > 0 || PROBLEMS2 > 0 || QUOTA2 > 0 || READ_BAD > 0 || read_5xx > 0 || del_ok != n_del || again != 3 || bad_sessions > 0 || N507_BEFORE == 0)) || [[ $resumed == FAIL || $list_ok == FAIL ]]; then
    echo "fulldisk: FAIL" >&2
    exit 1
fi
