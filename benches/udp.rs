//! UDP echo benchmark: server CPU per datagram of evloop with batched UDP (recvmmsg,
//! sendmmsg, GRO/GSO), evloop without offloads, evloop one datagram per system call
//! (`udp_batch = 1`), a raw mio echo (the floor of the one-at-a-time design) and tokio's
//! `UdpSocket` on a current_thread runtime. Loopback only, bounded in time, harness-less.
//!
//! ```text
//! cargo bench --bench udp                         # 6 cells x 5 servers x 3 runs, ~4 min
//! cargo bench --bench udp -- --runs 5 --secs 3    # longer
//! cargo bench --bench udp -- --cell 16:64         # one cell (PEERS:SIZE), repeatable
//! ```
//!
//! Each server is this binary re-run as `--serve KIND`, pinned to CPU 0 (`taskset -c 0`); it
//! binds 127.0.0.1:0 and prints its port. The load generator runs in this process, pinned to
//! CPU 1, and itself batches so that the server is the bottleneck: each peer socket sends
//! its share of a window of datagrams with UDP GSO (one `sendmsg` per burst) and reads the
//! echoes with `recvmmsg` and GRO; it keeps `WINDOW` datagrams in flight (a window restarts
//! if nothing came back for 50 ms: those are counted lost). Server CPU is utime + stime of
//! the server process over the measured window (/proc/PID/stat). Servers are interleaved run
//! by run (A B C D E A B C D E ...) so drift hits all alike; the table gives medians.
//!
//! Cells: peers {1, 16, 64} x size {64 B, 1200 B}. One peer: the bursts reach the server as
//! GRO runs and its replies leave as GSO runs (the best case for offloads). 16 peers: bursts
//! of 4 per peer (short runs). 64 peers: one datagram each in flight, so nothing can be
//! coalesced: only recvmmsg/sendmmsg batching is left (the worst case for offloads).
//! Run without `--bench` (`cargo test --benches`) it is a smoke test: each server once,
//! briefly.

use evloop::{Addr, Config, Context, EventLoop, Handler, UdpId};
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmsg, setsockopt, sockopt,
};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams in flight, over all peers.
const WINDOW: usize = 64;

const SERVERS: [&str; 5] = [
    "evloop",
    "evloop-nooffload",
    "evloop-plain",
    "floor-mio",
    "tokio-ct",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return serve(&args[i + 1]);
    }
    let bench = args.iter().any(|a| a == "--bench");
    let num = |flag: &str, default: f64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let mut cells: Vec<(usize, usize)> = (args.iter().enumerate())
        .filter(|(_, a)| *a == "--cell")
        .filter_map(|(i, _)| {
            let (p, s) = args.get(i + 1)?.split_once(':')?;
            Some((p.parse().ok()?, s.parse().ok()?))
        })
        .collect();
    if cells.is_empty() {
        cells = vec![
            (1, 64),
            (1, 1200),
            (16, 64),
            (16, 1200),
            (64, 64),
            (64, 1200),
        ];
    }
    let (runs, secs, warmup) = if bench {
        (num("--runs", 3.0) as usize, num("--secs", 2.0), 0.3)
    } else {
        (1, 0.2, 0.05)
    };
    let only: Option<Vec<String>> = (args.iter().position(|a| a == "--servers"))
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect());
    let servers: Vec<&str> = (SERVERS.iter().copied())
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s)))
        .collect();
    let pinned = taskset_works();
    if pinned {
        // This thread (the load generator) on CPU 1; the servers go to CPU 0.
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(std::process::id());
        let _ = Command::new("taskset")
            .args(["-p", "-c", "1", &tid.to_string()])
            .stdout(Stdio::null())
            .status();
    }
    eprintln!(
        "udp bench: {} cells x {} servers x {runs} runs x {secs} s{}",
        cells.len(),
        SERVERS.len(),
        if pinned { "" } else { " (UNPINNED)" }
    );
    // samples[cell][server] = (datagrams/s, µs CPU per datagram, lost)
    let mut samples = vec![vec![Vec::new(); SERVERS.len()]; cells.len()];
    for run in 0..runs {
        for (c, &(peers, size)) in cells.iter().enumerate() {
            for (s, kind) in SERVERS.iter().enumerate() {
                if !servers.contains(kind) {
                    continue;
                }
                match measure(kind, peers, size, secs, warmup, pinned) {
                    Ok(m) => {
                        eprintln!(
                            "run {run} {peers:>2} peers {size:>4} B {kind:<17} {:>9.0} dgram/s {:>6.3} µs/dgram lost {}",
                            m.0, m.1, m.2
                        );
                        samples[c][s].push(m);
                    }
                    Err(e) => eprintln!("run {run} {peers} peers {size} B {kind}: {e}"),
                }
            }
        }
    }
    println!("{}", table(&cells, &samples, runs, secs, pinned));
}

/// One run of one server in one cell: (datagrams/s, server µs CPU per datagram, lost).
type Sample = (f64, f64, u64);

fn measure(
    kind: &str,
    peers: usize,
    size: usize,
    secs: f64,
    warmup: f64,
    pinned: bool,
) -> Result<Sample, String> {
    let (server, addr) = Server::start(kind, pinned)?;
    let mut load = Load::new(addr, peers, size)?;
    load.run(Duration::from_secs_f64(warmup));
    let (t0, c0) = (Instant::now(), server.cpu_ticks()?);
    let (echoed, lost) = load.run(Duration::from_secs_f64(secs));
    let (elapsed, c1) = (t0.elapsed().as_secs_f64(), server.cpu_ticks()?);
    if echoed == 0 {
        return Err("no echo came back".into());
    }
    let cpu_s = (c1 - c0) as f64 / 100.0; // USER_HZ
    Ok((echoed as f64 / elapsed, cpu_s * 1e6 / echoed as f64, lost))
}

/// A server process; killed when dropped.
struct Server(Child);

impl Server {
    fn start(kind: &str, pinned: bool) -> Result<(Server, SocketAddr), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let mut child = cmd
            .args(["--serve", kind])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {kind}: {e}"))?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .map_err(|e| e.to_string())?;
        let server = Server(child);
        let addr = line
            .trim()
            .parse()
            .map_err(|_| format!("{kind} said {line:?}"))?;
        Ok((server, addr))
    }

    /// utime + stime of the server process, in clock ticks.
    fn cpu_ticks(&self) -> Result<u64, String> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))
            .map_err(|e| e.to_string())?;
        let f: Vec<&str> = s[s.rfind(')').ok_or("stat")? + 1..]
            .split_whitespace()
            .collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("stat");
        Ok(n(11)? + n(12)?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The load generator: `peers` sockets, GSO bursts out, recvmmsg + GRO in.
struct Load {
    socks: Vec<UdpSocket>,
    server: SockaddrStorage,
    size: usize,
    payload: Vec<u8>,
    in_flight: Vec<usize>,
    recv_buf: Vec<u8>,
}

impl Load {
    fn new(server: SocketAddr, peers: usize, size: usize) -> Result<Load, String> {
        let mut socks = Vec::new();
        for _ in 0..peers {
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            let _ = setsockopt(&s.as_fd(), sockopt::UdpGroSegment, &true);
            socks.push(s);
        }
        Ok(Load {
            socks,
            server: SockaddrStorage::from(server),
            size,
            payload: vec![0x5a; size * 64],
            in_flight: vec![0; peers],
            recv_buf: vec![0; 16 * 65536],
        })
    }

    /// Runs for `d`; returns (datagrams echoed, datagrams given up as lost).
    fn run(&mut self, d: Duration) -> (u64, u64) {
        let per_peer = (WINDOW / self.socks.len()).max(1);
        let (start, mut echoed, mut lost) = (Instant::now(), 0u64, 0u64);
        let mut last_progress = Instant::now();
        while start.elapsed() < d {
            for p in 0..self.socks.len() {
                let want = per_peer - self.in_flight[p];
                if want > 0 {
                    self.in_flight[p] += self.burst(p, want);
                }
                let got = self.drain(p);
                if got > 0 {
                    self.in_flight[p] = self.in_flight[p].saturating_sub(got as usize);
                    echoed += got;
                    last_progress = Instant::now();
                }
            }
            if last_progress.elapsed() > Duration::from_millis(50) {
                lost += self.in_flight.iter().sum::<usize>() as u64;
                self.in_flight.iter_mut().for_each(|f| *f = 0);
                last_progress = Instant::now();
            }
        }
        // Let the rest come back (or give it up) before the next phase.
        let settle = Instant::now();
        while self.in_flight.iter().any(|&f| f > 0) && settle.elapsed() < Duration::from_millis(50)
        {
            for p in 0..self.socks.len() {
                let got = self.drain(p) as usize;
                self.in_flight[p] = self.in_flight[p].saturating_sub(got);
            }
        }
        self.in_flight.iter_mut().for_each(|f| *f = 0);
        (echoed, lost)
    }

    /// `n` datagrams from peer `p`, as GSO `sendmsg`s of at most 60,000 bytes (a plain
    /// datagram when one is left); returns how many the kernel took.
    fn burst(&self, p: usize, n: usize) -> usize {
        let seg = self.size as u16;
        let per_send = (60_000 / self.size.max(1)).clamp(1, 64);
        let fd = self.socks[p].as_raw_fd();
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(per_send);
            let iov = [IoSlice::new(&self.payload[..self.size * k])];
            let gso = [ControlMessage::UdpGsoSegments(&seg)];
            let cmsgs: &[ControlMessage<'_>] = if k > 1 { &gso } else { &[] };
            if sendmsg(fd, &iov, cmsgs, MsgFlags::empty(), Some(&self.server)).is_err() {
                break;
            }
            sent += k;
        }
        sent
    }

    /// Reads what came back to peer `p` (recvmmsg, GRO runs); returns datagrams.
    fn drain(&mut self, p: usize) -> u64 {
        let slot = 65536;
        let mut total = 0u64;
        loop {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(16, None);
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .recv_buf
                .chunks_mut(slot)
                .map(|c| [IoSliceMut::new(c)])
                .collect();
            let fd = self.socks[p].as_raw_fd();
            let Ok(res) = recvmmsg(fd, &mut headers, iovs.iter_mut(), MsgFlags::empty(), None)
            else {
                return total;
            };
            let mut msgs = 0;
            for m in res {
                msgs += 1;
                total += (m.bytes / self.size.max(1)) as u64;
            }
            if msgs < 16 {
                return total;
            }
        }
    }
}

// ---- The servers (`--serve KIND`): bind 127.0.0.1:0, print the port, echo forever. ----

fn serve(kind: &str) {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    match kind {
        "evloop" | "evloop-nooffload" | "evloop-plain" => {
            struct Echo;
            impl Handler for Echo {
                type Conn = ();
                fn on_datagram(
                    &mut self,
                    cx: &mut Context<'_, Self>,
                    u: UdpId,
                    d: &[u8],
                    from: &Addr,
                ) {
                    let _ = cx.send_to(u, d, from);
                }
            }
            let mut config = Config::default();
            match kind {
                "evloop-plain" => config.udp_batch = 1,
                "evloop-nooffload" => config.udp_offload = false,
                _ => {}
            }
            let mut el = EventLoop::with_config(Echo, config).unwrap();
            let u = el.bind_udp(local).unwrap();
            println!("{}", el.context().udp_addr(u).unwrap());
            el.run().unwrap();
        }
        "floor-mio" => {
            let mut poll = mio::Poll::new().unwrap();
            let mut events = mio::Events::with_capacity(64);
            let mut sock = mio::net::UdpSocket::bind(local).unwrap();
            let token = mio::Token(0);
            poll.registry()
                .register(&mut sock, token, mio::Interest::READABLE)
                .unwrap();
            println!("{}", sock.local_addr().unwrap());
            let mut buf = vec![0; 65536];
            loop {
                poll.poll(&mut events, None).unwrap();
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        }
        "tokio-ct" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async {
                let sock = tokio::net::UdpSocket::bind(local).await.unwrap();
                println!("{}", sock.local_addr().unwrap());
                let mut buf = vec![0; 65536];
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            });
        }
        other => panic!("unknown server {other}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn table(
    cells: &[(usize, usize)],
    samples: &[Vec<Vec<Sample>>],
    runs: usize,
    secs: f64,
    pinned: bool,
) -> String {
    let mut md = format!(
        "### UDP echo: server CPU per datagram\n\n\
         Medians of {runs} runs of {secs} s each, servers interleaved; server {}, load \
         generator (GSO bursts, recvmmsg + GRO, {WINDOW} datagrams in flight) {}. \
         CPU = utime + stime of the server process per echoed datagram. `vs tokio`: CPU \
         per datagram over tokio-ct's (target <= 0.70).\n\n\
         | peers | size | server | datagrams/s | µs CPU / datagram (min-max) | vs tokio | lost |\n\
         |---|---|---|---|---|---|---|\n",
        if pinned { "on CPU 0" } else { "UNPINNED" },
        if pinned { "on CPU 1" } else { "unpinned" },
    );
    let tokio = SERVERS.iter().position(|s| *s == "tokio-ct").unwrap();
    for (c, &(peers, size)) in cells.iter().enumerate() {
        let cpu_tokio = median(&mut samples[c][tokio].iter().map(|m| m.1).collect::<Vec<_>>());
        for (s, kind) in SERVERS.iter().enumerate() {
            let v = &samples[c][s];
            let mut cpu: Vec<f64> = v.iter().map(|m| m.1).collect();
            let rate = median(&mut v.iter().map(|m| m.0).collect::<Vec<_>>());
            let cpu_med = median(&mut cpu);
            let (lo, hi) = (cpu.first().copied(), cpu.last().copied());
            let lost: u64 = v.iter().map(|m| m.2).sum();
            md += &format!(
                "| {peers} | {size} B | {kind} | {rate:.0} | {cpu_med:.3} ({:.3}-{:.3}) | {:.2} | {lost} |\n",
                lo.unwrap_or(f64::NAN),
                hi.unwrap_or(f64::NAN),
                cpu_med / cpu_tokio,
            );
        }
    }
    md
}

fn taskset_works() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus >= 2
        && ["0", "1"].iter().all(|cpu| {
            Command::new("taskset")
                .args(["-c", cpu, "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}
