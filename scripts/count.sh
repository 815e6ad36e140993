#!/usr/bin/env bash
# Counting, for evloop's echo example and the floor (floor_mio_echo, raw mio):
#   1. system calls per echoed message, TCP 50 connections x 64 B, depth 1 and 16
#      (perf tracepoints on the server while loadgen drives it);
#   2. user-space instructions per echoed message, one connection, ping-pong
#      (valgrind --tool=callgrind, difference of two runs of N1 and N2 messages);
#   3. server memory per idle connection (VmRSS with 10,000 idle connections open).
# Prints a table and writes the "## Counting" section of BENCHMARKS.md (the rest of the file,
# written by `cargo bench --bench echo`, is kept).
#
#   scripts/count.sh [--secs S] [--reps N] [--idle N] [--n1 N] [--n2 N] [--out PATH] [--no-build]
#
# Needs perf (linux-perf) with syscall tracepoints, valgrind, python3, ss, taskset; root, or
# kernel.perf_event_paranoid <= -1 and a readable tracefs. Takes about 4 minutes.
#
# Methods (also written into the report):
#   System calls: the server runs on CPU 0, loadgen on CPU 1 with --warmup 1 and a window
#   longer than perf's. `perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_<common> -p
#   PID` counts all the server's system calls (with a breakdown; the rest is "other") while
#   its workload, a shell, snapshots the server sockets' tcp_info (`ss -ti`, bytes_received)
#   and the CPU times S seconds apart. The counters are on before the first snapshot and off
#   after the second, so calls and bytes cover the same window: messages = bytes / 64.
#   --reps rounds (default 3), evloop and floor interleaved; the median round is reported.
#   Instructions: callgrind counts user-space instructions (Ir) of the whole process. Each
#   server runs under callgrind twice; a deterministic python3 client opens one connection
#   and does N ping-pongs of 64 B (send, receive all 64 B back), then closes; the server is
#   stopped with SIGTERM (evloop exits gracefully; callgrind also writes its profile when the
#   floor dies of the signal). Ir/msg = (Ir(N2) - Ir(N1)) / (N2 - N1): start-up, the one
#   accept and the shutdown cancel out. The same difference per function gives the top
#   functions per message.
#   Memory: VmRSS (and RssAnon) of the server, after a probe connection has warmed the
#   accept path, before and after a python3 helper opened N idle connections (the server has
#   accepted them all: its fd count grew by N); (after - before) / N. Kernel socket memory is
#   not in RSS: this is the user-space cost.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=3 REPS=3 IDLE=10000 N1=2000 N2=22000 OUT=BENCHMARKS.md BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
    --secs) SECS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --n1) N1=$2; shift 2 ;;
    --n2) N2=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "count.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

for tool in perf valgrind callgrind_annotate python3 ss; do
    command -v $tool >/dev/null || { echo "count.sh: $tool not found" >&2; exit 2; }
done
if [ $BUILD = 1 ]; then
    cargo build --release --examples --quiet
fi
WORK=$(mktemp -d /tmp/evloop-count.XXXXXX)
# A private copy of the binaries: another build in this tree cannot swap them mid-run.
BIN=$WORK/bin
mkdir "$BIN"
cp target/release/examples/{echo,floor_mio_echo,loadgen} "$BIN"/
# On any exit, kill the background jobs this shell started and that are still running
# (servers, loadgen, the idle-connection holder): by their pids, nothing else.
cleanup() {
    local p
    for p in $(jobs -p); do
        kill -9 "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PIN0=() PIN1=() PINNED=yes
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && taskset -c 1 true 2>/dev/null; then
    PIN0=(taskset -c 0) PIN1=(taskset -c 1)
else
    PINNED="no (taskset missing or < 2 CPUs)"
    echo "count.sh: running UNPINNED" >&2
fi

# Syscall tracepoints: try to make them usable, report what was needed.
PERF_NOTE="syscall tracepoints usable as is"
if ! perf stat -e syscalls:sys_enter_read true >/dev/null 2>&1; then
    sysctl -qw kernel.perf_event_paranoid=-1 || true
    mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || true
    mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug || true
    if perf stat -e syscalls:sys_enter_read true >/dev/null 2>&1; then
        PERF_NOTE="syscall tracepoints needed perf_event_paranoid=-1 and tracefs/debugfs mounted"
    else
        echo "count.sh: perf cannot use syscall tracepoints (need root or perf_event_paranoid=-1, tracefs)" >&2
        exit 2
    fi
fi

bin_of() {
    case $1 in
    evloop) echo echo ;;
    floor) echo floor_mio_echo ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
    esac
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:PORT accepts a connection (one probe connection, closed at once).
wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 600); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "count.sh: server died" >&2; return 1; }
        sleep 0.05
    done
    echo "count.sh: server on port $port not ready" >&2
    return 1
}

# start_server LABEL PORT [PREFIX...]: starts the server (under PREFIX), sets SERVER_PID.
start_server() {
    local label=$1 port=$2
    shift 2
    RUST_LOG=warn "$@" "$BIN/$(bin_of "$label")" --addr 127.0.0.1:"$port" \
        2>"$WORK/$label.$port.log" &
    SERVER_PID=$!
}

stop_server() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

json_field() { # JSON KEY
    python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2]))' "$1" "$2"
}

RESULTS=$WORK/results
: >"$RESULTS"
put() { echo "$1=$2" >>"$RESULTS"; }

# ---- 1. System calls per echoed message -----------------------------------------------------
# All calls are counted by raw_syscalls:sys_enter; these few are broken out (the rest is
# "other"). A short list keeps perf's start and stop quick.
SYSCALLS=""
for c in read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait \
    epoll_pwait2 epoll_ctl accept4 close futex ioctl clock_gettime getsockopt setsockopt; do
    for d in /sys/kernel/tracing/events/syscalls /sys/kernel/debug/tracing/events/syscalls; do
        if [ -d "$d/sys_enter_$c" ]; then
            SYSCALLS="$SYSCALLS,syscalls:sys_enter_$c"
            break
        fi
    done
done

# One measurement; appends "LABEL DEPTH key=value..." to $WORK/sys.raw.
syscalls() { # LABEL DEPTH
    local label=$1 depth=$2 port lg
    port=$(free_port)
    start_server "$label" "$port" "${PIN0[@]}"
    wait_port "$port" "$SERVER_PID"
    "${PIN1[@]}" "$BIN/loadgen" --addr 127.0.0.1:"$port" --conns 50 --size 64 --depth "$depth" \
        --warmup 1 --secs $((SECS + 3)) --json >"$WORK/lg.json" 2>"$WORK/lg.err" &
    lg=$!
    sleep 1.5 # connects take milliseconds; then 1 s of warmup: start inside the window
    local filter="( sport = :$port )" snap
    snap="ss -tinH state established '$filter'; echo STAT; cat /proc/$SERVER_PID/stat; \
          cat /proc/$lg/stat; grep '^cpu ' /proc/stat"
    perf stat -x, -o "$WORK/perf.txt" -e "raw_syscalls:sys_enter$SYSCALLS" -p "$SERVER_PID" -- \
        sh -c "{ $snap; } >'$WORK/snap0'; sleep $SECS; { $snap; } >'$WORK/snap1'"
    wait "$lg" || { echo "count.sh: loadgen failed:"; tail -3 "$WORK/lg.err"; } >&2
    stop_server "$SERVER_PID"
    python3 - "$WORK" "$label" "$depth" "$SECS" >>"$WORK/sys.raw" <<'EOF'
import json, re, sys
work, label, depth, secs = sys.argv[1:]
def snap(path):
    text = open(path).read()
    ss, stat = text.split("STAT\n", 1)
    rx = sum(int(x) for x in re.findall(r"bytes_received:(\d+)", ss))
    lines = stat.strip().split("\n")
    def ticks(line):
        f = line[line.rfind(")") + 1:].split()
        return int(f[11]) + int(f[12])
    v = [int(x) for x in lines[2].split()[1:]]
    busy = sum(v[i] for i in (0, 1, 2, 5, 6, 7))  # user nice system irq softirq steal
    return rx, ticks(lines[0]), ticks(lines[1]), busy
(rx0, srv0, lg0, busy0), (rx1, srv1, lg1, busy1) = snap(f"{work}/snap0"), snap(f"{work}/snap1")
total, per = None, {}
for line in open(f"{work}/perf.txt"):
    f = line.strip().split(",")
    if len(f) < 3 or not f[0].strip().isdigit():
        continue
    n, ev = int(f[0]), f[2]
    if ev == "raw_syscalls:sys_enter":
        total = n
    elif ev.startswith("syscalls:sys_enter_") and n > 0:
        per[ev[len("syscalls:sys_enter_"):]] = n
other = total - sum(per.values())
if other > 0:
    per["other"] = other
msgs = (rx1 - rx0) / 64
waits = sum(per.get(k, 0) for k in ("epoll_wait", "epoll_pwait", "epoll_pwait2"))
lg = json.loads(open(f"{work}/lg.json").read().strip().splitlines()[-1])
T = float(secs)
print(json.dumps({
    "label": label, "depth": int(depth), "per_msg": total / msgs, "calls": total,
    "msgs": msgs, "rate": msgs / T, "lg_rate": lg["msgs_per_sec"],
    "msgs_per_wait": msgs / waits if waits else None,
    "server_pct": (srv1 - srv0) / T, "loadgen_pct": (lg1 - lg0) / T,
    "other_pct": ((busy1 - busy0) - (srv1 - srv0) - (lg1 - lg0)) / T,
    "by_call": {k: n / msgs for k, n in sorted(per.items(), key=lambda kv: -kv[1])},
}))
EOF
    tail -1 "$WORK/sys.raw" | python3 "$WORK/show.py"
}

cat >"$WORK/show.py" <<'EOF'
import json, sys
r = json.loads(sys.stdin.read())
calls = ", ".join(f"{k} {v:.3f}" for k, v in list(r["by_call"].items())[:4])
print(f"  {r['label']:6} d{r['depth']:<2}: {r['per_msg']:.3f} calls/msg ({calls}); "
      f"{r['rate']:.0f} msg/s, {r['msgs_per_wait'] or 0:.1f} msgs/epoll_wait, "
      f"server CPU {r['server_pct']:.0f}%, loadgen {r['loadgen_pct']:.0f}%, "
      f"other {r['other_pct']:.0f}%")
EOF
echo "== system calls per message (50 conns x 64 B, perf over $SECS s, $REPS rounds) =="
: >"$WORK/sys.raw"
for rep in $(seq 1 "$REPS"); do
    for depth in 1 16; do
        for label in evloop floor; do
            syscalls "$label" "$depth"
        done
    done
done
# Medians over the rounds, into the results.
python3 - "$WORK/sys.raw" >>"$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for label in ("evloop", "floor"):
    for depth in (1, 16):
        rs = sorted((r for r in rows if r["label"] == label and r["depth"] == depth),
                    key=lambda r: r["per_msg"])
        med = rs[len(rs) // 2]  # the median round (the upper one for an even count)
        k = f"sys_{label}_d{depth}"
        print(f"{k}={med['per_msg']:.3f}")
        print(f"{k}_all=" + ", ".join(f"{r['per_msg']:.3f}" for r in rs))
        print(f"{k}_top=" + ", ".join(f"{c} {v:.3f}" for c, v in list(med["by_call"].items())[:6]))
        print(f"{k}_ctx={med['rate']:.0f} msg/s in the window (loadgen's own average "
              f"{med['lg_rate']:.0f}), {med['msgs_per_wait'] or 0:.1f} msgs per epoll_wait, "
              f"server CPU {med['server_pct']:.0f}%, loadgen CPU {med['loadgen_pct']:.0f}%, "
              f"other processes {med['other_pct']:.0f}%")
EOF

# ---- 2. User-space instructions per message (callgrind) -------------------------------------
cat >"$WORK/pingpong.py" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 120
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("pingpong: server not up")
        time.sleep(0.1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = bytes(range(64))
for _ in range(n):
    s.sendall(msg)
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        if not chunk:
            sys.exit("pingpong: server closed")
        got += chunk
    assert got == msg
s.close()
EOF

callgrind() { # LABEL N -> IR: the total Ir
    local label=$1 n=$2 port file
    port=$(free_port)
    file=$WORK/cg.$label.$n
    start_server "$label" "$port" "${PIN0[@]}" valgrind --tool=callgrind --callgrind-out-file="$file"
    "${PIN1[@]}" python3 "$WORK/pingpong.py" "$port" "$n"
    sleep 0.2 # let the server see the close before the signal
    stop_server "$SERVER_PID"
    IR=$(awk '/^totals:/ {print $2}' "$file")
    [ -n "$IR" ] || { echo "count.sh: no callgrind totals in $file" >&2; exit 1; }
}

# Per-function Ir per message: difference of the two profiles.
per_function() { # LABEL
    local label=$1
    for n in "$N1" "$N2"; do
        callgrind_annotate --threshold=100 --auto=no --show-percs=no --inclusive=no \
            "$WORK/cg.$label.$n" >"$WORK/ann.$label.$n"
    done
    python3 - "$WORK/ann.$label.$N1" "$WORK/ann.$label.$N2" "$N1" "$N2" <<'EOF'
import re, sys
def load(path):
    out, started = {}, False
    for line in open(path):
        m = re.match(r"^\s*([\d,]+)\s+(.*)$", line.rstrip())
        if not m:
            continue
        name = m.group(2)
        if "PROGRAM TOTALS" in name:
            continue
        name = re.sub(r"\s+\[[^\]]*\]$", "", name)      # the object file
        name = re.sub(r"^[^:]*:(?!:)", "", name, count=1)  # the source file
        out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
dn = int(sys.argv[4]) - int(sys.argv[3])
rows = sorted(((b.get(k, 0) - a.get(k, 0)) / dn, k) for k in set(a) | set(b))
for ir, name in reversed(rows[-12:]):
    if ir > 0.5:
        print(f"{ir:8.1f}  {name[:110]}")
EOF
}

echo "== user-space instructions per message (callgrind, 1 connection ping-pong, $N1 vs $N2 msgs) =="
for label in evloop floor; do
    callgrind "$label" "$N1"
    i1=$IR
    callgrind "$label" "$N2"
    i2=$IR
    ir=$(python3 -c "print(f'{($i2 - $i1) / ($N2 - $N1):.1f}')")
    put "ir_$label" "$ir"
    put "ir_${label}_raw" "$i1 @ $N1, $i2 @ $N2"
    echo "  $label: $ir Ir/msg ($i1 Ir @ $N1 msgs, $i2 Ir @ $N2 msgs)"
    per_function "$label" >"$WORK/top.$label"
    sed 's/^/    /' "$WORK/top.$label"
done

# ---- 3. Memory per idle connection ------------------------------------------------------------
cat >"$WORK/hold.py" <<'EOF'
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    socks.append(socket.create_connection(("127.0.0.1", port)))
open(ready, "w").write("up\n")
time.sleep(300)
EOF

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
nfds() { ls "/proc/$1/fd" | wc -l; }

idle() { # LABEL
    local label=$1 port rss0 anon0 fd0 holder i
    port=$(free_port)
    start_server "$label" "$port" "${PIN0[@]}"
    wait_port "$port" "$SERVER_PID" # the probe connection warms the accept path
    sleep 0.5
    rss0=$(status_kb "$SERVER_PID" VmRSS)
    anon0=$(status_kb "$SERVER_PID" RssAnon)
    fd0=$(nfds "$SERVER_PID")
    rm -f "$WORK/up"
    "${PIN1[@]}" python3 "$WORK/hold.py" "$port" "$IDLE" "$WORK/up" &
    holder=$!
    for i in $(seq 1 600); do
        [ -e "$WORK/up" ] && [ "$(nfds "$SERVER_PID")" -ge $((fd0 + IDLE)) ] && break
        sleep 0.1
    done
    [ "$(nfds "$SERVER_PID")" -ge $((fd0 + IDLE)) ] || { echo "count.sh: $label did not accept $IDLE connections" >&2; exit 1; }
    sleep 1
    local rss1 anon1
    rss1=$(status_kb "$SERVER_PID" VmRSS)
    anon1=$(status_kb "$SERVER_PID" RssAnon)
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    stop_server "$SERVER_PID"
    put "rss_$label" "$(((rss1 - rss0) * 1024 / IDLE))"
    put "anon_$label" "$(((anon1 - anon0) * 1024 / IDLE))"
    put "rss_${label}_raw" "VmRSS $rss0 -> $rss1 kB, RssAnon $anon0 -> $anon1 kB"
    echo "  $label: $(((rss1 - rss0) * 1024 / IDLE)) B/conn VmRSS, $(((anon1 - anon0) * 1024 / IDLE)) B/conn RssAnon (VmRSS $rss0 -> $rss1 kB)"
}

echo "== server memory per idle connection ($IDLE idle connections) =="
idle evloop
idle floor

# ---- Report -------------------------------------------------------------------------------------
for label in evloop floor; do
    cp "$WORK/top.$label" "$WORK/top.$label.txt"
done
python3 - "$RESULTS" "$OUT" "$WORK" "$SECS" "$N1" "$N2" "$IDLE" "$PINNED" "$PERF_NOTE" "$REPS" <<'EOF'
import os, platform, re, subprocess, sys
res_path, out, work, secs, n1, n2, idle, pinned, perf_note, reps = sys.argv[1:]
r = dict(l.rstrip("\n").split("=", 1) for l in open(res_path) if "=" in l)
g = lambda k: float(r[k])
cpuinfo = open("/proc/cpuinfo").read()
model = re.search(r"model name\s*:\s*(.*)", cpuinfo).group(1).strip()
ncpu = cpuinfo.count("processor\t")
date = subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip()
verdict = lambda ok: "**met**" if ok else "**missed**"
L = []
L.append("## Counting\n")
L.append(f"Written by `scripts/count.sh` on {date}: {ncpu} CPUs, {model}, kernel "
         f"{platform.release()}; pinned: {pinned}; {perf_note}.\n")
L.append("| figure | evloop | floor | evloop / floor |")
L.append("|---|---:|---:|---:|")
for d in (1, 16):
    e, f = g(f"sys_evloop_d{d}"), g(f"sys_floor_d{d}")
    L.append(f"| system calls per echoed message, 50 x 64 B, depth {d} | {e:.3f} | {f:.3f} | {e / f:.2f} |")
e, f = g("ir_evloop"), g("ir_floor")
L.append(f"| user-space instructions (Ir) per message, 1 conn ping-pong | {e:.0f} | {f:.0f} | {e / f:.2f} |")
e, f = g("rss_evloop"), g("rss_floor")
ea, fa = g("anon_evloop"), g("anon_floor")
L.append(f"| VmRSS bytes per idle connection ({idle}) | {e:.0f} | {f:.0f} | {e / f if f else float('nan'):.2f} |")
L.append(f"| RssAnon bytes per idle connection ({idle}) | {ea:.0f} | {fa:.0f} | {ea / fa if fa else float('nan'):.2f} |")
L.append("")
L.append("System calls per message: the median round, by call; all rounds; the conditions of "
         "the median round (msg/s in the perf window, messages served per epoll_wait, the "
         "server's and loadgen's CPU, CPU used by everything else incl. perf):\n")
for d in (1, 16):
    for s in ("evloop", "floor"):
        k = f"sys_{s}_d{d}"
        L.append(f"- {s}, depth {d}: {r[k + '_top']}; rounds: {r[k + '_all']}; {r[k + '_ctx']}")
L.append("")
L.append("### Targets\n")
L.append("| target | figure | verdict |\n|---|---:|---|")
s1 = g("sys_evloop_d1")
L.append(f"| <= 2.05 system calls per echoed message (50 x 64 B, depth 1) | {s1:.3f} (floor "
         f"{g('sys_floor_d1'):.3f}) | {verdict(s1 <= 2.05)} |")
ratio = g("ir_evloop") / g("ir_floor")
L.append(f"| <= 1.5x the floor's user-space instructions per message | {ratio:.2f}x ({g('ir_evloop'):.0f} vs {g('ir_floor'):.0f}) | {verdict(ratio <= 1.5)} |")
m = g("rss_evloop")
L.append(f"| <= 256 B of user-space memory per idle connection | {m:.0f} B (RssAnon {g('anon_evloop'):.0f} B) | {verdict(m <= 256)} |")
L.append("")
L.append("### Where evloop's instructions go\n")
L.append(f"Self Ir per message by function, evloop, from the difference of the two callgrind "
         f"profiles ({n1} and {n2} messages):\n")
L.append("```text")
L.append(open(os.path.join(work, "top.evloop.txt")).read().rstrip())
L.append("```\n")
L.append("The floor, the same way:\n")
L.append("```text")
L.append(open(os.path.join(work, "top.floor.txt")).read().rstrip())
L.append("```\n")
L.append("### Method\n")
L.append(f"""- System calls: server on CPU 0, `loadgen --conns 50 --size 64 --depth D --warmup 1` on CPU 1;
  `perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_<common calls> -p PID` counts the
  server's calls (all of them, with a breakdown) while its workload takes two `ss -ti`
  snapshots of the server's sockets {secs} s apart. The counters are on before the first
  snapshot and off after the second, so messages = the `bytes_received` delta / 64 covers the
  same window as the calls. {reps} rounds, evloop and floor interleaved; the median round.
- Reading it: every message costs one recv and one send (at depth 1 nothing can be batched);
  the rest is epoll_wait, once per wake-up, so calls/msg = 2 + 1 / (messages per wake-up). How
  many messages wait at a wake-up is set by the closed loop: the faster the server is compared
  with loadgen, the fewer have arrived, the more it wakes per message. So compare the servers
  at a similar msg/s and server CPU (the conditions are listed).
- Instructions: callgrind's Ir (user space only) for the whole server process, run twice with
  a deterministic python3 client doing {n1} and {n2} ping-pongs of 64 B on one connection;
  (Ir({n2}) - Ir({n1})) / {int(n2) - int(n1)}: start-up, accept and shutdown cancel out.
- Memory: the server's VmRSS (and RssAnon) from /proc before and after a python3 helper opened
  {idle} idle connections (all accepted: the server's fd count grew by {idle}); (after - before)
  / {idle}. Kernel socket buffers are not in RSS.
- Command: `scripts/count.sh` (options: `--secs`, `--idle`, `--n1`, `--n2`, `--out`).
""")
section = "\n".join(L)
old = open(out).read() if os.path.exists(out) else "# Benchmarks\n"
at = old.find("\n## Counting")
if at < 0:
    new = old.rstrip("\n") + "\n\n" + section
else:
    nxt = old.find("\n## ", at + 3)
    new = old[:at + 1] + section + ("\n" + old[nxt + 1:] if nxt >= 0 else "")
open(out, "w").write(new.rstrip("\n") + "\n")
print(f"wrote the Counting section of {out}")
EOF

echo
echo "| figure | evloop | floor |"
echo "|---|---:|---:|"
get() { grep "^$1=" "$RESULTS" | head -1 | cut -d= -f2-; }
echo "| syscalls/msg d1 | $(get sys_evloop_d1) | $(get sys_floor_d1) |"
echo "| syscalls/msg d16 | $(get sys_evloop_d16) | $(get sys_floor_d16) |"
echo "| Ir/msg | $(get ir_evloop) | $(get ir_floor) |"
echo "| B/idle conn (VmRSS) | $(get rss_evloop) | $(get rss_floor) |"
echo "| B/idle conn (RssAnon) | $(get anon_evloop) | $(get anon_floor) |"
rm -rf "$WORK"
