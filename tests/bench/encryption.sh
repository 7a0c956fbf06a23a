#!/usr/bin/env bash
# The cost of encryption at rest: backup and restore of the generated app
# (tests/bench/app.sh, ~1 GiB) with and without age, alternating in the same
# run (two controllers on local stores, one with --encrypt, each with its
# local agent), with each controller's peak RSS. The restored trees are
# compared with the original every round. Then `keys rotate` and `keys
# retire` of the first key: the time to encrypt every backup of the age store
# again (each read back and checked), beside the time of the age backups
# themselves, and one retired backup restored and compared.
#
#   tests/bench/encryption.sh              # ~1 GiB, 4 rounds
#   RUNS=1 SIZE=0.25 tests/bench/encryption.sh
#
# Not part of `cargo test`: figures, not assertions.
set -euo pipefail
runs=${RUNS:-4}
size=${SIZE:-1}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
source "$repo/tests/bench/app.sh"
source "$repo/tests/bench/common.sh"
cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml" 2>&1 | tail -1

work=$(mktemp -d /tmp/hop3-agebench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
results=$work/results.tsv
: > "$results"

root=$work/root
mkdir -p "$root/apps"
echo "generating a ${size} GiB app ..."
generate_files "$root/apps/shop" "$size"
printf 'SECRET_KEY=bench\n' > "$root/apps/shop/ENV"
echo '{"hostname":"shop.example.com","port":8000,"run_state":"RUNNING"}' > "$root/apps/shop/app.json"
app_bytes=$(du -sb "$root/apps/shop" | cut -f1)

"$bin/hop3-controller" keys init --keys-dir "$work/keys" >/dev/null 2>&1
declare -A ctl_pid url
start_hop3() { # start_hop3 NAME ARGS...: a controller with an in-process agent
    local name=$1 state=$work/state-$1; shift
    "$bin/hop3-controller" --listen 127.0.0.1:$(free_port) --store "$work/store-$name" \
        --socket "$work/$name.sock" --catalog "sqlite://$work/catalog-$name.db" --keys-dir "$work/keys" \
        --local-agent --root "$root" --host-id bench "$@" 2>>"$work/controller-$name.log" &
    ctl_pid[$name]=$!; pids+=($!)
    url[$name]=unix:$work/$name.sock
    for _ in $(seq 100); do
        "$bin/hop3" --controller "${url[$name]}" agent:list 2>/dev/null | grep -q online && return
        sleep 0.2
    done
    echo "hop3 ($name) did not start" >&2; exit 1
}
start_hop3 plain
start_hop3 age --encrypt

same_tree() {
    diff -r --no-dereference "$1/data" "$2/data" >/dev/null && diff -r --no-dereference "$1/git" "$2/git" >/dev/null \
        && diff -r --no-dereference "$1/src" "$2/src" >/dev/null
}
backup() { # backup NAME: prints the backup ID
    "$bin/hop3" --controller "${url[$1]}" --json backup:create shop --no-services |
        python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["status"]=="COMPLETED", d; print(d["backup_id"])'
}
timed() { # timed NAME CMD...
    local name=$1; shift
    sync
    local t0; t0=$(now)
    "$@" >/dev/null
    printf '%s\t%s\n' "$name" "$(echo "$(now) - $t0" | bc)" >> "$results"
}
for r in $(seq "$runs"); do
    echo "round $r/$runs"
    # Which goes first alternates: each restore's files land where the last
    # round's deleted ones were, and ext4 makes the second writer pay for it.
    order="plain age"; [ $((r % 2)) -eq 0 ] && order="age plain"
    for name in $order; do
        sync
        c0=$(cpu "${ctl_pid[$name]}")
        t0=$(now); id=$(backup "$name"); printf 'backup %s\t%s\n' "$name" "$(echo "$(now) - $t0" | bc)" >> "$results"
        printf 'cpu backup %s\t%s\n' "$name" "$(echo "$(cpu "${ctl_pid[$name]}") - $c0" | bc)" >> "$results"
        c0=$(cpu "${ctl_pid[$name]}")
        ls "$work/store-$name/apps/shop/$id" >> "$work/names-$name"
        timed "restore $name" "$bin/hop3" --controller "${url[$name]}" --json backup:restore "$id" --target-app "shop-$name$r"
        printf 'cpu restore %s\t%s\n' "$name" "$(echo "$(cpu "${ctl_pid[$name]}") - $c0" | bc)" >> "$results"
        same_tree "$root/apps/shop" "$root/apps/shop-$name$r" || { echo "MISMATCH after the $name restore" >&2; exit 1; }
        rm -rf "$root/apps/shop-$name$r"
    done
done
grep -q 'data.tar.zst.age' "$work/names-age" || { echo "the age store holds no encrypted archive" >&2; exit 1; }
hwm_plain=$(hwm "${ctl_pid[plain]}"); hwm_age=$(hwm "${ctl_pid[age]}")

# Retire: rotate, restart the age controller on the new key, retire the old.
admin() { "$bin/hop3-controller" --store "$work/store-age" --catalog "sqlite://$work/catalog-age.db" \
    --keys-dir "$work/keys" keys "$@"; }
old_key=$(admin list 2>/dev/null | awk '{print $1; exit}')
admin rotate >/dev/null 2>&1
kill "${ctl_pid[age]}"; wait "${ctl_pid[age]}" 2>/dev/null || true
stored=$(du -sb "$work/store-age/apps" | cut -f1)
start_hop3 age --encrypt
c0=$(cpu "${ctl_pid[age]}")
t0=$(now)
admin retire "$old_key" >/dev/null
until admin list 2>/dev/null | grep "^$old_key" | grep -q 'opens no backup' \
    && ! admin list 2>/dev/null | grep "^$old_key" | grep -q 'being retired'; do
    sleep 0.2
done
printf 'retire\t%s\n' "$(echo "$(now) - $t0" | bc)" >> "$results"
printf 'cpu retire\t%s\n' "$(echo "$(cpu "${ctl_pid[age]}") - $c0" | bc)" >> "$results"
hwm_retire=$(hwm "${ctl_pid[age]}")
grep -rq sealed-2 <(find "$work/store-age/apps" -name '*.age') || { echo "nothing was encrypted again" >&2; exit 1; }
last_id=$(ls "$work/store-age/apps/shop" | sort | tail -1)
"$bin/hop3" --controller "${url[age]}" --json backup:restore "$last_id" --target-app shop-retired >/dev/null
same_tree "$root/apps/shop" "$root/apps/shop-retired" || { echo "MISMATCH after the retire" >&2; exit 1; }

python3 - "$results" "$app_bytes" "$runs" "$hwm_plain" "$hwm_age" "$hwm_retire" "$stored" <<'PY'
import statistics, sys
path, app, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rss_plain, rss_age, rss_retire = (int(x) / 1024 for x in sys.argv[4:7])
stored = int(sys.argv[7])
rows = {}
for line in open(path):
    k, v = line.rstrip("\n").split("\t")
    rows.setdefault(k, []).append(float(v))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"\napp {app / 2**20:.0f} MiB; medians of {runs} rounds, alternating which goes first")
print(f"{'':18}{'seconds':>9}{'app MiB/s':>11}{'vs plain':>10}")
for op in ["backup", "restore"]:
    for name in ["plain", "age"]:
        k = f"{op} {name}"
        print(f"{k:18}{med[k]:9.2f}{app / 2**20 / med[k]:11.0f}{med[k] / med[op + ' plain']:9.2f}x")
print("CPU seconds of the controller with its agent (2 cores: 2 per second of wall time):")
for op in ["backup", "restore"]:
    print(f"  {op}: plain {med['cpu ' + op + ' plain']:.2f}, age {med['cpu ' + op + ' age']:.2f}")
print(f"peak RSS (controller with its agent): plain {rss_plain:.0f} MiB, age {rss_age:.0f} MiB")
per = med["retire"] / runs
print(f"keys retire of {runs} backups ({stored / 2**20:.0f} MiB stored): {med['retire']:.2f} s, "
      f"{per:.2f} s per backup ({stored / 2**20 / med['retire']:.0f} MiB/s), "
      f"{per / med['backup age']:.2f}x an age backup; CPU {med['cpu retire']:.2f} s; "
      f"peak RSS {rss_retire:.0f} MiB (from the controller's start)")
PY
