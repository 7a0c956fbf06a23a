# Sourced by the benchmarks: the generated app they all measure.
#
# generate_files APP_DIR SIZE_GIB writes, seeded so that every run makes the
# same bytes, a data directory of ~40% compressible text/JSON/logs, ~40%
# incompressible binaries of 1-50 MiB and ~20% small files (1-16 KiB,
# nested), and a git repository of ~2,500 files over 50 commits with its
# checked-out tree in src/. ENV and app.json are the caller's.

generate_files() { # generate_files APP_DIR SIZE_GIB
    local app=$1 gib=$2
    mkdir -p "$app/data" "$app/src"
    python3 - "$app/data" "$gib" <<'PY'
import json, os, random, sys
data, gib = sys.argv[1], float(sys.argv[2])
total = int(gib * 2**30)
rnd = random.Random(20261127)
words = ["%s%d" % (rnd.choice(["user", "order", "cart", "item", "GET", "POST", "ok", "error", "latency"]), i)
         for i in range(4000)]
lines = []
for i in range(60000):
    kind = i % 3
    if kind == 0:
        lines.append(("2026-11-%02d %02d:%02d:%02d INFO %s\n" % (1 + i % 28, i % 24, i % 60, (i * 7) % 60,
                      " ".join(rnd.choices(words, k=rnd.randint(4, 14))))).encode())
    elif kind == 1:
        lines.append((json.dumps({"id": i, "user": rnd.choice(words), "tags": rnd.choices(words, k=3),
                                  "amount": round(rnd.random() * 1000, 2)}) + "\n").encode())
    else:
        lines.append((",".join(str(rnd.randint(0, 10**6)) for _ in range(rnd.randint(3, 9))) + "\n").encode())
avg = sum(map(len, lines)) / len(lines)
def text(n):
    return b"".join(rnd.choices(lines, k=int(n / avg) + 1))[:n]
def write(path, body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)
# ~40% text, JSON and logs, in files of 1-32 MiB.
left, i = int(total * 0.4), 0
while left > 0:
    n = min(left, rnd.randint(1, 32) << 20)
    write(os.path.join(data, ["logs", "exports", "reports"][i % 3], "part-%04d.%s" % (i, ["log", "json", "csv"][i % 3])), text(n))
    left -= n; i += 1
# ~40% incompressible binaries of 1-50 MiB (uploads, images, archives).
left, i = int(total * 0.4), 0
while left > 0:
    n = min(left, rnd.randint(1, 50) << 20)
    write(os.path.join(data, "uploads", "%02d" % (i % 8), "blob-%04d.bin" % i), rnd.randbytes(n))
    left -= n; i += 1
# ~20% small files of 1-16 KiB in nested directories, half text, half binary.
left, i = int(total * 0.2), 0
while left > 0:
    n = rnd.randint(1, 16) << 10
    d = os.path.join(data, "cache", "%02x" % (i % 64), "%02x" % (i // 64 % 16))
    body = text(n) if i % 2 else rnd.randbytes(n)
    write(os.path.join(d, "obj-%06d.%s" % (i, "json" if i % 2 else "bin")), body)
    left -= n; i += 1
PY
    # The git repository: ~2,500 files over 50 commits, written by fast-import
    # with fixed dates so its objects are the same every run.
    git init -q --bare "$app/git"
    python3 - <<'PY' | git -C "$app/git" fast-import --quiet
import random, sys
rnd = random.Random(7)
out = sys.stdout.buffer
files = {}
for c in range(1, 51):
    if c == 1:
        changed = ["app/mod%03d/file%04d.py" % (i % 120, i) for i in range(2000)]
    else:
        changed = rnd.sample(sorted(files), 60) + ["app/new/c%02d_%02d.py" % (c, k) for k in range(10)]
    out.write(b"commit refs/heads/main\n")
    out.write(b"committer Bench <bench@example.com> %d +0000\n" % (1764000000 + c * 3600))
    msg = b"change %d\n" % c
    out.write(b"data %d\n%s" % (len(msg), msg))
    for path in changed:
        body = ("# %s rev %d\n" % (path, c)).encode() + b"".join(
            b"def f%d(x):\n    return x * %d\n" % (k, rnd.randint(0, 999)) for k in range(rnd.randint(5, 60)))
        files[path] = body
        out.write(b"M 644 inline %s\ndata %d\n%s\n" % (path.encode(), len(body), body))
    out.write(b"\n")
PY
    git -C "$app/git" symbolic-ref HEAD refs/heads/main
    git --git-dir="$app/git" --work-tree="$app/src" checkout -q -f main
}
