#!/usr/bin/env bash
# `hop3 backup:list` against a catalog of N backups (default 100,000), through
# a real controller (release build): median wall time of 11 runs of the CLI,
# beside the CLI's own start-up (`hop3 --version`) as the baseline.
#
#   tests/bench/list.sh [N]
set -euo pipefail
n=${1:-100000}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
[ -x "$bin/hop3-controller" ] || cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml"
work=$(mktemp -d /tmp/hop3-list.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {
    "$bin/hop3-controller" --listen 127.0.0.1:$port --store "$work/store" --socket "$work/ctl.sock" \
        --catalog "sqlite://$work/catalog.db" 2>>"$work/controller.log" &
    pid=$!
    for _ in $(seq 100); do "$bin/hop3" --controller "unix:$work/ctl.sock" backup:list >/dev/null 2>&1 && return; sleep 0.1; done
    echo "controller did not start" >&2; exit 1
}
start; kill "$pid"; wait "$pid" 2>/dev/null || true
# Rows the store cannot contradict (FAILED ones are kept at start-up), spread over 50 apps and a year.
python3 - "$work/catalog.db" "$n" <<'PY'
import sqlite3, sys, random, datetime
db, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
con = sqlite3.connect(db)
t0 = datetime.datetime(2025, 1, 1)
rows = []
for i in range(n):
    t = t0 + datetime.timedelta(seconds=i * 300)
    rows.append(("%s_%06x" % (t.strftime("%Y%m%d_%H%M%S"), rnd.getrandbits(24)), "app-%d" % (i % 50), "h",
                 "FAILED", t.strftime("%Y-%m-%dT%H:%M:%SZ"), 0, "[]", "bench"))
con.executemany("INSERT INTO backups VALUES (?,?,?,?,?,?,?,?)", rows)
con.commit()
print("catalog rows:", con.execute("select count(*) from backups").fetchone()[0])
PY
start
med() { python3 -c 'import sys,statistics; print("%.1f" % (statistics.median(map(float, sys.argv[1:]))*1000))' "$@"; }
timeit() { local ts=(); for _ in $(seq 11); do local a=$(date +%s.%N); "$@" >/dev/null; local b=$(date +%s.%N); ts+=("$(python3 -c "print($b-$a)")"); done; med "${ts[@]}"; }
h="$bin/hop3 --controller unix:$work/ctl.sock"
echo "median of 11 runs, ms:"
echo "  hop3 --version (baseline)        $(timeit $bin/hop3 --version)"
echo "  hop3 backup:list                 $(timeit $h backup:list)"
echo "  hop3 --json backup:list          $(timeit $h --json backup:list)"
echo "  hop3 backup:list app-7 --limit 5 $(timeit $h backup:list app-7 --limit 5)"
echo "  hop3 --json backup:list --limit 1000 $(timeit $h --json backup:list --limit 1000)"
