#!/usr/bin/env bash
# The object-storage benchmark: backup and restore of the generated app
# (tests/bench/app.sh, ~1 GiB) to an S3 server against the same to the local
# store, and against the reference client uploading and downloading the
# very bytes hop3 stored (boto3's upload_file/download_file, its default
# transfer settings: 8 MiB parts, 10 threads), in the same run, with the
# controller's and the agent's peak RSS.
#
#   tests/bench/s3.sh                  # ~1 GiB, 3 rounds
#   RUNS=1 SIZE=0.25 tests/bench/s3.sh
#
# Backups go up in the clear (--allow-plaintext-store): this measures the
# transfer; tests/bench/encryption.sh measures what encryption adds.
# The server is moto's (moto_server, from PyPI's moto[server]), in memory on
# 127.0.0.1: every figure is bound by it, so only the ratios travel. The
# restored trees are compared with the original every round. Not part of
# `cargo test`: figures, not assertions.
set -euo pipefail
runs=${RUNS:-3}
size=${SIZE:-1}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
source "$repo/tests/bench/app.sh"
source "$repo/tests/bench/common.sh"
cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml" 2>&1 | tail -1
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q boto3 ||
    python3 -m pip install -q --break-system-packages boto3

work=$(mktemp -d /tmp/hop3-s3bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# The peak of one phase: read the high-water mark, then reset it (Linux >= 4.0).
phase_peak() { # phase_peak NAME PID
    printf 'peak RSS MiB: %s\t%s\n' "$1" "$(echo "$(hwm "$2") / 1024" | bc)" >> "$results"
    echo 5 > "/proc/$2/clear_refs"
}
results=$work/results.tsv # what seconds
: > "$results"
timed() { # timed NAME CMD...
    local name=$1; shift
    sync
    local t0; t0=$(now)
    "$@" >/dev/null
    printf '%s\t%s\n' "$name" "$(echo "$(now) - $t0" | bc)" >> "$results"
}

# --- The S3 server and its bucket ------------------------------------------
mport=$(free_port)
moto_server -H 127.0.0.1 -p "$mport" >"$work/moto.log" 2>&1 &
moto_pid=$!; pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/" >/dev/null && break; sleep 0.2; done
curl -sf -X PUT "http://127.0.0.1:$mport/bench" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL=http://127.0.0.1:$mport AWS_ALLOW_HTTP=true

# --- The app ------------------------------------------------------------------
root=$work/root
mkdir -p "$root/apps"
echo "generating a ${size} GiB app ..."
generate_files "$root/apps/shop" "$size"
printf 'SECRET_KEY=bench\n' > "$root/apps/shop/ENV"
echo '{"hostname":"shop.example.com","port":8000,"run_state":"RUNNING"}' > "$root/apps/shop/app.json"
app_bytes=$(du -sb "$root/apps/shop" | cut -f1)

# --- Two controllers, each with its agent: the local store and the bucket -------
declare -A ctl_pid agent_pid url
start_hop3() { # start_hop3 NAME STORE
    local name=$1 state=$work/state-$1 cport aport
    cport=$(free_port); aport=$(free_port)
    "$bin/hop3-controller" --listen 127.0.0.1:$cport --store "$2" --state-dir "$state" \
        --socket "$work/$name.sock" --catalog "sqlite://$state/catalog.db" --allow-plaintext-store 2>>"$work/controller-$name.log" &
    ctl_pid[$name]=$!; pids+=($!)
    for _ in $(seq 100); do [ -s "$state/join-token" ] && break; sleep 0.1; done
    "$bin/hop3-agent" --listen 127.0.0.1:$aport --controller http://127.0.0.1:$cport \
        --join-token-file "$state/join-token" --root "$root" --host-id bench 2>>"$work/agent-$name.log" &
    agent_pid[$name]=$!; pids+=($!)
    url[$name]=unix:$work/$name.sock
    for _ in $(seq 100); do
        "$bin/hop3" --controller "${url[$name]}" agent:list 2>/dev/null | grep -q online && return
        sleep 0.2
    done
    echo "hop3 ($name) did not start" >&2; exit 1
}
start_hop3 local "$work/store"
start_hop3 s3 s3://bench/hop3

same_tree() {
    diff -r --no-dereference "$1/data" "$2/data" >/dev/null && diff -r --no-dereference "$1/git" "$2/git" >/dev/null \
        && diff -r --no-dereference "$1/src" "$2/src" >/dev/null
}
backup() { # backup NAME: prints the backup ID
    "$bin/hop3" --controller "${url[$1]}" --json backup:create shop --no-services |
        python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["status"]=="COMPLETED", d; print(d["backup_id"])'
}
restore() { # restore NAME ID TARGET
    "$bin/hop3" --controller "${url[$1]}" --json backup:restore "$2" --target-app "$3" >/dev/null
}
# The reference client, on the bytes hop3 stored in the local store.
boto() { # boto up|down ID
    python3 - "$1" "$work/store/apps/shop/$2" "$work/down-$2" "$work/boto-cpu" <<'PY'
import atexit, os, resource, sys, boto3
mode, src, dst, cpu_out = sys.argv[1:]
def own_cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    with open(cpu_out, "w") as f:
        f.write("%.2f" % (u.ru_utime + u.ru_stime))
atexit.register(own_cpu)
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
names = sorted(n for n in os.listdir(src) if n != "metadata.seal")
if mode == "up":
    for n in names:
        s3.upload_file(os.path.join(src, n), "bench", "ref/%s" % n)
else:
    os.makedirs(dst, exist_ok=True)
    for n in names:
        s3.download_file("bench", "ref/%s" % n, os.path.join(dst, n))
PY
}

for r in $(seq "$runs"); do
    echo "round $r/$runs"
    sync
    t0=$(now); id=$(backup local); printf 'backup local\t%s\n' "$(echo "$(now) - $t0" | bc)" >> "$results"
    # Where the CPU goes: on two cores the server, the compressor and the
    # uploader compete for it, and the ratios only mean something beside it.
    c0=$(cpu "$moto_pid"); c1=$(cpu "${ctl_pid[s3]}"); c2=$(cpu "${agent_pid[s3]}")
    t0=$(now); sid=$(backup s3); printf 'backup s3\t%s\n' "$(echo "$(now) - $t0" | bc)" >> "$results"
    printf 'cpu backup s3: moto\t%s\n' "$(echo "$(cpu "$moto_pid") - $c0" | bc)" >> "$results"
    printf 'cpu backup s3: controller\t%s\n' "$(echo "$(cpu "${ctl_pid[s3]}") - $c1" | bc)" >> "$results"
    printf 'cpu backup s3: agent\t%s\n' "$(echo "$(cpu "${agent_pid[s3]}") - $c2" | bc)" >> "$results"
    stored=$(du -sb "$work/store/apps/shop/$id" | cut -f1)
    phase_peak "controller, backup s3" "${ctl_pid[s3]}"
    c0=$(cpu "$moto_pid")
    timed "upload boto3" boto up "$id"
    printf 'cpu upload boto3: moto\t%s\n' "$(echo "$(cpu "$moto_pid") - $c0" | bc)" >> "$results"
    printf 'cpu upload boto3: boto3\t%s\n' "$(cat "$work/boto-cpu")" >> "$results"
    timed "restore local" restore local "$id" "shop-l$r"
    same_tree "$root/apps/shop" "$root/apps/shop-l$r" || { echo "MISMATCH after the local restore" >&2; exit 1; }
    rm -rf "$root/apps/shop-l$r"
    timed "restore s3" restore s3 "$sid" "shop-s$r"
    phase_peak "controller, restore s3" "${ctl_pid[s3]}"
    same_tree "$root/apps/shop" "$root/apps/shop-s$r" || { echo "MISMATCH after the S3 restore" >&2; exit 1; }
    rm -rf "$root/apps/shop-s$r"
    timed "download boto3" boto down "$id"
    rm -rf "$work/down-$id"
done

python3 - "$results" "$app_bytes" "$stored" "$runs" \
    "$(hwm "${ctl_pid[local]}")" "$(hwm "${ctl_pid[s3]}")" \
    "$(hwm "${agent_pid[local]}")" "$(hwm "${agent_pid[s3]}")" <<'PY'
import statistics, sys
path, app, stored, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctl_l, ctl_s, ag_l, ag_s = (int(x) / 1024 for x in sys.argv[5:9])
rows = {}
for line in open(path):
    k, v = line.rstrip("\n").split("\t")
    rows.setdefault(k, []).append(float(v))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"\napp {app / 2**20:.0f} MiB, stored {stored / 2**20:.0f} MiB; medians of {runs} rounds")
print(f"{'':22}{'seconds':>9}{'app MiB/s':>11}{'vs boto3':>10}")
for k, ref in [("backup local", "upload boto3"), ("backup s3", "upload boto3"), ("upload boto3", None),
               ("restore local", "download boto3"), ("restore s3", "download boto3"), ("download boto3", None)]:
    ratio = f"{med[k] / med[ref]:.2f}x" if ref else "1.00x"
    print(f"{k:22}{med[k]:9.2f}{app / 2**20 / med[k]:11.0f}{ratio:>10}")
print("CPU seconds (both cores: 2 per second of wall time):")
for k in sorted(k for k in med if k.startswith("cpu ")):
    print(f"  {k[4:]:30}{med[k]:7.2f}")
print("controller peak RSS per phase (highest of the rounds):")
for k in sorted(k for k in rows if k.startswith("peak RSS MiB: ")):
    print(f"  {k[14:]:30}{max(rows[k]):7.0f} MiB")
# The S3 controller's high-water mark is reset after each phase; its peak is the highest phase.
ctl_s = max([ctl_s] + [max(v) for k, v in rows.items() if k.startswith("peak RSS MiB: ")])
print(f"peak RSS of the whole run: controller {ctl_l:.0f} MiB (local store), {ctl_s:.0f} MiB (S3); "
      f"agent {ag_l:.0f} / {ag_s:.0f} MiB")
PY
