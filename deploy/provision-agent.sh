#!/usr/bin/env bash
# Provisions a fresh host's hop3-agent and registers it with the controller.
#
#   deploy/provision-agent.sh --controller https://ctl.example.com:7410 --host-id web-2 \
#       (--tls-from DIR | --issue-from CA_DIR) [--listen 0.0.0.0:7411]
#       [--advertise https://10.0.0.6:7411] [--root /home/hop3] [--bin DIR]
#       [--no-systemd] [--prefix DIR]
#   deploy/provision-agent.sh --controller http://127.0.0.1:7410 --listen 127.0.0.1:7411 \
#       --join-token /var/hop3/backups/join-token      (an agent on the controller's machine)
#
# Off loopback the agent speaks mutual TLS only: --tls-from DIR copies ca.pem
# and HOST_ID.pem/.key made by `hop3-controller certs issue-agent HOST_ID
# --out DIR`; --issue-from CA_DIR (on a machine holding the authority, e.g.
# the controller's) issues them in one step. On loopback, without TLS, the
# agent registers with the controller's join token (--join-token FILE).
#
# Installs hop3-agent (and hop3) from DIR (default: target/release of this
# checkout) into /usr/local/bin, writes /etc/hop3/agent.env (and
# /etc/hop3/tls/ or /etc/hop3/join-token), installs and starts the systemd
# unit (or, with --no-systemd or without systemd, starts the agent in the
# background, its log in /var/log/hop3-agent.log and its pid in
# /run/hop3-agent.pid), then waits until the agent says it registered.
# --prefix DIR puts every one of those paths under DIR.
set -euo pipefail

controller="" host_id=$(hostname) listen=0.0.0.0:7411 advertise="" root=/home/hop3
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release systemd=yes prefix=""
tls_from="" issue_from="" join_token=""
while [ $# -gt 0 ]; do
    case $1 in
        --controller) controller=$2; shift 2 ;;
        --host-id) host_id=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --advertise) advertise=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --tls-from) tls_from=$2; shift 2 ;;
        --issue-from) issue_from=$2; shift 2 ;;
        --join-token) join_token=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --no-systemd) systemd=no; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
die() { echo "$*" >&2; exit 2; }
[ -n "$controller" ] || die "--controller URL is required"
host=${listen%:*}
case $host in
    127.*|localhost|"[::1]") loopback=yes ;;
    *) loopback=no ;;
esac
tls=no
if [ -n "$tls_from" ] || [ -n "$issue_from" ]; then tls=yes; fi
if [ $tls = no ] && [ $loopback = no ]; then
    die "listening on $listen (off loopback) needs TLS: pass --tls-from DIR (from hop3-controller certs issue-agent $host_id --out DIR) or --issue-from CA_DIR"
fi
if [ $tls = yes ]; then
    case $controller in https://*) ;; *) die "with TLS the controller's URL is https://..., not $controller" ;; esac
    scheme=https
else
    [ -n "$join_token" ] || join_token=/var/hop3/backups/join-token
    [ -r "$join_token" ] || die "without TLS the agent needs the controller's join token: pass --join-token FILE (the controller writes STORE/join-token at its first start)"
    scheme=http
fi
[ -n "$advertise" ] || advertise="$scheme://$(hostname -I 2>/dev/null | awk '{print $1}'):${listen##*:}"

bindir=$prefix/usr/local/bin etc=$prefix/etc/hop3
install -d -m 0755 "$bindir"
for b in hop3-agent hop3; do
    [ -x "$bin/$b" ] || die "$bin/$b not found: build with cargo build --release, or pass --bin DIR"
    install -m 0755 "$bin/$b" "$bindir/$b"
done
install -d -m 0700 "$etc" "$root"
umask 077
if [ $tls = yes ]; then
    install -d -m 0700 "$etc/tls"
    if [ -n "$issue_from" ]; then
        command -v hop3-controller >/dev/null || [ -x "$bin/hop3-controller" ] ||
            die "--issue-from needs hop3-controller (in $bin or on PATH)"
        ctl=$(command -v hop3-controller || echo "$bin/hop3-controller")
        "$ctl" certs issue-agent "$host_id" --dir "$issue_from" --out "$etc/tls" >/dev/null
    else
        for f in ca.pem "$host_id.pem" "$host_id.key"; do
            [ -r "$tls_from/$f" ] || die "$tls_from/$f not found: make it with hop3-controller certs issue-agent $host_id --out $tls_from"
            install -m 0600 "$tls_from/$f" "$etc/tls/$f"
        done
    fi
    auth="HOP3_TLS_DIR=$etc/tls"
else
    install -m 0600 "$join_token" "$etc/join-token"
    auth="HOP3_JOIN_TOKEN_FILE=$etc/join-token"
fi
cat > "$etc/agent.env" <<ENV
HOP3_AGENT_LISTEN=$listen
HOP3_AGENT_ADVERTISE=$advertise
HOP3_CONTROLLER=$controller
HOP3_ROOT=$root
HOP3_HOST_ID=$host_id
$auth
RUST_LOG=info
ENV

log=$prefix/var/log/hop3-agent.log
if [ "$systemd" = yes ] && [ -z "$prefix" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    install -m 0644 "$(dirname "$0")/systemd/hop3-agent.service" /etc/systemd/system/hop3-agent.service
    systemctl daemon-reload
    systemctl enable --now hop3-agent
    since=$(date '+%Y-%m-%d %H:%M:%S')
    registered() { journalctl -u hop3-agent --since "$since" 2>/dev/null | grep -q "registered with the controller"; }
else
    install -d -m 0755 "$(dirname "$log")" "$prefix/run"
    : > "$log"
    (set -a; . "$etc/agent.env"; set +a; exec nohup "$bindir/hop3-agent" >>"$log" 2>&1) &
    echo $! > "$prefix/run/hop3-agent.pid"
    echo "hop3-agent started (pid $!), log in $log"
    registered() { grep -q "registered with the controller" "$log"; }
fi

echo "waiting for $host_id to register with $controller ..."
for _ in $(seq 60); do
    if registered; then
        echo "$host_id is registered"
        exit 0
    fi
    sleep 1
done
echo "$host_id did not register within 60 s; see the agent's log ($log, or journalctl -u hop3-agent)" >&2
exit 1
