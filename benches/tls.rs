//! TLS echo benchmark: evloop (`listen_tls`, one loop) against tokio-rustls on tokio's
//! current_thread runtime, same certificate, same rustls configuration (ring provider,
//! `evloop::tls::server_config`), over loopback, driven by a load generator written here.
//! Harness-less (feature `tls`).
//!
//! ```text
//! cargo bench --features tls --bench tls           # 3 cells x 2 servers x 5 runs, ~1.5 min
//! cargo bench --features tls --bench tls -- --runs 7 --secs 3 --cell d16 --out /tmp/tls.md
//! cargo bench --features tls --bench tls -- --count   # instructions and system calls, ~2.5 min
//! cargo test --features tls --bench tls            # smoke: each server once, briefly
//! ```
//!
//! Each run starts a fresh server as a child process (this binary again, `--serve evloop` or
//! `--serve tokio`), pinned to CPU 0 with `taskset -c 0`; the load generator runs in this
//! process, pinned to CPU 1. The server's CPU time is utime + stime from /proc/PID/stat (all
//! its threads, 10 ms clock ticks) at both ends of the measured window; a window of 2 s at
//! full load is ~200 ticks. Servers are interleaved run by run (evloop, tokio, evloop,
//! tokio, ...) so a drift of a shared machine hits both alike; figures are medians, with the
//! min-max spread. "other load" is the CPU time of everything else on the machine during the
//! window (/proc/stat busy time minus the server's and the load generator's), in % of one
//! CPU: on a shared machine, CPU time per message moves with it (a starved server finds
//! more work per wake-up), so read the times with it, and the counts of `--count` beside them.
//!
//! `--count` measures what does not depend on the machine's other load: user-space
//! instructions per message (the server under `valgrind --tool=callgrind`, twice, for N1 and
//! N2 messages; the difference, so start-up and handshakes cancel out), the functions they
//! go to, and system calls per message (`perf stat` on the server at full speed).
//! `--keep` keeps the profiles (the path is printed).
//!
//! The load generator: one thread, mio, 50 non-blocking rustls client connections (the same
//! ring provider; TLS 1.3, TLS13_AES_256_GCM_SHA384 as both sides prefer it). Each connection
//! keeps `depth` messages of `size` bytes in flight, every message its own TLS record (one
//! `write` into the session per message; records written to the socket together); every
//! echoed byte is checked against the pattern it was sent with. Cells: 64 B at depth 1, 64 B
//! at depth 16, and 1 MiB transfers (depth 1: a connection sends 1 MiB, reading the echo as it
//! comes, and starts the next 1 MiB once all of it is back). Handshakes happen during the
//! warm-up, not in the window.
//!
//! The servers: evloop's handler sends back what `on_data` gets (`Config::default()`);
//! tokio-rustls' task reads into a 16 KiB buffer (one TLS record's plaintext, as evloop's
//! plaintext buffer), `write_all`s it and flushes. Both TCP_NODELAY.
//!
//! The child exits when its stdin closes (the bench ended or died); the bench also kills it
//! when a run ends, also on error or panic (a guard's `Drop`).

use evloop::tls::rustls;
use evloop::{ConnId, Context, EventLoop, Handler};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc times (fixed by the Linux ABI).
const USER_HZ: f64 = 100.0;
const CONNS: usize = 50;
const MIB: usize = 1 << 20;

// ---- The servers (child processes) ----

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        input: &[u8],
    ) -> usize {
        let _ = cx.send(conn, input);
        input.len()
    }
}

/// Ends this process when its stdin closes: the bench that started it is done or gone.
fn exit_with_stdin() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

fn announce(addr: SocketAddr) {
    println!("listening on {addr}");
    io::stdout().flush().unwrap();
}

fn serve(which: &str, cert: &Path, key: &Path) -> io::Result<()> {
    let config = evloop::tls::server_config(cert, key)?;
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    exit_with_stdin();
    match which {
        "evloop" => {
            let mut el = EventLoop::new(Echo)?;
            let l = el.listen_tls(localhost, config)?;
            announce(el.context().listener_addr(l)?.as_inet().unwrap());
            el.run()
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(localhost).await?;
                announce(listener.local_addr()?);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                loop {
                    let (sock, _) = listener.accept().await?;
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = sock.set_nodelay(true);
                        let Ok(mut s) = acceptor.accept(sock).await else {
                            return;
                        };
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err()
                                        || s.flush().await.is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            })
        }
        other => Err(io::Error::other(format!("unknown server {other}"))),
    }
}

/// A server child; killed on drop.
struct ServerGuard {
    child: Child,
    /// Our end of its stdin: closing it tells the child to exit.
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerGuard {
    /// Lets the server end by itself (its stdin closes and it exits 0, so a callgrind run
    /// writes its profile), within `within`.
    fn finish(mut self, within: Duration) -> Result<(), String> {
        drop(self.stdin.take());
        let end = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("server exited with {status}")),
                Ok(None) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20)); // polling for its exit
                }
                Ok(None) => return Err(format!("server did not exit within {within:?}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Starts server `which` as a child of this process, under `wrap` (e.g. valgrind) if any,
/// pinned to CPU 0 if `pin`; waits for its address.
fn start_server(
    which: &str,
    certs: &Certs,
    pin: bool,
    wrap: &[String],
) -> Result<ServerGuard, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if pin {
        argv.extend(["taskset".into(), "-c".into(), "0".into()]);
    }
    argv.extend(wrap.iter().map(Into::into));
    argv.push(exe.into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .args(["--serve", which, "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if wrap.is_empty() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|e| format!("start {which}: {e}"))?;
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut guard = ServerGuard {
        child,
        stdin: Some(stdin),
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let startup = if wrap.is_empty() { 10 } else { 120 };
    let line = rx
        .recv_timeout(Duration::from_secs(startup))
        .map_err(|_| format!("{which} did not start within {startup} s"))?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{which}: unexpected first line {line:?}"))?;
    guard.addr = addr;
    Ok(guard)
}

// ---- Certificates ----

struct Certs {
    /// Also holds the callgrind and perf outputs of `--count` (kept with `--keep`).
    dir: PathBuf,
    keep: bool,
    cert: PathBuf,
    key: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Certs {
    fn new() -> Certs {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("evloop-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        let client = evloop::tls::client_config(&cert).unwrap();
        Certs {
            dir,
            keep: false,
            cert,
            key,
            client,
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- The load generator ----

/// The bytes every connection sends: a pseudo-random block, each connection starting at
/// its own offset into it, repeated.
struct Pattern(Vec<u8>);

impl Pattern {
    const LEN: usize = 64 * 1024 + 7; // not a divisor of any message size
    fn new() -> Pattern {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        Pattern(
            (0..Self::LEN)
                .map(|_| {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                })
                .collect(),
        )
    }
    /// Calls `f` with the pieces of the stream of connection `conn` from byte `at`, `len` long.
    fn pieces(&self, conn: usize, mut at: u64, mut len: usize, mut f: impl FnMut(&[u8])) {
        while len > 0 {
            let off = ((at + conn as u64 * 4099) % Self::LEN as u64) as usize;
            let n = len.min(Self::LEN - off);
            f(&self.0[off..off + n]);
            at += n as u64;
            len -= n;
        }
    }
}

struct Client {
    sock: TcpStream,
    tls: rustls::ClientConnection,
    /// Plaintext bytes handed to the session, and received back (checked).
    sent: u64,
    received: u64,
    /// Send times of the messages in flight.
    stamps: VecDeque<Instant>,
    writable_armed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Cell {
    size: usize,
    depth: usize,
}

impl Cell {
    fn name(&self) -> &'static str {
        match (self.size, self.depth) {
            (64, 1) => "d1",
            (64, 16) => "d16",
            _ => "1mib",
        }
    }
    fn title(&self) -> String {
        if self.size >= MIB {
            format!(
                "TLS {CONNS} connections x {} MiB transfers",
                self.size / MIB
            )
        } else {
            format!(
                "TLS {CONNS} connections x {} B, depth {}",
                self.size, self.depth
            )
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    msgs: u64,
    secs: f64,
    p99_us: f64,
    server_ticks: u64,
    loadgen_ticks: u64,
    other_ticks: i64,
}

impl Sample {
    fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    /// Server CPU per message, in microseconds.
    fn cpu_us(&self) -> f64 {
        self.server_ticks as f64 / USER_HZ * 1e6 / self.msgs as f64
    }
    fn pct(ticks: f64, secs: f64) -> f64 {
        ticks / USER_HZ / secs * 100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn pid_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy time of all CPUs, in clock ticks (user, nice, system, irq, softirq, steal).
fn machine_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .map(|&i| v.get(i).copied().unwrap_or(0))
            .sum(),
    )
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

impl Client {
    /// Hands one message to the session (one TLS record).
    fn queue_msg(&mut self, pattern: &Pattern, id: usize, size: usize) {
        let mut w = self.tls.writer();
        pattern.pieces(id, self.sent, size, |p| w.write_all(p).unwrap());
        self.sent += size as u64;
        self.stamps.push_back(Instant::now());
    }

    /// Writes records until the socket would block; WRITABLE while some are left.
    fn flush(&mut self, poll: &Poll, token: Token) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let want = self.tls.wants_write();
        if want != self.writable_armed {
            self.writable_armed = want;
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry()
                .reregister(&mut self.sock, token, interest)?;
        }
        Ok(())
    }

    /// Reads until the socket would block; checks the plaintext; returns the send times of
    /// the messages it completed.
    fn read(
        &mut self,
        pattern: &Pattern,
        id: usize,
        size: usize,
        buf: &mut [u8],
        done: &mut Vec<Instant>,
    ) -> io::Result<()> {
        loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the server closed",
                    ));
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.tls
                .process_new_packets()
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            loop {
                let n = match self.tls.reader().read(buf) {
                    Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "close_notify")),
                    Ok(n) => n,
                    Err(e) if would_block(&e) => break,
                    Err(e) => return Err(e),
                };
                let mut at = 0;
                let mut ok = true;
                pattern.pieces(id, self.received, n, |p| {
                    ok &= buf[at..at + p.len()] == *p;
                    at += p.len();
                });
                if !ok || self.received + n as u64 > self.sent {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "the echo differs from what was sent",
                    ));
                }
                let before = self.received / size as u64;
                self.received += n as u64;
                for _ in before..self.received / size as u64 {
                    done.push(self.stamps.pop_front().unwrap());
                }
            }
        }
    }
}

/// How long a run lasts: a warm-up, then a measured window (CPU times at both ends); or a
/// fixed number of messages, all counted (for counting instructions and system calls).
#[derive(Clone, Copy, Debug)]
enum Limit {
    Time { warmup: Duration, secs: Duration },
    Count(u64),
}

/// One run of `cell` against the server at `addr` (pid `pid`): connect, warm up, measure.
fn load(
    addr: SocketAddr,
    pid: u32,
    certs: &Certs,
    cell: Cell,
    limit: Limit,
) -> Result<Sample, String> {
    let pattern = Pattern::new();
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(CONNS);
    // Messages handed to sessions so far; with `Limit::Count`, no more than the count.
    let mut queued = 0u64;
    let cap = match limit {
        Limit::Count(n) => n,
        Limit::Time { .. } => u64::MAX,
    };
    for i in 0..CONNS {
        let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        let mut tls =
            rustls::ClientConnection::new(certs.client.clone(), "localhost".try_into().unwrap())
                .map_err(|e| e.to_string())?;
        tls.set_buffer_limit(None);
        let mut c = Client {
            sock,
            tls,
            sent: 0,
            received: 0,
            stamps: VecDeque::new(),
            writable_armed: true,
        };
        for _ in 0..cell.depth {
            if queued < cap {
                c.queue_msg(&pattern, i, cell.size);
                queued += 1;
            }
        }
        clients.push(c);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = Vec::new();
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let (window_start, window_end, stall) = match limit {
        Limit::Time { warmup, secs } => (start + warmup, start + warmup + secs, 5),
        // Under callgrind everything is ~50x slower, handshakes included.
        Limit::Count(_) => (start, start + Duration::from_secs(3600), 120),
    };
    let mut measuring = false;
    let mut msgs = 0u64;
    let (mut t0_server, mut t0_self, mut t0_machine) = (0, 0, 0);
    let self_pid = std::process::id();
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if !measuring && now >= window_start {
            measuring = true;
            t0_server = pid_ticks(pid).ok_or("server gone")?;
            t0_self = pid_ticks(self_pid).unwrap_or(0);
            t0_machine = machine_ticks().unwrap_or(0);
            msgs = 0;
            hist.reset();
        }
        if now >= window_end || msgs == cap {
            let server_ticks = pid_ticks(pid).ok_or("server gone")? - t0_server;
            let loadgen_ticks = pid_ticks(self_pid).unwrap_or(0) - t0_self;
            let machine = machine_ticks().unwrap_or(0) - t0_machine;
            let elapsed = now.duration_since(window_start).as_secs_f64();
            if msgs == 0 {
                return Err("no message completed in the window".into());
            }
            return Ok(Sample {
                msgs,
                secs: elapsed,
                p99_us: hist.value_at_quantile(0.99) as f64,
                server_ticks,
                loadgen_ticks,
                other_ticks: machine as i64 - server_ticks as i64 - loadgen_ticks as i64,
            });
        }
        if now.duration_since(last_progress) > Duration::from_secs(stall) {
            return Err(format!("no progress for {stall} s"));
        }
        let next = if measuring { window_end } else { window_start };
        poll.poll(
            &mut events,
            Some(
                next.saturating_duration_since(now)
                    .min(Duration::from_millis(100)),
            ),
        )
        .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let id = ev.token().0;
            let c = &mut clients[id];
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                done.clear();
                c.read(&pattern, id, cell.size, &mut buf, &mut done)
                    .map_err(|e| format!("connection {id}: {e}"))?;
                if !done.is_empty() {
                    last_progress = Instant::now();
                }
                for &t in &done {
                    if measuring {
                        msgs += 1;
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    }
                    if queued < cap {
                        c.queue_msg(&pattern, id, cell.size);
                        queued += 1;
                    }
                }
            }
            c.flush(&poll, ev.token())
                .map_err(|e| format!("connection {id}: {e}"))?;
        }
    }
}

// ---- Counting: instructions (callgrind) and system calls (perf) ----

/// Message counts of the two callgrind runs of a cell; their difference is what is counted
/// (start-up, 50 handshakes and exit cancel out). Transfers count MiB.
fn count_n(cell: Cell) -> (u64, u64) {
    match cell.name() {
        "d1" => (4_000, 20_000),
        "d16" => (20_000, 100_000),
        _ => (50, 150),
    }
}

/// Total Ir of a callgrind profile.
fn callgrind_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("totals:"))
        .or_else(|| text.lines().find(|l| l.starts_with("summary:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Self Ir by function ("file:function" without the file), from `callgrind_annotate`.
fn callgrind_functions(path: &Path) -> BTreeMap<String, u64> {
    let out = Command::new("callgrind_annotate")
        .args(["--threshold=100", "--inclusive=no", "--auto=no"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let line = line.trim_start();
        let Some((num, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(ir) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('(') {
            Some(r) => r.split_once(')').map_or(r, |(_, after)| after).trim_start(),
            None => rest,
        };
        if rest.starts_with("PROGRAM TOTALS") || rest.is_empty() {
            continue;
        }
        // "file:function [object]": the file ends at the first single ':'.
        let bytes = rest.as_bytes();
        let colon = (0..bytes.len()).find(|&i| {
            bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
        });
        let func = colon.map_or(rest, |i| &rest[i + 1..]);
        let func = func.rsplit_once(" [").map_or(func, |(f, _)| f);
        *map.entry(func.to_string()).or_insert(0) += ir;
    }
    map
}

/// One callgrind run of server `which`: `n` messages of `cell`; returns the profile's path.
fn callgrind_run(
    which: &str,
    cell: Cell,
    n: u64,
    certs: &Certs,
    pin: bool,
) -> Result<PathBuf, String> {
    let out = certs
        .dir
        .join(format!("{which}-{}-{n}.callgrind", cell.name()));
    let wrap = [
        "valgrind".to_string(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let server = start_server(which, certs, pin, &wrap)?;
    load(server.addr, server.child.id(), certs, cell, Limit::Count(n))?;
    server.finish(Duration::from_secs(120))?;
    Ok(out)
}

const SYSCALLS: [&str; 10] = [
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "read",
    "write",
    "readv",
    "writev",
    "epoll_wait",
    "epoll_ctl",
];

/// System calls of server `which` (native, pinned) while it serves `n` messages of `cell`:
/// all of them, and those in `SYSCALLS` by name; per message.
fn syscalls_run(
    which: &str,
    cell: Cell,
    n: u64,
    certs: &Certs,
    pin: bool,
) -> Result<Vec<(String, f64)>, String> {
    let server = start_server(which, certs, pin, &[])?;
    let pid = server.child.id().to_string();
    let out = certs.dir.join(format!("{which}-{}.perf", cell.name()));
    let mut events = "raw_syscalls:sys_enter".to_string();
    for name in SYSCALLS {
        events.push_str(&format!(",syscalls:sys_enter_{name}"));
    }
    let mut perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", &events, "-p", &pid, "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf: {e}"))?;
    // perf attaches in a moment; calls made before that (a few handshakes) go uncounted.
    std::thread::sleep(Duration::from_millis(300));
    let result = load(server.addr, server.child.id(), certs, cell, Limit::Count(n));
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    let sample = result?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("perf output: {e}"))?;
    let mut counts = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(count) = f[0].parse::<f64>() else {
            continue;
        };
        let name = f[2]
            .trim_start_matches("syscalls:sys_enter_")
            .replace("raw_syscalls:sys_enter", "all");
        counts.push((name, count / sample.msgs as f64));
    }
    if counts.is_empty() {
        return Err(format!("perf counted nothing: {text}"));
    }
    Ok(counts)
}

struct Counted {
    ir: f64,
    top: Vec<(String, f64)>,
    syscalls: Vec<(String, f64)>,
}

fn count_server(which: &str, cell: Cell, certs: &Certs, pin: bool) -> Result<Counted, String> {
    let (n1, n2) = count_n(cell);
    let p1 = callgrind_run(which, cell, n1, certs, pin)?;
    let p2 = callgrind_run(which, cell, n2, certs, pin)?;
    let (t1, t2) = (
        callgrind_total(&p1).ok_or("no callgrind total")?,
        callgrind_total(&p2).ok_or("no callgrind total")?,
    );
    let per = (n2 - n1) as f64;
    let (f1, f2) = (callgrind_functions(&p1), callgrind_functions(&p2));
    let mut top: Vec<(String, f64)> = f2
        .iter()
        .map(|(name, &ir)| {
            let before = f1.get(name).copied().unwrap_or(0);
            (name.clone(), (ir as f64 - before as f64) / per)
        })
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(25);
    let syscalls = syscalls_run(which, cell, n2, certs, pin).unwrap_or_else(|e| {
        eprintln!("{which} {}: system calls not counted: {e}", cell.name());
        Vec::new()
    });
    Ok(Counted {
        ir: (t2 as f64 - t1 as f64) / per,
        top,
        syscalls,
    })
}

/// `--count`: per cell, both servers' user-space instructions per message (callgrind,
/// difference of two runs) with the functions they go to, and system calls per message.
fn count_report(o: &Opts, certs: &Certs, pin: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## TLS echo, counted: instructions and system calls\n\n`cargo bench --features tls --bench tls -- --count`. Instructions: each server runs under `valgrind --tool=callgrind` twice, for N1 and N2 messages of the cell (the load generator's fixed count, 50 connections), and stops by itself; Ir per message = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up, the 50 handshakes and exit cancel out. User space only; under callgrind the server is ~50x slower, so each wake-up finds more work than at full speed (both servers alike). System calls: the server at full speed (pinned), `perf stat -e raw_syscalls:sys_enter,...` attached for N2 messages (per message; the handshakes' few calls included). Transfers: per MiB each way.\n"
    );
    for &cell in &o.cells {
        let (n1, n2) = count_n(cell);
        let unit = if cell.size >= MIB { "MiB" } else { "message" };
        let results: Vec<Result<Counted, String>> = SERVERS
            .iter()
            .map(|(which, _)| {
                let r = count_server(which, cell, certs, pin);
                match &r {
                    Ok(c) => eprintln!("{} {which}: {:.0} Ir/{unit}", cell.name(), c.ir),
                    Err(e) => eprintln!("{} {which}: FAILED: {e}", cell.name()),
                }
                r
            })
            .collect();
        let _ = writeln!(md, "\n### {} (N1 {n1}, N2 {n2})\n", cell.title());
        md.push_str(
            "| figure | evloop | tokio-rustls | evloop / tokio-rustls |\n|---|---:|---:|---:|\n",
        );
        let (e, t) = (&results[0], &results[1]);
        let row = |md: &mut String, what: &str, a: Option<f64>, b: Option<f64>, prec: usize| {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.prec$}"));
            let r = match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(md, "| {what} | {} | {} | {r} |", f(a), f(b));
        };
        row(
            &mut md,
            &format!("user-space instructions (Ir) per {unit}"),
            e.as_ref().ok().map(|c| c.ir),
            t.as_ref().ok().map(|c| c.ir),
            0,
        );
        let sys = |r: &Result<Counted, String>, name: &str| {
            r.as_ref()
                .ok()
                .and_then(|c| c.syscalls.iter().find(|(n, _)| n == name))
                .map(|(_, v)| *v)
        };
        row(
            &mut md,
            &format!("system calls per {unit}"),
            sys(e, "all"),
            sys(t, "all"),
            3,
        );
        for name in SYSCALLS {
            let (a, b) = (sys(e, name), sys(t, name));
            if a.unwrap_or(0.0) > 0.0005 || b.unwrap_or(0.0) > 0.0005 {
                row(&mut md, &format!("- {name}"), a, b, 3);
            }
        }
        for (k, r) in results.iter().enumerate() {
            match r {
                Ok(c) => {
                    let _ = writeln!(
                        md,
                        "\nSelf Ir per {unit} by function, {} (top 25):\n\n```text",
                        SERVERS[k].1
                    );
                    for (name, ir) in &c.top {
                        let name: String = name.chars().take(110).collect();
                        let _ = writeln!(md, "{ir:>10.1}  {name}");
                    }
                    md.push_str("```\n");
                }
                Err(err) => {
                    let _ = writeln!(md, "\n{}: failed: {err}", SERVERS[k].1);
                }
            }
        }
    }
    md
}

// ---- Runs, medians, the table ----

struct Opts {
    runs: usize,
    secs: f64,
    warmup: f64,
    cells: Vec<Cell>,
    out: Option<PathBuf>,
    pin: bool,
    smoke: bool,
    count: bool,
    keep: bool,
}

const ALL_CELLS: [Cell; 3] = [
    Cell { size: 64, depth: 1 },
    Cell {
        size: 64,
        depth: 16,
    },
    Cell {
        size: MIB,
        depth: 1,
    },
];

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    // `cargo bench` passes --bench; without it and without flags (`cargo test --benches`):
    // a smoke run.
    let mut o = Opts {
        runs: 5,
        secs: 2.0,
        warmup: 0.5,
        cells: Vec::new(),
        out: None,
        pin: true,
        smoke: args.is_empty(),
        count: false,
        keep: false,
    };
    let mut it = args.iter().filter(|a| *a != "--bench");
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} wants a value"));
        match a.as_str() {
            "--runs" => o.runs = val()?.parse().map_err(|_| "bad --runs")?,
            "--secs" => o.secs = val()?.parse().map_err(|_| "bad --secs")?,
            "--warmup" => o.warmup = val()?.parse().map_err(|_| "bad --warmup")?,
            "--out" => o.out = Some(val()?.into()),
            "--no-pin" => o.pin = false,
            "--count" => o.count = true,
            "--keep" => o.keep = true,
            "--cell" => {
                let v = val()?;
                let cell = ALL_CELLS
                    .iter()
                    .find(|c| c.name() == v)
                    .ok_or(format!("--cell: d1, d16 or 1mib, not {v}"))?;
                o.cells.push(*cell);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.cells.is_empty() {
        o.cells = ALL_CELLS.to_vec();
    }
    if o.smoke {
        (o.runs, o.secs, o.warmup) = (1, 0.3, 0.3);
    }
    if o.runs == 0 || o.secs <= 0.0 {
        return Err("--runs and --secs must be positive".into());
    }
    Ok(o)
}

fn taskset_works() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
        && Command::new("taskset")
            .args(["-c", "0", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Pins this process (all its threads; those started later inherit it) to CPU 1.
fn pin_self() -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64], prec: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.prec$}-{hi:.prec$}")
}

const SERVERS: [(&str, &str); 2] = [
    ("evloop", "evloop"),
    ("tokio", "tokio-rustls (current_thread)"),
];

struct Summary {
    cpu: f64,
    rate: f64,
    line: String,
}

fn summarize(
    cell: Cell,
    label: &str,
    samples: &[Sample],
    failed: &[String],
    planned: usize,
) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let transfer = cell.size >= MIB;
    let rates: Vec<f64> = samples
        .iter()
        .map(|s| {
            if transfer {
                s.msgs_per_sec() * cell.size as f64 / MIB as f64
            } else {
                s.msgs_per_sec()
            }
        })
        .collect();
    // Per message in us; per MiB (each way) in ms.
    let cpus: Vec<f64> = samples
        .iter()
        .map(|s| {
            if transfer {
                s.cpu_us() / 1000.0 * MIB as f64 / cell.size as f64
            } else {
                s.cpu_us()
            }
        })
        .collect();
    let pct = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let (rate, cpu) = (median(rates.clone()), median(cpus.clone()));
    let p99 = median(samples.iter().map(|s| s.p99_us).collect());
    let server_pct = pct(|s| Sample::pct(s.server_ticks as f64, s.secs));
    let loadgen_pct = pct(|s| Sample::pct(s.loadgen_ticks as f64, s.secs));
    let other_pct = pct(|s| Sample::pct(s.other_ticks.max(0) as f64, s.secs));
    let ok = format!("{}/{planned}", samples.len());
    let ok = if failed.is_empty() {
        ok
    } else {
        format!("{ok} ({})", failed.join("; "))
    };
    let (rp, cp) = if transfer { (1, 2) } else { (0, 2) };
    let line = format!(
        "| {label} | {rate:.rp$} | {} | {p99:.0} | {cpu:.cp$} ({}) | RATIO | {server_pct:.0} | {loadgen_pct:.0} | {other_pct:.0} | {ok} |",
        spread(&rates, rp),
        spread(&cpus, cp),
    );
    Some(Summary { cpu, rate, line })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let arg = |name: &str| {
            let j = args.iter().position(|a| a == name).expect(name);
            PathBuf::from(&args[j + 1])
        };
        if let Err(e) = serve(&args[i + 1], &arg("--cert"), &arg("--key")) {
            eprintln!("server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let o = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "tls bench: {e}\nflags: --runs N (5) --secs S (2) --warmup S (0.5) --cell d1|d16|1mib (repeatable) --out PATH --no-pin --count --keep"
            );
            std::process::exit(2);
        }
    };
    let pin = o.pin && taskset_works() && pin_self();
    let mut certs = Certs::new();
    certs.keep = o.keep;
    if o.count {
        let report = count_report(&o, &certs, pin);
        println!("{report}");
        if let Some(path) = &o.out {
            std::fs::write(path, &report)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        return;
    }
    let began = Instant::now();
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut md = String::new();
    let mut verdicts = Vec::new();
    for &cell in &o.cells {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); SERVERS.len()];
        let mut failed: Vec<Vec<String>> = vec![Vec::new(); SERVERS.len()];
        for run in 0..o.runs {
            for (k, (which, _)) in SERVERS.iter().enumerate() {
                let result = start_server(which, &certs, pin, &[]).and_then(|server| {
                    let pid = server.child.id();
                    let limit = Limit::Time {
                        warmup: Duration::from_secs_f64(o.warmup),
                        secs: Duration::from_secs_f64(o.secs),
                    };
                    let r = load(server.addr, pid, &certs, cell, limit);
                    drop(server);
                    r
                });
                match result {
                    Ok(s) => {
                        eprintln!(
                            "{} run {}: {which}: {:.0} msgs/s, {:.2} us/msg server CPU",
                            cell.name(),
                            run + 1,
                            s.msgs_per_sec(),
                            s.cpu_us()
                        );
                        samples[k].push(s);
                    }
                    Err(e) => {
                        eprintln!("{} run {}: {which}: FAILED: {e}", cell.name(), run + 1);
                        failed[k].push(e);
                    }
                }
            }
        }
        let transfer = cell.size >= MIB;
        let _ = writeln!(md, "\n### {}\n", cell.title());
        if transfer {
            md.push_str("| server | MiB/s each way (median) | spread | p99 us per transfer | server CPU ms/MiB (spread) | CPU/MiB vs tokio-rustls | server CPU % | loadgen CPU % | other load % | runs ok |\n");
        } else {
            md.push_str("| server | msgs/s (median) | spread | p99 us | server CPU us/msg (spread) | CPU/msg vs tokio-rustls | server CPU % | loadgen CPU % | other load % | runs ok |\n");
        }
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let sums: Vec<Option<Summary>> = SERVERS
            .iter()
            .enumerate()
            .map(|(k, (_, label))| summarize(cell, label, &samples[k], &failed[k], o.runs))
            .collect();
        let tokio_cpu = sums[1].as_ref().map(|s| s.cpu);
        for (k, s) in sums.iter().enumerate() {
            match s {
                Some(s) => {
                    let ratio = tokio_cpu.map_or("-".into(), |t| format!("{:.2}", s.cpu / t));
                    let _ = writeln!(md, "{}", s.line.replace("RATIO", &ratio));
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | - | - | - | - | - | - | - | - | 0/{} ({}) |",
                        SERVERS[k].1,
                        o.runs,
                        failed[k].join("; ")
                    );
                }
            }
        }
        let what = if transfer { "CPU/MiB" } else { "CPU/msg" };
        let verdict = match (&sums[0], &sums[1]) {
            (Some(e), Some(t)) => {
                let r = e.cpu / t.cpu;
                let unit = if transfer { "ms/MiB" } else { "us/msg" };
                let rate = e.rate / t.rate;
                format!(
                    "| {} | server {what} <= 1.0x tokio-rustls | {r:.2}x ({:.2} vs {:.2} {unit}); throughput {rate:.2}x | **{}** |",
                    cell.name(),
                    e.cpu,
                    t.cpu,
                    if r <= 1.0 { "met" } else { "missed" }
                )
            }
            _ => format!(
                "| {} | server {what} <= 1.0x tokio-rustls | a server failed every run | **no figure** |",
                cell.name()
            ),
        };
        verdicts.push(verdict);
    }
    let mut head = String::new();
    let _ = writeln!(
        head,
        "## TLS echo: evloop against tokio-rustls\n\n`cargo bench --features tls --bench tls{}` ({} runs per server and cell, {:.1} s windows after {:.1} s warm-up; {:.0} s in all). Server pinned to CPU 0, load generator to CPU 1: {}. Load average at start: {}.\n",
        if o.runs == 5 && o.secs == 2.0 {
            String::new()
        } else {
            format!(" -- --runs {} --secs {}", o.runs, o.secs)
        },
        o.runs,
        o.secs,
        o.warmup,
        began.elapsed().as_secs_f64(),
        if pin {
            "yes"
        } else {
            "no (taskset missing or one CPU)"
        },
        load_avg.trim(),
    );
    head.push_str("| cell | target | figure | verdict |\n|---|---|---|---|\n");
    for v in &verdicts {
        head.push_str(v);
        head.push('\n');
    }
    let report = format!("{head}{md}");
    if o.smoke {
        println!(
            "(smoke run: one short run each; `cargo bench --features tls --bench tls` measures)"
        );
    }
    println!("{report}");
    if let Some(path) = &o.out {
        std::fs::write(path, &report).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
