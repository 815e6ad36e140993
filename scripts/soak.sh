#!/usr/bin/env bash
# Soak test: the echo and chat examples (release builds) under mixed load for SECS seconds.
#
#   scripts/soak.sh [SECS]       # default 120
#
# Load, all at once:
# - loadgen against echo over TCP (50 connections, 4 messages in flight, sizes 64 B) and
#   UDP (8 sockets), every echoed byte checked by loadgen;
# - a python3 chat mix against chat: 20 users that join, take a nick, talk (/who, /me,
#   messages, now and then a bad line), read what the room says, /quit and come back; and
#   one slow reader that never reads, is cut off at its output limit, and comes back.
# Both servers' RSS (VmRSS) and descriptor counts are sampled after a warm-up round (no
# clients connected) and again at the end, once the clients are gone. Exits non-zero if
# a client reported an error, if a server died, if RSS grew by more than 20% + 2 MiB, or
# if the descriptor counts did not come back to their warm-up values.
set -euo pipefail

secs="${1:-120}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECS]" >&2; exit 2 ;;
esac
((secs >= 10)) || { echo "soak.sh: SECS must be at least 10" >&2; exit 2; }

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
command -v python3 >/dev/null || { echo "soak.sh: python3 is needed for the chat mix" >&2; exit 2; }

cargo build --release --quiet --examples
bin=target/release/examples

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts example $1 (more args follow) with its log in $tmp/$1.log; sets PID and ADDR.
start() {
  local name="$1"
  shift
  RUST_LOG=warn,${name}=info "$bin/$name" --addr 127.0.0.1:0 "$@" 2>"$tmp/$name.log" &
  PID=$!
  pids+=("$PID")
  ADDR=""
  for _ in $(seq 100); do
    ADDR="$(grep -o 'listening on [0-9.:]*' "$tmp/$name.log" | head -n1 | cut -d' ' -f3 || true)"
    [[ -n "$ADDR" ]] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "soak.sh: $name did not start" >&2
  cat "$tmp/$name.log" >&2
  exit 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

# Waits (up to 10 s) until process $1 has $2 descriptors open; true if it got there.
settle_fds() {
  for _ in $(seq 100); do
    [[ "$(fds "$1")" -le "$2" ]] && return 0
    sleep 0.1
  done
  return 1
}

start echo
echo_pid=$PID echo_addr=$ADDR
start chat
chat_pid=$PID chat_addr=$ADDR
echo "soak: echo (pid $echo_pid) on $echo_addr, chat (pid $chat_pid) on $chat_addr, ${secs}s"

cat >"$tmp/chat_mix.py" <<'PY'
"""Chat mix for soak.sh: users that come and go, talk and read; one slow reader."""
import json, random, select, socket, sys, threading, time

host, port = sys.argv[1].rsplit(":", 1)
port, secs, users = int(port), float(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + secs
lock = threading.Lock()
stats = {"joins": 0, "lines_sent": 0, "lines_heard": 0, "errs_heard": 0, "quits": 0,
         "slow_cut": 0}
errors = []


def bump(key, n=1):
    with lock:
        stats[key] += n


def read_line(s, buf):
    """Blocking (with the socket timeout): one line from s, buffered in buf."""
    while b"\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError("EOF")
        buf.extend(d)
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[: i + 1]
    return line


def drain(s, buf):
    """Reads what is there without waiting; counts whole lines."""
    while select.select([s], [], [], 0)[0]:
        d = s.recv(65536)
        if not d:
            raise EOFError("EOF while connected")
        buf.extend(d)
    while b"\n" in buf:
        line = read_line(s, buf)
        bump("lines_heard")
        if line.startswith(b"ERR "):
            bump("errs_heard")


def user(i):
    rng = random.Random(i)
    while time.time() < deadline:
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray()
            welcome = read_line(s, buf)
            if not welcome.startswith(b"* welcome"):
                raise ValueError(f"welcome: {welcome!r}")
            nick = f"u{i}x{rng.randrange(10**6)}"
            s.sendall(f"/nick {nick}\n".encode())
            bump("joins")
            for _ in range(rng.randrange(10, 60)):
                if time.time() >= deadline:
                    break
                r = rng.random()
                if r < 0.75:
                    s.sendall(f"hello from {nick}: {rng.random()}\n".encode())
                elif r < 0.85:
                    s.sendall(b"/who\n")
                elif r < 0.95:
                    s.sendall(b"/me waves\n")
                else:
                    s.sendall(rng.choice([b"\xff\xfe bad\n", b"esc \x1b[2J\n", b"x" * 5000 + b"\n"]))
                bump("lines_sent")
                drain(s, buf)
                time.sleep(rng.uniform(0.0, 0.02))
            s.sendall(b"/quit\n")
            while True:  # the rest, then "* bye", then EOF
                if read_line(s, buf) == b"* bye":
                    break
            s.settimeout(10)
            while s.recv(65536):
                pass
            s.close()
            bump("quits")
        except Exception as e:  # noqa: BLE001 - any failure is a soak error
            with lock:
                errors.append(f"user {i}: {e!r}")
            time.sleep(0.1)


def slow_reader():
    """Never reads: cut off at the output limit; then comes back."""
    while time.time() < deadline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect((host, port))
        s.sendall(b"/nick slow\n")
        try:
            while time.time() < deadline:
                time.sleep(0.5)
                s.sendall(b"\n")  # an empty line: ignored while the connection lives
        except OSError:
            bump("slow_cut")
        s.close()


threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
threads.append(threading.Thread(target=slow_reader))
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"chat_mix": stats, "errors": errors[:10], "error_count": len(errors)}))
sys.exit(1 if errors or stats["quits"] == 0 else 0)
PY

# Warm-up: a short round of each load, then the baseline with no clients connected.
"$bin/loadgen" --addr "$echo_addr" --conns 50 --depth 4 --secs 2 --warmup 0.5 --json >/dev/null 2>&1
python3 "$tmp/chat_mix.py" "$chat_addr" 3 5 >/dev/null
sleep 1
echo_rss0=$(rss_kb "$echo_pid") chat_rss0=$(rss_kb "$chat_pid")
echo_fd0=$(fds "$echo_pid") chat_fd0=$(fds "$chat_pid")
echo "soak: after warm-up: echo ${echo_rss0} kB RSS, ${echo_fd0} fds; chat ${chat_rss0} kB RSS, ${chat_fd0} fds"

# The soak.
run=$((secs - 5))
"$bin/loadgen" --addr "$echo_addr" --conns 50 --depth 4 --secs "$run" --warmup 1 --json \
  >"$tmp/tcp.json" 2>"$tmp/tcp.err" &
tcp=$!
"$bin/loadgen" --addr "$echo_addr" --proto udp --conns 8 --depth 2 --size 512 --secs "$run" \
  --warmup 1 --json >"$tmp/udp.json" 2>"$tmp/udp.err" &
udp=$!
python3 "$tmp/chat_mix.py" "$chat_addr" "$run" 20 >"$tmp/chat.json" 2>"$tmp/chat.err" &
mix=$!
# Mid-run samples, for the record.
sleep $((run / 2))
echo "soak: mid-run: echo $(rss_kb "$echo_pid") kB RSS, $(fds "$echo_pid") fds;" \
  "chat $(rss_kb "$chat_pid") kB RSS, $(fds "$chat_pid") fds"

failed=0
wait "$tcp" || { echo "soak.sh: loadgen tcp failed:"; tail -n 5 "$tmp/tcp.err"; failed=1; }
wait "$udp" || { echo "soak.sh: loadgen udp failed:"; tail -n 5 "$tmp/udp.err"; failed=1; }
wait "$mix" || { echo "soak.sh: chat mix failed:"; cat "$tmp/chat.err"; failed=1; }
echo "soak: echo tcp: $(tail -n1 "$tmp/tcp.json")"
echo "soak: echo udp: $(tail -n1 "$tmp/udp.json")"
echo "soak: chat: $(tail -n1 "$tmp/chat.json")"

for p in "$echo_pid" "$chat_pid"; do
  kill -0 "$p" 2>/dev/null || { echo "soak.sh: server $p died"; exit 1; }
done
settle_fds "$echo_pid" "$echo_fd0" || true
settle_fds "$chat_pid" "$chat_fd0" || true
echo_rss1=$(rss_kb "$echo_pid") chat_rss1=$(rss_kb "$chat_pid")
echo_fd1=$(fds "$echo_pid") chat_fd1=$(fds "$chat_pid")

printf '%-6s %12s %12s %8s %8s\n' server "RSS start kB" "RSS end kB" "fds start" "fds end"
printf '%-6s %12s %12s %8s %8s\n' echo "$echo_rss0" "$echo_rss1" "$echo_fd0" "$echo_fd1"
printf '%-6s %12s %12s %8s %8s\n' chat "$chat_rss0" "$chat_rss1" "$chat_fd0" "$chat_fd1"

check() { # name rss0 rss1 fd0 fd1
  local allowed=$(($2 * 120 / 100 + 2048))
  if (($3 > allowed)); then
    echo "soak.sh: $1 RSS grew from $2 to $3 kB (allowed $allowed)"
    failed=1
  fi
  if (($5 != $4)); then
    echo "soak.sh: $1 has $5 descriptors open, $4 after warm-up"
    failed=1
  fi
}
check echo "$echo_rss0" "$echo_rss1" "$echo_fd0" "$echo_fd1"
check chat "$chat_rss0" "$chat_rss1" "$chat_fd0" "$chat_fd1"
if ((failed)); then
  echo "soak: FAILED"
  exit 1
fi
echo "soak: ok"
