//! Load generator for evloop and the comparison echo servers (one thread, mio, non-blocking).
//!
//! ```text
//! cargo run --release --example loadgen -- --addr 127.0.0.1:7000 --proto tcp \
//!     --conns 50 --size 64 --depth 1 --secs 5 --warmup 1 [--server-pid PID] [--json]
//! ```
//!
//! Each connection (a TCP stream, or a UDP socket connected to the server) keeps `depth`
//! messages of `size` bytes in flight; the server echoes the bytes back. Message `s` of
//! connection `c` is a pattern derived from (c, s), and every echoed byte is checked, so
//! corruption and misordering count as errors (exit status 1; also when no message completed).
//! A TCP connection still waiting at the end for an answer older than 2 s is an error too.
//! A UDP datagram not answered within 200 ms counts as lost and is replaced by a new one.
//! At most 100 TCP connects are in progress at a time; failed connects are retried for 10 s.
//! The clock starts once every connection is up: `--warmup` seconds, then the measured window
//! of `--secs` seconds. stderr: one progress line per second. stdout: a summary, then ONE JSON
//! line (only the JSON line with `--json`). `msgs` = echoes completed in the window;
//! `mb_per_sec` = msgs * size / secs / 1e6 (one direction); latency is from queueing a message
//! to receiving its last byte. With `--server-pid`, the server's CPU time (utime + stime of
//! /proc/PID/stat, all threads, 10 ms ticks) is read at both ends of the window: give the pid
//! of the server binary itself (target/release/examples/NAME), not that of `cargo run`.

use hdrhistogram::Histogram;
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Registry, Token};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Result, Write};
use std::net::SocketAddr;
use std::process::exit;
use std::str::FromStr;
use std::time::{Duration, Instant};

const HELP: &str = "usage: loadgen [--addr 127.0.0.1:7000] [--proto tcp|udp] [--conns 50] \
[--size 64] [--depth 1] [--secs 5] [--warmup 1] [--server-pid PID] [--json] [--help]";
const FLAGS: &str = "--addr --proto --conns --size --depth --secs --warmup --server-pid";
const MAX_CONNECTING: usize = 100;
const RETRY: Duration = Duration::from_millis(100);
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
const UDP_TIMEOUT: Duration = Duration::from_millis(200);
const USER_HZ: f64 = 100.0; // the unit of /proc/PID/stat times, fixed by the Linux ABI
const STALL: Duration = Duration::from_secs(2); // TCP: an older unanswered message is an error
const R: Interest = Interest::READABLE;
const RW: Interest = Interest::READABLE.add(Interest::WRITABLE);

fn bad(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\n{HELP}");
    exit(2)
}

/// The value of `--name`, or `default`.
fn arg<T: FromStr>(args: &[String], name: &str, default: T) -> T {
    let Some(i) = args.iter().position(|a| a == name) else {
        return default;
    };
    args[i + 1]
        .parse()
        .unwrap_or_else(|_| bad(&format!("bad value for {name}")))
}

/// Runs a non-blocking operation: Ok(None) for WouldBlock, retried on EINTR.
fn nb<T>(mut f: impl FnMut() -> Result<T>) -> Result<Option<T>> {
    loop {
        match f() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Message `seq` of connection `conn`: 64-bit words derived from (conn, seq).
fn fill(conn: usize, seq: u64, out: &mut [u8]) {
    let x = mix(((conn as u64) << 40) ^ seq);
    let word = |k: usize| (x ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
    let full = out.len() / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for (k, chunk) in (&mut chunks).enumerate() {
        chunk.copy_from_slice(&word(k));
    }
    let rest = chunks.into_remainder();
    rest.copy_from_slice(&word(full)[..rest.len()]);
}

/// Whether datagram `d` is message `seq` of connection `conn` (`scratch` has the message size).
fn is_msg(conn: usize, seq: u64, d: &[u8], scratch: &mut [u8]) -> bool {
    let head = d.len().min(8);
    let first = mix(((conn as u64) << 40) ^ seq).to_le_bytes();
    d.len() == scratch.len() && d[..head] == first[..head] && {
        fill(conn, seq, scratch);
        d == scratch
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[derive(Default)]
struct Counts {
    measuring: bool,
    msgs: u64,
    total: u64,
    errors: u64,
    lost: u64,
    late: u64,
}

struct Stats {
    hist: Histogram<u64>,
    n: Counts,
}

impl Stats {
    fn done(&mut self, sent: Instant, now: Instant) {
        self.n.total += 1;
        if self.n.measuring {
            self.n.msgs += 1;
            let ns = (now - sent).as_nanos() as u64;
            self.hist.saturating_record(ns);
        }
    }
    fn error(&mut self, what: std::fmt::Arguments) {
        if self.n.errors < 10 {
            eprintln!("loadgen: error: {what}");
        }
        self.n.errors += 1;
    }
}

#[derive(Default)]
struct Tcp {
    s: Option<TcpStream>, // None: waiting for a connect, or closed after an error
    up: bool,
    want_w: bool,
    tx: Vec<u8>,
    tx_off: usize,
    tx_seq: u64,
    sent: VecDeque<Instant>,
    rx_seq: u64,
    rx_off: usize,
    expect: Vec<u8>,
    bad: bool,
}

impl Tcp {
    fn enqueue(&mut self, id: usize, n: usize, size: usize, now: Instant) {
        if self.tx_off * 2 >= self.tx.len() {
            self.tx.drain(..self.tx_off); // at most half of it is moved: amortized O(1)
            self.tx_off = 0;
        }
        for _ in 0..n {
            let len = self.tx.len();
            self.tx.resize(len + size, 0);
            fill(id, self.tx_seq, &mut self.tx[len..]);
            self.tx_seq += 1;
            self.sent.push_back(now);
        }
    }

    /// Writes what the socket takes; WRITABLE interest only while something is left.
    fn flush(&mut self, id: usize, reg: &Registry) -> Result<()> {
        let s = self.s.as_mut().unwrap();
        while self.tx_off < self.tx.len() {
            match nb(|| s.write(&self.tx[self.tx_off..]))? {
                Some(0) => return Err(ErrorKind::WriteZero.into()),
                Some(n) => self.tx_off += n,
                None => break,
            }
        }
        let want = self.tx_off < self.tx.len();
        if want != self.want_w {
            reg.reregister(s, Token(id), if want { RW } else { R })?;
            self.want_w = want;
        }
        Ok(())
    }

    /// Reads what is there and checks it; returns the number of messages completed.
    fn read(&mut self, id: usize, buf: &mut [u8], st: &mut Stats) -> Result<usize> {
        let size = self.expect.len();
        let mut completed = 0;
        while let Some(n) = nb(|| self.s.as_mut().unwrap().read(buf))? {
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let now = Instant::now();
            let mut data = &buf[..n];
            while !data.is_empty() {
                if self.rx_off == 0 {
                    fill(id, self.rx_seq, &mut self.expect);
                }
                let take = (size - self.rx_off).min(data.len());
                self.bad |= data[..take] != self.expect[self.rx_off..self.rx_off + take];
                self.rx_off += take;
                data = &data[take..];
                if self.rx_off == size {
                    if std::mem::take(&mut self.bad) {
                        st.error(format_args!("conn {id}: message {} corrupted", self.rx_seq));
                    }
                    (self.rx_off, self.rx_seq, completed) = (0, self.rx_seq + 1, completed + 1);
                    match self.sent.pop_front() {
                        Some(t) => st.done(t, now),
                        None => st.error(format_args!("conn {id}: more bytes than sent")),
                    }
                }
            }
            if n < buf.len() {
                break; // short read: drained (Linux)
            }
        }
        Ok(completed)
    }
}

#[derive(Default)]
struct Udp {
    s: Option<UdpSocket>,
    next_seq: u64,
    inflight: VecDeque<u64>, // sequence numbers in flight, oldest first
    sent: VecDeque<Instant>, // when they were sent
    lost: VecDeque<u64>,     // recently timed out: a late answer is not an error
}

impl Udp {
    fn send(&mut self, id: usize, scratch: &mut [u8], st: &mut Stats, now: Instant) {
        fill(id, self.next_seq, scratch);
        // WouldBlock: not sent; it times out and counts as lost.
        if let Err(e) = nb(|| self.s.as_ref().unwrap().send(scratch)) {
            st.error(format_args!("udp {id}: send: {e}"));
        }
        self.inflight.push_back(self.next_seq);
        self.sent.push_back(now);
        self.next_seq += 1;
    }

    /// Receives and checks what is there; sends one new datagram per answer.
    fn on_readable(&mut self, id: usize, buf: &mut [u8], scratch: &mut [u8], st: &mut Stats) {
        let mut answered = 0;
        loop {
            let n = match nb(|| self.s.as_ref().unwrap().recv(buf)) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    st.error(format_args!("udp {id}: recv: {e}"));
                    continue;
                }
            };
            let (now, d) = (Instant::now(), &buf[..n]);
            let mut find = |q: &VecDeque<u64>| q.iter().position(|&s| is_msg(id, s, d, scratch));
            if let Some(p) = find(&self.inflight) {
                self.inflight.remove(p);
                st.done(self.sent.remove(p).unwrap(), now);
                answered += 1;
            } else if let Some(p) = find(&self.lost) {
                self.lost.remove(p);
                st.n.late += st.n.measuring as u64;
            } else {
                st.error(format_args!("udp {id}: unexpected datagram ({n} bytes)"));
            }
        }
        let now = Instant::now();
        for _ in 0..answered {
            self.send(id, scratch, st, now);
        }
    }

    /// Replaces datagrams not answered in time.
    fn expire(&mut self, id: usize, scratch: &mut [u8], st: &mut Stats, now: Instant) {
        while self.sent.front().is_some_and(|&t| now - t >= UDP_TIMEOUT) {
            let seq = self.inflight.pop_front().unwrap();
            self.sent.pop_front();
            st.n.lost += st.n.measuring as u64;
            if self.lost.len() == 1024 {
                self.lost.pop_front();
            }
            self.lost.push_back(seq);
            self.send(id, scratch, st, now);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        exit(0);
    }
    let mut i = 0;
    while i < args.len() {
        let valued = FLAGS.split(' ').any(|f| f == args[i]) && i + 1 < args.len();
        if !valued && args[i] != "--json" {
            bad(&format!("unknown flag or missing value: {}", args[i]));
        }
        i += 1 + valued as usize;
    }
    let addr: SocketAddr = arg(&args, "--addr", "127.0.0.1:7000".parse().unwrap());
    let proto: String = arg(&args, "--proto", "tcp".into());
    let conns = arg(&args, "--conns", 50);
    let (size, depth) = (arg(&args, "--size", 64), arg(&args, "--depth", 1));
    let (secs_arg, warmup): (f64, f64) = (arg(&args, "--secs", 5.0), arg(&args, "--warmup", 1.0));
    let pid = args.iter().any(|a| a == "--server-pid");
    let pid = pid.then(|| arg::<u32>(&args, "--server-pid", 0).to_string());
    let (json, udp) = (args.iter().any(|a| a == "--json"), proto == "udp");
    if !udp && proto != "tcp" || conns == 0 || size == 0 || depth == 0 || (udp && size > 65507) {
        bad("--proto must be tcp or udp; --conns, --size, --depth > 0; udp --size <= 65507");
    }
    if !(secs_arg.is_finite() && warmup.is_finite() && secs_arg > 0.0 && warmup >= 0.0) {
        bad("--secs must be > 0, --warmup >= 0");
    }
    if let Some(p) = &pid {
        cpu_ticks(p).unwrap_or_else(|| bad(&format!("cannot read /proc/{p}/stat")));
    }
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(1024);
    let (mut buf, mut scratch) = (vec![0u8; 65536], vec![0u8; size]);
    let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut st = Stats {
        hist,
        n: Counts::default(),
    };
    let begin = Instant::now();
    let (mut tcp, mut udps) = (Vec::<Tcp>::new(), Vec::<Udp>::new());
    let (mut connecting, mut connected) = (0usize, 0usize);
    let mut to_connect: VecDeque<(Instant, usize)> = VecDeque::new(); // sorted by time
    if udp {
        let any = ["[::]:0", "0.0.0.0:0"][addr.is_ipv4() as usize];
        let any: SocketAddr = any.parse().unwrap();
        for id in 0..conns {
            let s = UdpSocket::bind(any).and_then(|mut s| {
                s.connect(addr)?;
                poll.registry().register(&mut s, Token(id), R)?;
                Ok(s)
            });
            let s = s.unwrap_or_else(|e| bad(&format!("udp socket: {e}")));
            udps.push(Udp {
                s: Some(s),
                ..Udp::default()
            });
            for _ in 0..depth {
                udps[id].send(id, &mut scratch, &mut st, begin);
            }
        }
        connected = conns;
    } else {
        tcp.resize_with(conns, || Tcp {
            want_w: true,
            expect: vec![0; size],
            ..Default::default()
        });
        to_connect.extend((0..conns).map(|id| (begin, id)));
    }
    let (mut warm_end, mut m_start, mut m_end, mut cpu0, mut own0) = (None, None, None, None, 0);
    let (mut next_tick, mut last_total, mut next_scan) = (begin + Duration::from_secs(1), 0, begin);
    let finish = loop {
        let now = Instant::now();
        if warm_end.is_none() && connected == conns {
            warm_end = Some(now + Duration::from_secs_f64(warmup));
        }
        if m_start.is_none() && warm_end.is_some_and(|w| now >= w) {
            (st.n.measuring, m_start) = (true, Some(now));
            m_end = Some(now + Duration::from_secs_f64(secs_arg));
            cpu0 = pid.as_deref().and_then(cpu_ticks);
            own0 = cpu_ticks("self").unwrap_or(0);
        }
        if m_end.is_some_and(|e| now >= e) {
            break now;
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let phase = match (warm_end, m_start) {
                (None, _) => "connect",
                (_, None) => "warmup",
                _ => "measure",
            };
            let (t, rate, n) = ((now - begin).as_secs_f64(), st.n.total - last_total, &st.n);
            let (e, l) = (n.errors, n.lost);
            eprintln!(
                "[{t:3.0}s] {phase:7} conns {connected}/{conns} {rate:>9} msg/s  errors {e}  lost {l}"
            );
            last_total = st.n.total;
        }
        while connecting < MAX_CONNECTING && to_connect.front().is_some_and(|&(t, _)| t <= now) {
            let (_, id) = to_connect.pop_front().unwrap();
            let reg = poll.registry();
            match TcpStream::connect(addr)
                .and_then(|mut s| reg.register(&mut s, Token(id), RW).map(|_| s))
            {
                Ok(s) => (tcp[id].s, connecting) = (Some(s), connecting + 1),
                Err(_) => to_connect.push_back((now + RETRY, id)),
            }
        }
        if warm_end.is_none() && now - begin > CONNECT_DEADLINE {
            eprintln!("loadgen: only {connected} of {conns} connections established in 10 s");
            exit(1);
        }
        if udp && now >= next_scan {
            next_scan = now + Duration::from_millis(20);
            for (id, u) in udps.iter_mut().enumerate() {
                u.expire(id, &mut scratch, &mut st, now);
            }
        }
        let wake = (now + Duration::from_millis(20)).min(next_tick);
        let wake = m_end.or(warm_end).map_or(wake, |t| t.min(wake));
        if let Err(e) = poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            if e.kind() != ErrorKind::Interrupted {
                bad(&format!("poll: {e}"));
            }
        }
        for ev in events.iter() {
            let id = ev.token().0;
            if udp {
                udps[id].on_readable(id, &mut buf, &mut scratch, &mut st);
                continue;
            }
            let c = &mut tcp[id];
            let mut res = Ok(());
            let Some(s) = c.s.as_mut() else { continue };
            if !c.up {
                match (s.take_error(), s.peer_addr()) {
                    (Ok(None), Ok(_)) => {
                        (connecting, connected, c.up) = (connecting - 1, connected + 1, true);
                        let _ = s.set_nodelay(true);
                        c.enqueue(id, depth, size, Instant::now());
                        res = c.flush(id, poll.registry());
                    }
                    (Ok(None), Err(e)) if e.kind() == ErrorKind::NotConnected => {} // in progress
                    _ => {
                        let _ = poll.registry().deregister(s);
                        (c.s, connecting) = (None, connecting - 1);
                        to_connect.push_back((Instant::now() + RETRY, id));
                    }
                }
            } else {
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    match c.read(id, &mut buf, &mut st) {
                        Ok(n) => c.enqueue(id, n, size, Instant::now()),
                        Err(e) => res = Err(e),
                    }
                }
                if res.is_ok() && (ev.is_writable() || c.tx_off < c.tx.len()) {
                    res = c.flush(id, poll.registry());
                }
            }
            if let Err(e) = res {
                st.error(format_args!("conn {id}: {e}"));
                let _ = poll.registry().deregister(c.s.as_mut().unwrap());
                c.s = None;
            }
        }
    };
    for (id, c) in tcp.iter().enumerate().filter(|(_, c)| c.s.is_some()) {
        if let Some(t) = c.sent.front().filter(|&&t| finish - t > STALL) {
            st.error(format_args!(
                "conn {id}: no answer for {:.1} s",
                (finish - *t).as_secs_f64()
            ));
        }
    }
    let secs = (finish - m_start.unwrap()).as_secs_f64();
    let cpu = |p: &str, t0: u64| cpu_ticks(p).map(|t| t.saturating_sub(t0) as f64 / USER_HZ);
    let server_cpu = pid.as_deref().zip(cpu0).and_then(|(p, t0)| cpu(p, t0));
    let own_pct = cpu("self", own0).unwrap_or(0.0) * 100.0 / secs;
    let (h, n) = (&st.hist, &st.n);
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    let (p50, p99, p999, max) = (q(0.5), q(0.99), q(0.999), h.max() as f64 / 1000.0);
    let (msgs, errors, lost, late) = (n.msgs, n.errors, n.lost, n.late);
    let (rate, mb) = (msgs as f64 / secs, (msgs * size as u64) as f64 / secs / 1e6);
    let fmt = |v: Option<f64>, p: usize| v.map_or("null".to_string(), |v| format!("{v:.p$}"));
    let per_msg = fmt(server_cpu.map(|c| c * 1e6 / msgs.max(1) as f64), 3);
    let server_pct = fmt(server_cpu.map(|c| c * 100.0 / secs), 1);
    if !json {
        println!("{proto} {addr}  conns {conns}  size {size}  depth {depth}  window {secs:.2} s");
        println!("msgs {msgs}  {rate:.0} msg/s  {mb:.2} MB/s");
        println!("latency us: p50 {p50:.1}  p99 {p99:.1}  p999 {p999:.1}  max {max:.1}");
        println!(
            "server cpu: {per_msg} us/msg ({server_pct}% of a core)  loadgen cpu {own_pct:.0}%"
        );
        println!("errors {errors}  lost {lost}  late {late}");
    }
    println!(
        "{{\"proto\":\"{proto}\",\"conns\":{conns},\"size\":{size},\"depth\":{depth},\"secs\":{secs:.3},\
\"msgs\":{msgs},\"msgs_per_sec\":{rate:.1},\"mb_per_sec\":{mb:.3},\"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\
\"p999_us\":{p999:.1},\"server_cpu_us_per_msg\":{per_msg},\"server_cpu_pct\":{server_pct},\
\"loadgen_cpu_pct\":{own_pct:.1},\"lost\":{lost},\"errors\":{errors}}}"
    );
    exit(if errors > 0 || msgs == 0 { 1 } else { 0 });
}
