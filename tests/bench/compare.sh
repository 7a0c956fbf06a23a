#!/usr/bin/env bash
# The speed and memory benchmark: hop3 against the guide's own pipeline and
# restic, on the same generated app, in the same run.
#
#   sudo tests/bench/compare.sh            # ~1 GiB app, 3 rounds, then 4 GiB for memory
#   RUNS=5 SIZES="1" SCALE=30 sudo tests/bench/compare.sh
#   (RUNS rounds at the first size, RUNS_LARGE (1) at the others)
#
# The app (seeded, so every run generates the same bytes): a data directory
# of ~40% compressible text/JSON/logs, ~40% incompressible binaries of 1-50
# MiB and ~20% small files (1-16 KiB, nested), a git repository of ~2,500
# files over 50 commits, its checked-out tree, and a PostgreSQL database from
# `pgbench -i -s $SCALE` on a throwaway server.
#
# Each round, in an order that rotates between rounds, times:
#   hop3 backup:create --no-services / backup:restore    (files: the app's trees)
#   tar -czf + sha256sum / tar -xzf                      (the guide's pipeline)
#   restic backup (fresh repository) / restic restore    (distribution package)
#   hop3 backup:create / backup:restore                  (files + database)
#   pg_dump > file                                       (the database alone)
# and prints medians, MiB/s, ratios, stored bytes and the peak RSS of the
# controller and the agent. The sizes after the first repeat hop3 alone, to
# show that memory does not grow with the app. Restored trees and database
# rows are compared with the originals every round.
#
# Needs root (the throwaway PostgreSQL runs as `postgres`; restic is
# installed from apt when missing). Not part of `cargo test`: figures, not
# assertions.
set -euo pipefail
runs=${RUNS:-3}
sizes=${SIZES:-1 4}
scale=${SCALE:-30}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
pgbin=${HOP3_TEST_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
source "$repo/tests/bench/app.sh"
cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml" 2>&1 | tail -1
command -v restic >/dev/null || { apt-get install -y -qq restic || { apt-get update -qq && apt-get install -y -qq restic; }; } >/dev/null

work=$(mktemp -d /tmp/hop3-compare.XXXXXX)
chmod 755 "$work"
pids=()
stop_hop3() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
cleanup() {
    stop_hop3
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
results=$work/results.tsv   # size_gib  what  seconds  [bytes]
: > "$results"
record() { printf '%s\t%s\t%s\t%s\n' "$size" "$1" "$2" "${3:-}" >> "$results"; }
timed() { # timed NAME CMD...: runs CMD after flushing earlier writes, records its wall time
    local name=$1; shift
    sync
    local t0; t0=$(now)
    "$@"
    record "$name" "$(echo "$(now) - $t0" | bc)"
}

# --- PostgreSQL: one throwaway server for the whole run -----------------
pgport=$(free_port)
mkdir "$work/pg" "$work/sock" && chown postgres "$work/pg" "$work/sock"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -A trust -U bench >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/sock/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pgport -k $work/sock -c max_wal_size=4GB" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$pgport PGUSER=bench
"$pgbin/createdb" shop
echo "pgbench -i -s $scale ..."
"$pgbin/pgbench" -i -q -s "$scale" shop >/dev/null 2>&1
db_rows() { "$pgbin/psql" -XAtc "SELECT count(*), sum(abalance), sum(bid) FROM pgbench_accounts" shop; }
rows_before=$(db_rows)

generate() { # generate APP_DIR SIZE_GIB
    local app=$1
    generate_files "$1" "$2"
    echo "DATABASE_URL=postgresql://bench@127.0.0.1:$pgport/shop" > "$app/ENV"
    printf 'SECRET_KEY=bench\n' >> "$app/ENV"
    cat > "$app/app.json" <<JSON
{"hostname":"shop.example.com","port":8000,"run_state":"RUNNING",
 "services":[{"type":"postgres","name":"db","url":"postgresql://bench@127.0.0.1:$pgport/shop"}]}
JSON
}

start_hop3() { # start_hop3 ROOT
    local cport aport
    cport=$(free_port); aport=$(free_port)
    "$bin/hop3-controller" --listen 127.0.0.1:$cport --store "$work/store" \
        --socket "$work/ctl.sock" --catalog "sqlite://$work/catalog.db" 2>>"$work/controller.log" &
    pids+=($!)
    # The agent registers with the join token the controller writes at start.
    for _ in $(seq 100); do [ -s "$work/store/join-token" ] && break; sleep 0.1; done
    "$bin/hop3-agent" --listen 127.0.0.1:$aport --controller http://127.0.0.1:$cport \
        --join-token-file "$work/store/join-token" \
        --root "$1" --host-id bench --pg-bin "$pgbin" 2>>"$work/agent.log" &
    pids+=($!)
    hop3_url=unix:$work/ctl.sock
    for _ in $(seq 100); do
        "$bin/hop3" --controller "$hop3_url" agent:list 2>/dev/null | grep -q online && return
        sleep 0.2
    done
    echo "hop3 did not start" >&2; exit 1
}
hop3() { "$bin/hop3" --controller "$hop3_url" "$@"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

same_tree() { # same_tree A B: data, git and src identical (contents, modes, links)
    diff -r --no-dereference "$1/data" "$2/data" >/dev/null && diff -r --no-dereference "$1/git" "$2/git" >/dev/null \
        && diff -r --no-dereference "$1/src" "$2/src" >/dev/null
}
# Restored trees are moved aside, not deleted, until the run ends: ext4
# skips inodes freed in the last minutes when it allocates new ones, so
# deleting tens of thousands of files between steps slowed whichever
# restore came next (the later in a round, the slower).
mkdir "$work/aside"
set_aside() { mv "$1" "$work/aside/$(date +%s%N)"; }
check() { # check WHAT OK
    if ! eval "$2"; then echo "MISMATCH after $1" >&2; exit 1; fi
}

# --- One size ------------------------------------------------------------
run_size() {
    size=$1
    local root=$work/root-$size app reference
    app=$root/apps/shop
    reference=$work/reference-$size
    echo "generating the ${size} GiB app..."
    generate "$app" "$size"
    local app_bytes
    app_bytes=$(du -sb --apparent-size "$app/data" "$app/git" "$app/src" | awk '{s+=$1} END {print s}')
    printf '%s\tapp_bytes\t%s\n' "$size" "$app_bytes" >> "$results"
    printf '%s\tfiles\t%s\n' "$size" "$(find "$app" -type f | wc -l)" >> "$results"
    cp -a "$app" "$reference"
    rm -rf "$work/store" "$work/catalog.db"*
    start_hop3 "$root"
    local r tools t n=$runs
    [ "$size" = "$first_size" ] || n=${RUNS_LARGE:-1}
    for r in $(seq 1 "$n"); do
        if [ "$size" = "$first_size" ]; then
            tools=(hop3 guide restic hop3db)
            # Rotate: round 2 starts with the guide, round 3 with restic, ...
            for _ in $(seq 2 "$r"); do tools=("${tools[@]:1}" "${tools[0]}"); done
        else
            tools=(hop3)
        fi
        echo "round $r/$n at ${size} GiB: ${tools[*]}"
        for t in "${tools[@]}"; do "round_$t"; done
    done
    printf '%s\trss_controller\t%s\n' "$size" "$(hwm "${pids[0]}")" >> "$results"
    printf '%s\trss_agent\t%s\n' "$size" "$(hwm "${pids[1]}")" >> "$results"
    stop_hop3
    set_aside "$root"
    set_aside "$reference"
    rm -rf "$work/store" "$work/catalog.db"*
}

round_hop3() {
    local id
    timed hop3_create sh -c "'$bin/hop3' --controller $hop3_url backup:create shop --no-services 2>/dev/null | awk '/Backup ID:/ {print \$3}' > '$work/id'"
    id=$(cat "$work/id")
    [ -n "$id" ] || { echo "hop3 backup:create failed" >&2; tail -5 "$work/controller.log" >&2; exit 1; }
    record hop3_stored "" "$(du -sb "$work/store/apps/shop/$id" | cut -f1)"
    mv "$app" "$work/gone"   # restore onto a host that lost the app
    timed hop3_restore hop3 backup:restore "$id" >/dev/null 2>&1
    check "hop3 backup:restore" "same_tree $reference $app"
    set_aside "$work/gone"
    hop3 backup:delete "$id" --yes >/dev/null 2>&1
}

round_hop3db() {
    local id
    timed pg_dump sh -c "'$pgbin/pg_dump' --format=plain --no-owner --no-privileges shop > '$work/manual.sql'"
    rm -f "$work/manual.sql"
    timed hop3db_create sh -c "'$bin/hop3' --controller $hop3_url backup:create shop 2>/dev/null | awk '/Backup ID:/ {print \$3}' > '$work/id'"
    id=$(cat "$work/id")
    [ -n "$id" ] || { echo "hop3 backup:create (with database) failed" >&2; exit 1; }
    record hop3db_stored "" "$(du -sb "$work/store/apps/shop/$id" | cut -f1)"
    "$pgbin/psql" -Xqc "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1000" shop
    mv "$app" "$work/gone"
    timed hop3db_restore hop3 backup:restore "$id" >/dev/null 2>&1
    check "hop3 backup:restore (with database)" "same_tree $reference $app"
    check "hop3 backup:restore (database rows)" "test $(db_rows | tr '|' _) = $(echo "$rows_before" | tr '|' _)"
    set_aside "$work/gone"
    hop3 backup:delete "$id" --yes >/dev/null 2>&1
}

round_guide() {
    (cd "$app" && timed guide_create sh -c "tar -czf '$work/guide.tar.gz' git src data ENV app.json && sha256sum '$work/guide.tar.gz' >/dev/null")
    record guide_stored "" "$(stat -c %s "$work/guide.tar.gz")"
    mkdir "$work/guide-out"
    timed guide_restore tar -xzf "$work/guide.tar.gz" -C "$work/guide-out"
    check "tar -xzf" "same_tree $reference $work/guide-out"
    set_aside "$work/guide-out"
    rm -f "$work/guide.tar.gz"
}

round_restic() {
    export RESTIC_REPOSITORY=$work/restic RESTIC_PASSWORD=bench-only
    restic init -q >/dev/null
    (cd "$app" && timed restic_backup restic backup -q git src data ENV app.json)
    record restic_stored "" "$(du -sb "$work/restic" | cut -f1)"
    timed restic_restore restic restore -q latest --target "$work/restic-out"
    check "restic restore" "same_tree $reference $work/restic-out"
    set_aside "$work/restic-out"
    rm -rf "$work/restic"
}

first_size=${sizes%% *}
for s in $sizes; do run_size "$s"; done

echo
python3 - "$results" "$runs" "$first_size" <<'PY'
import collections, statistics, sys
path, runs, first = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = collections.defaultdict(list)
b = {}
for line in open(path):
    size, what, secs, nbytes = (line.rstrip("\n").split("\t") + [""])[:4]
    if secs:
        t[(size, what)].append(float(secs))
    if nbytes:
        b[(size, what)] = int(nbytes)
med = lambda size, what: statistics.median(t[(size, what)])
sizes = sorted({k[0] for k in t}, key=float)
for size in sizes:
    app = int(t[(size, "app_bytes")][0]); mib = app / 2**20
    print(f"=== {size} GiB app: {mib:,.0f} MiB in {int(t[(size, 'files')][0]):,} files "
          f"(data + git + src), medians of {len(t[(size, 'hop3_create')])} run(s) ===")
    rows = [("backup", "hop3 backup:create --no-services", "hop3_create", "hop3_stored"),
            ("backup", "tar -czf + sha256sum (guide)", "guide_create", "guide_stored"),
            ("backup", "restic backup (first)", "restic_backup", "restic_stored"),
            ("restore", "hop3 backup:restore", "hop3_restore", None),
            ("restore", "tar -xzf (guide)", "guide_restore", None),
            ("restore", "restic restore", "restic_restore", None)]
    print(f"{'':36}{'wall s':>8}{'MiB/s':>9}{'stored MiB':>12}  runs")
    for kind, label, key, stored in rows:
        if (size, key) not in t:
            continue
        s = med(size, key)
        st = f"{b[(size, stored)] / 2**20:12,.0f}" if stored and (size, stored) in b else " " * 12
        runs_s = " ".join(f"{x:.2f}" for x in t[(size, key)])
        print(f"{label:36}{s:8.2f}{mib / s:9.1f}{st}  {runs_s}")
    def ratio(a, bkey, what):
        if (size, a) in t and (size, bkey) in t:
            print(f"  {what:58}{med(size, bkey) / med(size, a):6.2f}x")
    print("ratios (baseline time / hop3 time, above 1 = hop3 faster):")
    ratio("hop3_create", "guide_create", "backup vs the guide's pipeline (target >= 6)")
    ratio("hop3_create", "restic_backup", "backup vs restic's first backup (target > 1)")
    ratio("hop3_restore", "guide_restore", "restore vs tar -xzf (target > 1)")
    ratio("hop3_restore", "restic_restore", "restore vs restic restore (target > 1)")
    if (size, "hop3db_create") in t:
        full, files, dump = med(size, "hop3db_create"), med(size, "hop3_create"), med(size, "pg_dump")
        print(f"with the database (pgbench, {b[(size, 'hop3db_stored')] / 2**20:,.0f} MiB stored):")
        print(f"  {'pg_dump > file alone':36}{dump:8.2f} s")
        print(f"  {'hop3 backup:create (files + database)':36}{full:8.2f} s"
              f"   = {full / (dump + files):.2f}x of pg_dump + file archives ({dump + files:.2f} s; target <= 1.2)")
        print(f"  {'hop3 backup:restore (files + database)':36}{med(size, 'hop3db_restore'):8.2f} s")
    rc, ra = t.get((size, "rss_controller")), t.get((size, "rss_agent"))
    if rc and ra:
        print(f"peak RSS: controller {rc[0] / 1024:.1f} MiB, agent {ra[0] / 1024:.1f} MiB (target <= 64 each)")
    print()
PY
