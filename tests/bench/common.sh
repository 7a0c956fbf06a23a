# Sourced by the benchmarks that start their own controllers: small helpers.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Now, in seconds with nanoseconds.
now() { date +%s.%N; }
# The peak RSS of process $1 so far, in KiB.
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# CPU seconds (user + system) process $1 has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
