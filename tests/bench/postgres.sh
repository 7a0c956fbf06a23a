#!/usr/bin/env bash
# Backup and restore of an app whose PostgreSQL database is `pgbench -i -s
# SCALE` (30: ~500 MiB), through a real controller and agent (release
# build), beside plain `pg_dump > file` and `psql -f file` by hand on the
# same throwaway server in the same run.
#
#   tests/bench/postgres.sh [SCALE]      (run as root: the server runs as postgres)
set -euo pipefail
scale=${1:-30}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
pgbin=${HOP3_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$bin/hop3-controller" ] || cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml"

work=$(mktemp -d /tmp/hop3-pgbench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

pgport=$(free_port)
mkdir "$work/pg" "$work/sock" && chown postgres "$work/pg" "$work/sock"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -A trust -U bench >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/sock/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pgport -k $work/sock -c fsync=off -c max_wal_size=4GB" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$pgport PGUSER=bench
"$pgbin/createdb" shop
echo "pgbench -i -s $scale ..."
"$pgbin/pgbench" -i -q -s "$scale" shop 2>&1 | tail -1
"$pgbin/psql" -XAtc "SELECT pg_size_pretty(pg_database_size('shop'))" shop

app=$work/root/apps/shop
mkdir -p "$app/data" "$app/src"
git init -q --bare "$app/git"
echo "DATABASE_URL=postgresql://bench@127.0.0.1:$pgport/shop" > "$app/ENV"
cat > "$app/app.json" <<JSON
{"hostname":"shop.example.com","port":8000,"run_state":"RUNNING",
 "services":[{"type":"postgres","name":"db","url":"postgresql://bench@127.0.0.1:$pgport/shop"}]}
JSON

cport=$(free_port); aport=$(free_port)
"$bin/hop3-controller" --listen 127.0.0.1:$cport --store "$work/store" --socket "$work/ctl.sock" \
    --catalog "sqlite://$work/catalog.db" 2>"$work/controller.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/store/join-token" ] && break; sleep 0.1; done
"$bin/hop3-agent" --listen 127.0.0.1:$aport --controller http://127.0.0.1:$cport --root "$work/root" \
    --join-token-file "$work/store/join-token" --host-id bench --pg-bin "$pgbin" 2>"$work/agent.log" &
pids+=($!)
hop3() { "$bin/hop3" --controller "unix:$work/ctl.sock" "$@"; }
for _ in $(seq 50); do grep -q registered "$work/agent.log" && break; sleep 0.2; done

t0=$(now); "$pgbin/pg_dump" --format=plain --no-owner --no-privileges shop > "$work/manual.sql"; t1=$(now)
t2=$(now); id=$(hop3 backup:create shop 2>/dev/null | awk '/Backup ID:/ {print $3}'); t3=$(now)
"$pgbin/psql" -Xqc "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 1000" shop
t4=$(now); hop3 backup:restore "$id" >/dev/null 2>&1; t5=$(now)
"$pgbin/createdb" manual
t6=$(now); "$pgbin/psql" -Xq -v ON_ERROR_STOP=1 --single-transaction -f "$work/manual.sql" manual >/dev/null; t7=$(now)
same=$("$pgbin/psql" -XAtc "SELECT sum(abalance) = 0 FROM pgbench_accounts" shop)
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
crss=$(hwm "${pids[0]}"); arss=$(hwm "${pids[1]}")
dump=$(stat -c %s "$work/store/apps/shop/$id/services/postgres_db.sql")
python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$t6" "$t7" "$dump" "$crss" "$arss" "$same" <<'PY'
import sys
*t, dump, crss, arss, same = sys.argv[1:]
t = list(map(float, t))
pd, hc, hr, pf = t[1]-t[0], t[3]-t[2], t[5]-t[4], t[7]-t[6]
print(f"dump: {int(dump)/2**20:.0f} MiB of SQL; rows after restore as in the backup: {same == 't'}")
print(f"{'':28}{'wall s':>8}{'ratio':>8}")
print(f"{'pg_dump > file (by hand)':28}{pd:8.2f}{1:8.2f}")
print(f"{'hop3 backup:create':28}{hc:8.2f}{hc/pd:8.2f}")
print(f"{'psql -f file (by hand)':28}{pf:8.2f}{1:8.2f}")
print(f"{'hop3 backup:restore':28}{hr:8.2f}{hr/pf:8.2f}")
print(f"peak RSS: controller {int(crss)/1024:.1f} MiB, agent {int(arss)/1024:.1f} MiB")
PY
