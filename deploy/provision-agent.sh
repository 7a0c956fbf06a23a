#!/usr/bin/env bash
# Provisions a fresh host's hop3-agent and registers it with the controller.
#
#   deploy/provision-agent.sh --controller http://10.0.0.1:7410 [--host-id web-2]
#       [--listen 0.0.0.0:7411] [--advertise http://10.0.0.6:7411]
#       [--root /home/hop3] [--bin DIR] [--no-systemd]
#
# Installs hop3-agent (and hop3) from DIR (default: target/release of this
# checkout) into /usr/local/bin, writes /etc/hop3/agent.env, installs and
# starts the systemd unit (or, with --no-systemd or without systemd, starts
# the agent in the background with its log in /var/log/hop3-agent.log), then
# waits until the controller lists the host as online.
set -euo pipefail

controller="" host_id=$(hostname) listen=0.0.0.0:7411 advertise="" root=/home/hop3
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release systemd=yes
while [ $# -gt 0 ]; do
    case $1 in
        --controller) controller=$2; shift 2 ;;
        --host-id) host_id=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --advertise) advertise=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --no-systemd) systemd=no; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
[ -n "$controller" ] || { echo "--controller URL is required" >&2; exit 2; }
[ -n "$advertise" ] || advertise="http://$(hostname -I 2>/dev/null | awk '{print $1}'):${listen##*:}"
for b in hop3-agent hop3; do
    [ -x "$bin/$b" ] || { echo "$bin/$b not found: build with cargo build --release, or pass --bin DIR" >&2; exit 1; }
    install -m 0755 "$bin/$b" /usr/local/bin/$b
done

install -d -m 0700 /etc/hop3 "$root"
umask 077
cat > /etc/hop3/agent.env <<ENV
HOP3_AGENT_LISTEN=$listen
HOP3_AGENT_ADVERTISE=$advertise
HOP3_CONTROLLER=$controller
HOP3_ROOT=$root
HOP3_HOST_ID=$host_id
RUST_LOG=info
ENV

if [ "$systemd" = yes ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    install -m 0644 "$(dirname "$0")/systemd/hop3-agent.service" /etc/systemd/system/hop3-agent.service
    systemctl daemon-reload
    systemctl enable --now hop3-agent
else
    set -a; . /etc/hop3/agent.env; set +a
    nohup /usr/local/bin/hop3-agent >>/var/log/hop3-agent.log 2>&1 &
    echo "hop3-agent started (pid $!), log in /var/log/hop3-agent.log"
fi

echo "waiting for $host_id to register with $controller ..."
for _ in $(seq 60); do
    if hop3 --controller "$controller" --json agent:list 2>/dev/null |
        python3 -c 'import json,sys; h=sys.argv[1]; sys.exit(0 if any(a["host"]==h and a["status"]=="online" for a in json.load(sys.stdin)) else 1)' "$host_id"; then
        echo "$host_id is online"
        exit 0
    fi
    sleep 1
done
echo "$host_id did not register within 60 s; see the agent's log" >&2
exit 1
