#!/usr/bin/env bash
# A fleet of N agents (default 100) on one controller (release build):
# median wall time of `hop3 agent:list`, of `backup:create` of a small app
# (1 MiB in 100 files) on a healthy host and of `backup:restore` of it, with
# every agent healthy (the baseline) and with F of them (default 10) frozen
# by SIGSTOP, their connections open and nothing answering; and the
# controller's RSS alone and with N agents registered. Each frozen
# measurement starts on a fresh freeze and must end before the frozen
# hosts' heartbeats lapse (15 s): the script says when one did not.
#
#   tests/bench/fleet.sh                          # N=100 F=10 RUNS=5
#   BIN=/other/target/release tests/bench/fleet.sh  # an older build
set -euo pipefail
n=${N:-100}
f=${F:-10}
runs=${RUNS:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${BIN:-}" ]; then
    cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml" >&2
    BIN=$repo/target/release
fi
bin=$BIN
work=$(mktemp -d /tmp/hop3-fleet.XXXXXX)
pids=()
agents=()
cleanup() {
    for p in "${agents[@]}" "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
med() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }
h() { "$bin/hop3" --controller "unix:$work/ctl.sock" "$@"; }
host() { printf 'fleet-%03d' "$1"; }

cport=$(free_port)
"$bin/hop3-controller" --listen 127.0.0.1:$cport --store "$work/store" \
    --socket "$work/ctl.sock" --catalog "sqlite://$work/catalog.db" 2>>"$work/controller.log" &
ctl=$!
pids+=($ctl)
for _ in $(seq 100); do h agent:list >/dev/null 2>&1 && break; sleep 0.1; done
rss_alone=$(rss $ctl)

for i in $(seq 0 $((n - 1))); do
    root=$work/hosts/$(host $i)
    app=$root/apps/app$i
    mkdir -p "$app/data" "$app/src" "$app/git"
    echo "{\"hostname\": \"app$i.example.com\", \"port\": 8000, \"services\": []}" > "$app/app.json"
    echo 'A=1' > "$app/ENV"
done
python3 - "$work/hosts/$(host 0)/apps/app0/data" <<'PY'
import os, sys
for i in range(100):
    with open(os.path.join(sys.argv[1], "f%03d" % i), "wb") as f:
        f.write(os.urandom(10 * 1024 // 2) * 2)
PY
for i in $(seq 0 $((n - 1))); do
    # Port 0: each agent advertises the port it was given.
    "$bin/hop3-agent" --listen 127.0.0.1:0 --controller http://127.0.0.1:$cport \
        --join-token-file "$work/store/join-token" --root "$work/hosts/$(host $i)" \
        --host-id "$(host $i)" 2>>"$work/agents.log" &
    agents+=($!)
done
online() { h --json agent:list | python3 -c 'import json,sys; print(sum(a["status"] == "online" for a in json.load(sys.stdin)))'; }
wait_online() {
    for _ in $(seq 300); do [ "$(online)" -eq "$n" ] && return; sleep 0.2; done
    echo "not all $n agents online:" >&2
    h agent:list | grep -v ' online ' >&2 || true
    tail -5 "$work/agents.log" >&2
    exit 1
}
wait_online
rss_fleet=$(rss $ctl)
id=$(h backup:create app0 2>/dev/null | awk '/Backup ID:/ {print $3}')
[ -n "$id" ] || { echo "the first backup failed" >&2; exit 1; }

# Times `$@` RUNS times; prints the median.
timed() {
    local ts=() a b
    for _ in $(seq "$runs"); do
        a=$(now); "$@" >/dev/null 2>&1; b=$(now)
        ts+=("$(python3 -c "print($b - $a)")")
    done
    med "${ts[@]}"
}
ops=("agent:list" "backup:create app0" "backup:restore $id")
declare -A healthy frozen late
for op in "${ops[@]}"; do
    # shellcheck disable=SC2086
    healthy[$op]=$(timed h $op)
done
for op in "${ops[@]}"; do
    for p in "${agents[@]: -$f}"; do kill -STOP "$p"; done
    t0=$(now)
    # shellcheck disable=SC2086
    frozen[$op]=$(timed h $op)
    late[$op]=$(python3 -c "print('' if $(now) - $t0 < 15 else '  (frozen hosts went offline meanwhile)')")
    for p in "${agents[@]: -$f}"; do kill -CONT "$p"; done
    wait_online
done
rss_after=$(rss $ctl)

echo "=== $n agents, $f of them frozen (SIGSTOP); medians of $runs runs, seconds ==="
printf '%-40s %9s %9s %7s\n' "" "healthy" "frozen" "ratio"
for op in "${ops[@]}"; do
    printf '%-40s %9s %9s %6sx%s\n' "hop3 ${op/$id/ID}" "${healthy[$op]}" "${frozen[$op]}" \
        "$(python3 -c "print('%.2f' % (${frozen[$op]} / ${healthy[$op]}))")" "${late[$op]}"
done
echo "controller RSS, MiB: alone $rss_alone, $n agents registered $rss_fleet, after the runs $rss_after"
echo "one agent's RSS, MiB: $(rss "${agents[0]}")"
