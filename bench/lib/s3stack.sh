# shellcheck shell=bash
# Garage and PostgreSQL for the scenarios that run STORAGE_BACKEND=s3 (`distributed`, `s3`),
# started in the scenario's temp dir (BENCH_TMP) on 127.0.0.1. Source it after common.sh:
#     source "$BENCH_LIB/s3stack.sh"
#     find_garage || { echo "SKIPPED ..."; exit 0; }   # GARAGE
#     find_postgres                                     # PG_BIN (dies without it)
#     pg_start [-c NAME=VALUE...]                       # PG_PORT, PG_DATA, PSQL, DATABASE_URL
#     garage_cluster NODES REPLICATION [CAPACITY] [DB_ENGINE]
#                      # G_PID, G_S3, G_RPC, G_ID per node; bucket `uploads`; S3_KEY_ID, S3_SECRET
# The caller stops them at exit (its own trap: kill "${G_PID[@]}", then pg_stop), since a
# scenario may have other processes to stop first. Also here: pick_port, wait_for, as_pg,
# garage_conf, g (the garage CLI on node 1), start_node, healthy_nodes, nodes_healthy.

# shellcheck disable=SC2034  # the variables set here are for the caller
GARAGE=""
PG_BIN=""
PG_PORT=""
PG_DATA=""
PSQL=()
DATABASE_URL=""
declare -a G_PID G_S3 G_RPC G_ID
S3_KEY_ID=""
S3_SECRET=""

# pick_port VAR: a free port, into VAR, never one handed out before in this run (the
# servers bind them later).
USED_PORTS=" "
pick_port() {
    local p
    while :; do
        p=$(free_port)
        [[ $USED_PORTS == *" $p "* ]] || break
    done
    USED_PORTS+="$p "
    printf -v "$1" '%s' "$p"
}

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or die.
wait_for() {
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what: not after $limit s"
}

# find_garage: GARAGE = BENCH_GARAGE_BIN, else garage on PATH or in ~/.cargo/bin; returns 1
# when there is none (the caller prints SKIPPED).
find_garage() {
    local cand
    for cand in "${BENCH_GARAGE_BIN:-}" "$(command -v garage || true)" "$HOME/.cargo/bin/garage"; do
        [[ -n $cand && -x $cand ]] && { GARAGE=$cand; return 0; }
    done
    return 1
}

# find_postgres: PG_BIN = the newest /usr/lib/postgresql/*/bin (Debian), else pg_ctl's folder
# on PATH; dies without initdb, pg_ctl and psql.
find_postgres() {
    PG_BIN=$({ compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' || true; } | sort -V | tail -1)
    PG_BIN=${PG_BIN%/pg_ctl}
    if [[ -z $PG_BIN ]] && command -v pg_ctl >/dev/null; then PG_BIN=$(dirname "$(command -v pg_ctl)"); fi
    [[ -n $PG_BIN && -x $PG_BIN/initdb && -x $PG_BIN/psql ]] \
        || die "PostgreSQL not found (initdb, pg_ctl, psql in /usr/lib/postgresql/*/bin): apt-get install postgresql"
}

# as_pg COMMAND...: as the postgres user when run as root (PostgreSQL refuses root).
as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }

# pg_start [-c NAME=VALUE...]: a fresh cluster in BENCH_TMP/pg (trust auth, 127.0.0.1 and a
# socket in that folder), database `uploads`. The options go to postgres after the
# defaults (max_connections=200), so they may override them. BENCH_TMP must be reachable
# by the postgres user (chmod 0711).
pg_start() {
    local pg=$BENCH_TMP/pg
    mkdir -p "$pg"
    ((EUID == 0)) && chown postgres: "$pg"
    as_pg "$PG_BIN/initdb" -D "$pg/data" --auth=trust -U postgres -E UTF8 --locale=C --no-sync \
        >"$pg/initdb.log" 2>&1 || { cat "$pg/initdb.log" >&2; die "initdb failed"; }
    pick_port PG_PORT
    as_pg "$PG_BIN/pg_ctl" -D "$pg/data" -l "$pg/log" -w -t 60 \
        -o "-p $PG_PORT -k $pg -h 127.0.0.1 -c max_connections=200 $*" start \
        >/dev/null || { cat "$pg/log" >&2; die "pg_ctl start failed"; }
    PG_DATA=$pg/data
    PSQL=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres)
    "${PSQL[@]}" -d postgres -X -q -c 'CREATE DATABASE uploads' || die "CREATE DATABASE failed"
    PSQL+=(-d uploads)
    DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/uploads
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }') on 127.0.0.1:$PG_PORT${*:+ ($*)}"
}

# pg_stop: immediate shutdown (no waiting for clients); nothing when it was not started.
pg_stop() {
    [[ -z $PG_DATA ]] || as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
}

garage_conf() { echo "$BENCH_TMP/garage/n$1/garage.toml"; }
# g ARGS...: the garage CLI against node 1.
g() { "$GARAGE" -c "$(garage_conf 1)" "$@"; }
start_node() {
    "$GARAGE" -c "$(garage_conf "$1")" server >>"$BENCH_TMP/garage/n$1/log" 2>&1 &
    G_PID[$1]=$!
}
healthy_nodes() {
    g status 2>/dev/null | awk '/^==== HEALTHY NODES/ { h = 1; next } /^====/ { h = 0 }
        h && NF && $1 != "ID" { n++ } END { print n + 0 }'
}
# nodes_healthy N: success when `garage status` lists N healthy nodes (counted anew on each
# call, for wait_for).
nodes_healthy() { [[ $(healthy_nodes) == "$1" ]]; }

# garage_cluster NODES REPLICATION [CAPACITY (1G)] [DB_ENGINE (sqlite)]: NODES Garage
# servers (one rpc_secret, S3 API region `garage`), connected, each assigned CAPACITY in
# zone dc1, layout applied; bucket `uploads` and key `bench-key` (read, write, owner):
# S3_KEY_ID, S3_SECRET. Node n's S3 port is G_S3[n], its pid G_PID[n].
garage_cluster() {
    local nodes=$1 repl=$2 cap=${3:-1G} engine=${4:-sqlite} secret n key_info
    secret=$(openssl rand -hex 32)
    for ((n = 1; n <= nodes; n++)); do
        mkdir -p "$BENCH_TMP/garage/n$n"
        pick_port "G_S3[$n]"
        pick_port "G_RPC[$n]"
        cat >"$(garage_conf "$n")" <<EOF
metadata_dir = "$BENCH_TMP/garage/n$n/meta"
data_dir = "$BENCH_TMP/garage/n$n/data"
db_engine = "$engine"
replication_factor = $repl
rpc_bind_addr = "127.0.0.1:${G_RPC[n]}"
rpc_public_addr = "127.0.0.1:${G_RPC[n]}"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:${G_S3[n]}"
root_domain = ".s3.garage.localhost"
EOF
        start_node "$n"
    done
    for ((n = 1; n <= nodes; n++)); do
        wait_for 30 "garage node $n" "$GARAGE" -c "$(garage_conf "$n")" node id -q
        G_ID[n]=$("$GARAGE" -c "$(garage_conf "$n")" node id -q 2>/dev/null)
    done
    for ((n = 2; n <= nodes; n++)); do g node connect "${G_ID[n]}" >/dev/null; done
    for ((n = 1; n <= nodes; n++)); do g layout assign -z dc1 -c "$cap" "${G_ID[n]%@*}" >/dev/null; done
    g layout apply --version 1 >/dev/null
    wait_for 30 "$nodes healthy Garage node(s)" nodes_healthy "$nodes"
    g bucket create uploads >/dev/null
    g key create bench-key >/dev/null
    g bucket allow --read --write --owner uploads --key bench-key >/dev/null
    key_info=$(g key info bench-key --show-secret 2>/dev/null)
    S3_KEY_ID=$(awk '/^Key ID:/ { print $3 }' <<<"$key_info")
    S3_SECRET=$(awk '/^Secret key:/ { print $3 }' <<<"$key_info")
    [[ -n $S3_KEY_ID && -n $S3_SECRET ]] || die "no key from 'garage key info': $key_info"
    log "Garage $("$GARAGE" --version | awk '{ print $2 }'): $nodes node(s), replication $repl, $engine, S3 on port(s) ${G_S3[*]}"
}
