#!/usr/bin/env bash
# Measures one create and one restore of a generated app through a real
# controller and a real standalone agent (release build): wall time, MiB/s,
# peak RSS of each process, and the guide's own pipeline (tar -czf +
# sha256sum, tar -xzf) on the same data as a baseline in the same run.
#
#   tests/bench/one-host.sh [SIZE_MIB] [FORMAT]   (default 200, 1.0; 1.1 = zstd)
#   KEEP=1 keeps the work directory (logs, store) for a look afterwards.
#
# Not part of `cargo test`: numbers, not assertions.
set -euo pipefail
size_mib=${1:-200}
format=${2:-1.0}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
[ -x "$bin/hop3-controller" ] || cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml"

work=$(mktemp -d /tmp/hop3-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

app=$work/root/apps/bench
mkdir -p "$app/data" "$app/src" "$work/store"
echo "generating a ${size_mib} MiB app (40% text, 40% binary, 20% small files)..."
python3 - "$app" "$size_mib" <<'PY'
import os, random, sys
app, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
rnd = random.Random(42)
data = os.path.join(app, "data")
words = [("word%d" % i).encode() for i in range(5000)]
def text_file(path, n):
    with open(path, "wb") as f:
        left = n
        while left > 0:
            line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
            f.write(line[:left]); left -= len(line)
os.makedirs(os.path.join(data, "logs"), exist_ok=True)
os.makedirs(os.path.join(data, "blobs"), exist_ok=True)
for i in range(max(1, int(size * 0.4) // (8 << 20))):
    text_file(os.path.join(data, "logs", "app-%d.log" % i), 8 << 20)
left = int(size * 0.4)
i = 0
while left > 0:
    n = min(left, rnd.randint(1, 50) << 20)
    with open(os.path.join(data, "blobs", "blob-%d.bin" % i), "wb") as f:
        f.write(rnd.randbytes(n))
    left -= n; i += 1
left = int(size * 0.2)
i = 0
while left > 0:
    d = os.path.join(data, "small", "%02d" % (i % 50), "%02d" % (i % 7))
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(1, 16) << 10
    with open(os.path.join(d, "f%05d.json" % i), "wb") as f:
        f.write(rnd.randbytes(n // 2).hex().encode()[:n])
    left -= n; i += 1
PY
git init -q --bare "$app/git"
(
    cd "$work" && git clone -q "$app/git" w 2>/dev/null && cd w
    for c in $(seq 1 20); do
        for f in $(seq 1 50); do echo "commit $c file $f $(date +%N)" > "f$f.txt"; done
        git add -A && git -c user.name=b -c user.email=b@b commit -qm "c$c"
    done
    git push -q origin HEAD:main
    cp -r ./*.txt "$app/src/"
)
printf 'A=1\nDATABASE_URL=postgres://u:p@h/db\n' > "$app/ENV"
echo '{"hostname":"bench.example.com","port":8000,"run_state":"RUNNING","services":[]}' > "$app/app.json"
du -sh "$app"

cport=$(free_port); aport=$(free_port)
"$bin/hop3-controller" --listen 127.0.0.1:$cport \
    --store "$work/store" --catalog "sqlite://$work/catalog.db" 2>"$work/controller.log" &
pids+=($!)
sleep 0.5
"$bin/hop3-agent" --listen 127.0.0.1:$aport \
    --controller http://127.0.0.1:$cport --root "$work/root" --host-id bench 2>"$work/agent.log" &
pids+=($!)
hop3() { "$bin/hop3" --controller http://127.0.0.1:$cport "$@"; }
for _ in $(seq 50); do hop3 backup:list >/dev/null 2>&1 && grep -q registered "$work/agent.log" && break; sleep 0.2; done

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(date +%s.%N)
id=$(hop3 backup:create bench --format "$format" 2>/dev/null | awk '/Backup ID:/ {print $3}')
t1=$(date +%s.%N)
mv "$app" "$work/root/apps/.gone"   # restore onto a host that lost the app
t2=$(date +%s.%N)
hop3 backup:restore "$id" >/dev/null 2>&1
t3=$(date +%s.%N)
stored=$(du -sb "$work/store/apps/bench/$id" | cut -f1)

# The guide's own pipeline on the same data.
cd "$work/root/apps/.gone"
t4=$(date +%s.%N)
tar -czf "$work/guide.tar.gz" git src data && sha256sum "$work/guide.tar.gz" >/dev/null
t5=$(date +%s.%N)
mkdir "$work/guide-out" && tar -xzf "$work/guide.tar.gz" -C "$work/guide-out"
t6=$(date +%s.%N)

# Peak RSS (VmHWM) of each process, read before stopping it.
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
crss=$(hwm "${pids[0]}"); arss=$(hwm "${pids[1]}")
for p in "${pids[@]}"; do kill "$p"; done
wait 2>/dev/null || true
pids=()
diff -r "$work/root/apps/.gone/data" "$work/root/apps/bench/data" >/dev/null && same=yes || same=NO

echo "format $format"
python3 - "$size_mib" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$t6" "$stored" \
    "$crss" "$arss" "$same" <<'PY'
import sys
size, t0, t1, t2, t3, t4, t5, t6, stored, crss, arss, same = sys.argv[1:]
size = int(size); t = list(map(float, (t0, t1, t2, t3, t4, t5, t6)))
create, restore, gc, gx = t[1]-t[0], t[3]-t[2], t[5]-t[4], t[6]-t[5]
print(f"app: {size} MiB generated data + git + src; restored data identical: {same}")
print(f"{'':24}{'wall s':>8}{'MiB/s':>8}{'vs guide':>10}")
print(f"{'hop3 backup:create':24}{create:8.2f}{size/create:8.1f}{gc/create:9.1f}x")
print(f"{'tar -czf + sha256sum':24}{gc:8.2f}{size/gc:8.1f}{1:9.1f}x")
print(f"{'hop3 backup:restore':24}{restore:8.2f}{size/restore:8.1f}{gx/restore:9.1f}x")
print(f"{'tar -xzf':24}{gx:8.2f}{size/gx:8.1f}{1:9.1f}x")
print(f"stored: {int(stored)/2**20:.1f} MiB")
print(f"peak RSS: controller {int(crss)/1024:.1f} MiB, agent {int(arss)/1024:.1f} MiB")
PY
