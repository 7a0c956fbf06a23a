#!/usr/bin/env bash
# Many small files: an app whose data/ holds N files of 100 bytes (default
# 200,000, in 200 directories), backed up and restored through a real
# controller and standalone agent (release build), beside `tar -x` of the
# same stored archive into a fresh directory, the baseline. Rounds alternate
# which goes first; restored trees are set aside and removed at the end, since
# ext4 creates files slowly right after mass deletions.
#
#   tests/bench/small-files.sh            # N=200000 RUNS=3
#   N=50000 RUNS=5 tests/bench/small-files.sh
set -euo pipefail
n=${N:-200000}
runs=${RUNS:-3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml" >&2
work=$(mktemp -d /var/tmp/hop3-small.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { python3 -c "print('%.2f' % ($2 - $1))"; }

root=$work/root
app=$root/apps/small
mkdir -p "$app/data" "$app/src" "$app/git"
echo '{"hostname": "small.example.com", "port": 8000, "services": []}' > "$app/app.json"
echo 'A=1' > "$app/ENV"
python3 - "$app/data" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = 1000
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // per_dir))
    if i % per_dir == 0:
        os.mkdir(d)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(b"%099d\n" % i)
PY
echo "app: $n files of 100 bytes in $(( (n + 999) / 1000 )) directories" >&2

cport=$(free_port)
aport=$(free_port)
"$bin/hop3-controller" --listen 127.0.0.1:$cport --store "$work/store" \
    --socket "$work/ctl.sock" --catalog "sqlite://$work/catalog.db" 2>>"$work/controller.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/store/join-token" ] && break; sleep 0.1; done
"$bin/hop3-agent" --listen 127.0.0.1:$aport --controller http://127.0.0.1:$cport \
    --join-token-file "$work/store/join-token" --root "$root" --host-id bench 2>>"$work/agent.log" &
pids+=($!)
h() { "$bin/hop3" --controller "unix:$work/ctl.sock" "$@"; }
for _ in $(seq 200); do h agent:list 2>/dev/null | grep -q "bench .*online" && break; sleep 0.1; done

t0=$(now); id=$(h backup:create small | awk '/Backup ID:/ {print $3}'); t1=$(now)
backup=$(secs "$t0" "$t1")
archive=$work/store/apps/small/$id/data.tar.zst
[ -f "$archive" ] || { echo "no archive at $archive" >&2; exit 1; }

mkdir -p "$work/aside"
hop3_times=()
tar_times=()
inplace_times=()
for r in $(seq "$runs"); do
    run_hop3() {
        local a b; a=$(now)
        h backup:restore "$id" --target-app "copy-$r" >/dev/null
        b=$(now); hop3_times+=("$(secs "$a" "$b")")
        mv "$root/apps/copy-$r" "$work/aside/copy-$r"
    }
    run_tar() {
        local a b; mkdir "$work/tar-$r"; a=$(now)
        tar --zstd -xf "$archive" -C "$work/tar-$r"
        b=$(now); tar_times+=("$(secs "$a" "$b")")
        mv "$work/tar-$r" "$work/aside/tar-$r"
    }
    if [ $((r % 2)) -eq 1 ]; then run_hop3; run_tar; else run_tar; run_hop3; fi
    a=$(now); h backup:restore "$id" >/dev/null; b=$(now); inplace_times+=("$(secs "$a" "$b")")
done
diff -r "$app/data" "$work/aside/copy-1/data" >/dev/null || { echo "restored data differs" >&2; exit 1; }

med() { python3 -c 'import sys,statistics; print("%.2f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }
mh=$(med "${hop3_times[@]}"); mt=$(med "${tar_times[@]}"); mi=$(med "${inplace_times[@]}")
echo "=== $n files of 100 bytes, medians of $runs run(s), seconds ==="
printf '%-44s %8s   %s\n' "hop3 backup:create" "$backup" ""
printf '%-44s %8s   %s\n' "hop3 backup:restore --target-app (new tree)" "$mh" "${hop3_times[*]}"
printf '%-44s %8s   %s\n' "tar --zstd -xf of the stored data archive" "$mt" "${tar_times[*]}"
printf '%-44s %8s   %s\n' "hop3 backup:restore (in place, swap)" "$mi" "${inplace_times[*]}"
python3 -c "print('restore / tar -x: %.2fx (target <= 2)' % ($mh / $mt))"
