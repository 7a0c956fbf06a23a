#!/usr/bin/env bash
# Controller start-up against a big store: N backups (default 100,000) of
# A apps (default 1,000), each a metadata.json and an env.json, written
# straight into a local store (and, with S3_N > 0, S3_N of them into a
# throwaway moto bucket). Release build. For each store it prints:
#   - full rebuild: an empty catalog filled from the store before serving
#     (time to serve, the controller's peak RSS);
#   - restart: the same catalog, time until `hop3 backup:list` answers, and
#     until the background check against the store has ended, with the
#     peak RSS by then;
# beside the baseline, in the same run: reading every metadata.json once
# (`find | xargs cat`), the floor of any walk that reads the manifests.
#
#   tests/bench/startup.sh [N] [A]      (S3_N=10000 for the bucket; 0 skips it)
set -euo pipefail
n=${1:-100000}
apps=${2:-1000}
s3_n=${S3_N:-10000}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release
[ -x "$bin/hop3-controller" ] || cargo build --release --workspace --bins --manifest-path "$repo/Cargo.toml"
work=$(mktemp -d /tmp/hop3-startup.XXXXXX)
pid="" moto=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    [ -n "$moto" ] && kill "$moto" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2-$1)*1000))"; }

# The backups: IDs a minute apart, round-robin over the apps.
generate() { # OUT_DIR COUNT
    python3 - "$1" "$2" "$apps" <<'PY'
import hashlib, json, os, sys, datetime
out, n, apps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = b'{"A":"1"}'
digest = "sha256:" + hashlib.sha256(env).hexdigest()
t0 = datetime.datetime(2025, 1, 1)
for i in range(n):
    t = t0 + datetime.timedelta(minutes=i)
    bid = "%s_%06x" % (t.strftime("%Y%m%d_%H%M%S"), i % 0xffffff)
    app = "app-%d" % (i % apps)
    d = os.path.join(out, "apps", app, bid)
    os.makedirs(d)
    with open(os.path.join(d, "env.json"), "wb") as f:
        f.write(env)
    m = {"backup_id": bid, "app_name": app, "created_at": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "format_version": "1.0", "hop3_version": "0.8.0", "size_bytes": len(env),
         "checksums": {"env.json": digest},
         "app_metadata": {"hostname": None, "port": None, "run_state": None},
         "services": [], "env_vars_count": 1, "expires_after": 0, "host": "h"}
    with open(os.path.join(d, "metadata.json"), "w") as f:
        json.dump(m, f)
PY
}

# Starts the controller on STORE with its own state dir; echoes nothing,
# sets $pid and $port.
start() { # STORE STATE [ENV...]
    local store=$1 state=$2
    shift 2
    port=$(free_port)
    env "$@" "$bin/hop3-controller" --listen 127.0.0.1:$port --store "$store" --state-dir "$state" \
        --socket "$state/ctl.sock" --allow-plaintext-store 2>>"$state/controller.log" &
    pid=$!
}
wait_serving() { # STATE
    for _ in $(seq 6000); do
        "$bin/hop3" --controller "unix:$1/ctl.sock" backup:list --limit 1 >/dev/null 2>&1 && return
        kill -0 "$pid" 2>/dev/null || { echo "the controller died:" >&2; tail "$1/controller.log" >&2; exit 1; }
        sleep 0.01
    done
    echo "the controller did not serve" >&2; exit 1
}
wait_checked() { # STATE RUN
    for _ in $(seq 60000); do
        [ "$(grep -c 'catalog checked against the store' "$1/controller.log")" -ge "$2" ] && return
        sleep 0.01
    done
    echo "the background check did not end" >&2; exit 1
}
peak() { awk '/VmHWM/ {printf "%d", $2/1024}' /proc/$pid/status; }
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

bench() { # LABEL STORE STATE COUNT [ENV...]
    local label=$1 store=$2 state=$3 count=$4
    shift 4
    mkdir -p "$state"
    local a b c
    a=$(now); start "$store" "$state" "$@"; wait_serving "$state"; b=$(now)
    echo "$label, $count backups:"
    echo "  full rebuild (empty catalog), to serving   $(ms "$a" "$b") ms, peak RSS $(peak) MiB"
    stop
    a=$(now); start "$store" "$state" "$@"; wait_serving "$state"; b=$(now)
    wait_checked "$state" 2; c=$(now)
    echo "  restart, to serving                        $(ms "$a" "$b") ms"
    echo "  restart, background check ended            $(ms "$a" "$c") ms, peak RSS $(peak) MiB"
    stop
}

echo "generating $n backups of $apps apps..."
generate "$work/store" "$n"
# A store this version wrote: its backups are sealed (no first-start sealing).
touch "$work/store/.sealed-once"
sync
a=$(now); find "$work/store/apps" -name metadata.json -print0 | xargs -0 cat >/dev/null; b=$(now)
echo "baseline: reading every metadata.json once (find | xargs cat)   $(ms "$a" "$b") ms"
bench "local store" "$work/store" "$work/state-local" "$n"

if [ "$s3_n" -gt 0 ] && command -v moto_server >/dev/null; then
    mport=$(free_port)
    moto_server -H 127.0.0.1 -p "$mport" >"$work/moto.log" 2>&1 &
    moto=$!
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$mport/" >/dev/null && break; sleep 0.1; done
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
    endpoint=http://127.0.0.1:$mport
    echo "uploading $s3_n backups to moto..."
    generate "$work/s3src" "$s3_n"
    python3 - "$endpoint" "$work/s3src" <<'PY'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, src = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket="bench")
files = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
s3.put_object(Bucket="bench", Key="fleet/.sealed-once", Body=b"")
def put(p):
    s3.put_object(Bucket="bench", Key="fleet/" + os.path.relpath(p, src), Body=open(p, "rb").read())
with ThreadPoolExecutor(16) as ex:
    list(ex.map(put, files))
PY
    a=$(now)
    python3 - "$endpoint" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench")
        for o in page.get("Contents", []) if o["Key"].endswith("metadata.json")]
for k in keys:
    s3.get_object(Bucket="bench", Key=k)["Body"].read()
PY
    b=$(now)
    echo "baseline: boto3 listing the bucket and reading every metadata.json   $(ms "$a" "$b") ms"
    bench "S3 store (moto)" "s3://bench/fleet" "$work/state-s3" "$s3_n" \
        AWS_ENDPOINT_URL="$endpoint" AWS_ALLOW_HTTP=true
fi
