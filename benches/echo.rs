//! Echo benchmark: evloop's `echo` example against the floor (raw mio), tokio (current_thread
//! and multi_thread with 2 workers) and std thread-per-connection, all driven by the
//! `loadgen` example, over loopback. Harness-less; writes BENCHMARKS.md at the crate root.
//!
//! ```text
//! cargo build --release --examples            # the servers and the load generator
//! cargo bench --bench echo -- --quick         # one cell (TCP 50 x 64 B, depth 1), 5 runs
//! cargo bench --bench echo                    # the whole matrix (the estimate is printed first)
//! cargo bench --bench echo -- --cell tcp:50:64:16 --runs 7 --secs 3 --out /tmp/b.md
//! ```
//!
//! It never runs cargo: it starts the example binaries next to its own (`target/release/
//! examples/`), and refuses (unless `--stale-ok`) when one is older than a file under `src/`,
//! `examples/` or `Cargo.toml`, so a stale server is never measured by mistake.
//!
//! Each run starts one server pinned to CPU 0 (`taskset -c 0`) on a fresh port, waits until it
//! answers, runs the load generator pinned to CPU 1 with `--server-pid` (server CPU time from
//! /proc, all threads), and kills the server. Servers are interleaved run by run (A B C D E A
//! B C D E ...) so drifts of a noisy machine hit them all alike. Per cell and server: median
//! msgs/s with its spread (min-max), median p99 latency, median server CPU per message, and
//! the ratios of those medians to the floor and to tokio current_thread.
//!
//! Other work on the machine is measured, not assumed away: per run, the CPU time of all
//! processes other than the server and the load generator (/proc/stat busy time,
//! minus theirs). A run disturbed by more than `--max-foreign` % of a CPU is run again once
//! (at most a quarter of the planned runs are repeated); the tables give the median of that
//! "other load" and how many kept runs were still disturbed.
//!
//! Matrix: TCP connections {1, 50, 1000} x size {64 B, 4 KiB} x depth {1, 16}, plus UDP
//! {1, 50} x 64 B x depth 1. Flags (after `--`, or in EVLOOP_BENCH_ARGS): `--quick`,
//! `--cell PROTO:CONNS:SIZE:DEPTH` (repeatable), `--runs N` (5), `--secs S` (2), `--warmup S`
//! (0.5), `--out PATH` (BENCHMARKS.md), `--max-foreign PCT` (10), `--stale-ok`. `--bench`
//! (added by cargo) is ignored.
//! Run without `--bench` and without flags (`cargo test --benches`) it is a smoke test: each
//! server once, briefly, nothing written.
//!
//! Every server is killed when its run ends, also on error or panic (a guard's `Drop`), and
//! gets SIGKILL through PR_SET_PDEATHSIG should the bench itself be killed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// One comparison server: a label and how to start it (`--addr` is appended).
struct Server {
    label: &'static str,
    bin: &'static str,
    args: &'static [&'static str],
}

const SERVERS: [Server; 5] = [
    Server {
        label: "evloop",
        bin: "echo",
        args: &[],
    },
    Server {
        label: "floor",
        bin: "floor_mio_echo",
        args: &[],
    },
    Server {
        label: "tokio-ct",
        bin: "tokio_echo",
        args: &["--flavor", "current_thread"],
    },
    Server {
        label: "tokio-mt",
        bin: "tokio_echo",
        args: &["--flavor", "multi_thread"],
    },
    Server {
        label: "std-threads",
        bin: "std_thread_echo",
        args: &[],
    },
];
const EVLOOP: usize = 0;
const FLOOR: usize = 1;
const TOKIO_CT: usize = 2;
const TOKIO_MT: usize = 3;
const LOADGEN: &str = "loadgen";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    udp: bool,
    conns: u32,
    size: u32,
    depth: u32,
}

impl Cell {
    const fn tcp(conns: u32, size: u32, depth: u32) -> Cell {
        Cell {
            udp: false,
            conns,
            size,
            depth,
        }
    }

    fn parse(s: &str) -> Result<Cell, String> {
        let f: Vec<&str> = s.split(':').collect();
        let n = |i: usize| -> Result<u32, String> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .ok_or(format!(
                    "bad cell {s}: want PROTO:CONNS:SIZE:DEPTH, e.g. tcp:50:64:1"
                ))
        };
        let udp = match f.first() {
            Some(&"tcp") => false,
            Some(&"udp") => true,
            _ => return Err(format!("bad cell {s}: protocol must be tcp or udp")),
        };
        if f.len() != 4 {
            return Err(format!("bad cell {s}: want PROTO:CONNS:SIZE:DEPTH"));
        }
        Ok(Cell {
            udp,
            conns: n(1)?,
            size: n(2)?,
            depth: n(3)?,
        })
    }

    fn proto(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }

    fn key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.proto(),
            self.conns,
            self.size,
            self.depth
        )
    }

    fn title(&self) -> String {
        let size = if self.size % 1024 == 0 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        let what = if self.udp { "sockets" } else { "connections" };
        format!(
            "{} {} {what} x {size}, depth {}",
            self.proto().to_uppercase(),
            self.conns,
            self.depth
        )
    }
}

const QUICK: Cell = Cell::tcp(50, 64, 1);
const TARGET_CELLS: [Cell; 2] = [Cell::tcp(50, 64, 1), Cell::tcp(50, 64, 16)];

fn full_matrix() -> Vec<Cell> {
    let mut cells = Vec::new();
    for conns in [1, 50, 1000] {
        for size in [64, 4096] {
            for depth in [1, 16] {
                cells.push(Cell::tcp(conns, size, depth));
            }
        }
    }
    for conns in [1, 50] {
        cells.push(Cell {
            udp: true,
            conns,
            size: 64,
            depth: 1,
        });
    }
    cells
}

struct Opts {
    cells: Vec<Cell>,
    runs: usize,
    secs: f64,
    warmup: f64,
    out: Option<PathBuf>,
    stale_ok: bool,
    /// A run during which other processes used more CPU than this (% of one CPU) is run
    /// again, once, within a budget of a quarter of the planned runs.
    max_foreign: f64,
    smoke: bool,
    /// The flags as given, for the "command" line of the report.
    given: Vec<String>,
}

fn parse_opts() -> Result<Opts, String> {
    let mut args: Vec<String> = std::env::var("EVLOOP_BENCH_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    args.extend(std::env::args().skip(1));
    let by_cargo_bench = args.iter().any(|a| a == "--bench");
    let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
    let mut o = Opts {
        cells: Vec::new(),
        runs: 5,
        secs: 2.0,
        warmup: 0.5,
        out: Some(PathBuf::from(CRATE_DIR).join("BENCHMARKS.md")),
        stale_ok: false,
        max_foreign: 10.0,
        smoke: !by_cargo_bench && args.is_empty(),
        given: args.clone(),
    };
    let mut quick = false;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => quick = true,
            "--stale-ok" => o.stale_ok = true,
            "--cell" => o.cells.push(Cell::parse(&value()?)?),
            "--runs" => {
                o.runs = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--runs wants a positive integer")?
            }
            "--secs" => {
                o.secs = value()?
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s > 0.0)
                    .ok_or("--secs wants a positive number")?
            }
            "--warmup" => {
                o.warmup = value()?
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s >= 0.0)
                    .ok_or("--warmup wants a number >= 0")?
            }
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--max-foreign" => {
                o.max_foreign = value()?
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s >= 0.0)
                    .ok_or("--max-foreign wants a number >= 0 (percent of one CPU)")?
            }
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench echo -- [--quick] [--cell tcp:50:64:1]... [--runs 5] \
[--secs 2] [--warmup 0.5] [--out BENCHMARKS.md] [--max-foreign 10] [--stale-ok]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if quick && o.cells.is_empty() {
        o.cells.push(QUICK);
    }
    if o.smoke {
        // `cargo test --benches`: a quick check that every server runs, nothing written.
        (o.cells, o.runs, o.secs, o.warmup, o.out) = (vec![QUICK], 1, 0.5, 0.2, None);
    }
    if o.cells.is_empty() {
        o.cells = full_matrix();
    }
    Ok(o)
}

/// A running server: killed (and reaped) when dropped, whatever happened meanwhile.
struct ServerGuard {
    child: Child,
    log: PathBuf,
}

impl ServerGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the server's stderr, for error messages.
    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the load generator too if a run is abandoned (timeout, panic).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Hard links (or copies) of the binaries in a private directory, removed when dropped.
struct Snapshot(PathBuf);

impl Snapshot {
    fn take(bin_dir: &Path) -> Result<Snapshot, String> {
        let dir = bin_dir.with_file_name(format!("echo-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let snap = Snapshot(dir);
        for bin in SERVERS.iter().map(|s| s.bin).chain([LOADGEN]) {
            let (from, to) = (bin_dir.join(bin), snap.0.join(bin));
            if !to.exists() && std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
            }
        }
        Ok(snap)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Env {
    bin_dir: PathBuf,
    /// `taskset` works and there are at least 2 CPUs: servers on CPU 0, loadgen on CPU 1.
    pinned: bool,
}

impl Env {
    /// `bin args...`, pinned to `cpu` when pinning works; dies with the bench.
    fn command(&self, bin: &str, cpu: u32) -> Command {
        let path = self.bin_dir.join(bin);
        let mut cmd = if self.pinned {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(path);
            c
        } else {
            Command::new(path)
        };
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. taskset
        // execs the program in the same process, which keeps the death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    fn start_server(&self, s: &Server, addr: SocketAddr) -> Result<ServerGuard, String> {
        let log = std::env::temp_dir().join(format!("evloop-bench-{}.log", s.label));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = self
            .command(s.bin, 0)
            .args(s.args)
            .arg("--addr")
            .arg(addr.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("start {}: {e}", s.bin))?;
        Ok(ServerGuard { child, log })
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
fn free_addr() -> Result<SocketAddr, String> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        if UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err("no free port".into())
}

/// Waits until the server accepts TCP (and, for UDP cells, echoes a datagram).
fn wait_ready(server: &mut ServerGuard, addr: SocketAddr, udp: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tcp_ok = false;
    loop {
        if let Some(st) = server.exited() {
            return Err(format!("server exited ({st}): {}", server.log_tail()));
        }
        if Instant::now() > deadline {
            return Err(format!("server not ready in 10 s: {}", server.log_tail()));
        }
        if !tcp_ok {
            tcp_ok = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        }
        if tcp_ok && (!udp || udp_echoes(addr)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn udp_echoes(addr: SocketAddr) -> bool {
    let probe = || -> std::io::Result<bool> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s.send(b"ready?")?;
        let mut buf = [0u8; 16];
        Ok(s.recv(&mut buf)? == 6 && &buf[..6] == b"ready?")
    };
    probe().unwrap_or(false)
}

/// One loadgen result (its JSON line).
#[derive(Clone, Debug)]
struct Sample {
    mps: f64,
    p99: f64,
    cpu_us: Option<f64>,
    server_pct: Option<f64>,
    loadgen_pct: f64,
    lost: u64,
    /// CPU time used by processes other than the server and loadgen during the run (all
    /// CPUs, /proc/stat busy time), in % of one CPU: other work disturbing the run.
    foreign_pct: f64,
}

/// Clock ticks per second of /proc times (fixed by the Linux ABI).
const USER_HZ: f64 = 100.0;

/// utime + stime of a process, in clock ticks.
fn pid_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy time of all CPUs, in clock ticks (/proc/stat: user, nice, system, irq, softirq,
/// steal). Interrupt and softirq time counts because a process's own times include the
/// softirq work (loopback packets) done in its context.
fn machine_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .map(|&i| v.get(i).copied().unwrap_or(0))
            .sum(),
    )
}

/// A number field of a flat JSON object; None for a missing field or `null`.
fn json_num(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let at = json.find(&pat)? + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

fn run_once(env: &Env, s: &Server, cell: Cell, o: &Opts) -> Result<Sample, String> {
    let addr = free_addr()?;
    let mut server = env.start_server(s, addr)?;
    wait_ready(&mut server, addr, cell.udp)?;
    let mut cmd = env.command(LOADGEN, 1);
    cmd.args(["--addr", &addr.to_string(), "--proto", cell.proto()])
        .args(["--conns", &cell.conns.to_string()])
        .args(["--size", &cell.size.to_string()])
        .args(["--depth", &cell.depth.to_string()])
        .args([
            "--secs",
            &o.secs.to_string(),
            "--warmup",
            &o.warmup.to_string(),
        ])
        .args(["--server-pid", &server.pid().to_string(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (t0, all0, srv0) = (Instant::now(), machine_ticks(), pid_ticks(server.pid()));
    let mut lg = ChildGuard(cmd.spawn().map_err(|e| format!("start loadgen: {e}"))?);
    let mut lg_ticks = 0;
    // Connects may take up to 10 s (loadgen's own deadline), then warmup and window.
    let deadline = Instant::now() + Duration::from_secs_f64(o.warmup + o.secs + 20.0);
    let status = loop {
        if let Some(st) = lg.0.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        // Its last reading before it exits: at most one poll (20 ms) of its CPU is missed.
        lg_ticks = pid_ticks(lg.0.id()).unwrap_or(lg_ticks);
        if Instant::now() > deadline {
            return Err("loadgen did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut p) = lg.0.stdout.take() {
        let _ = p.read_to_string(&mut out);
    }
    if let Some(mut p) = lg.0.stderr.take() {
        let _ = p.read_to_string(&mut err);
    }
    if let Some(st) = server.exited() {
        return Err(format!(
            "server died during the run ({st}): {}",
            server.log_tail()
        ));
    }
    let foreign = match (all0, machine_ticks(), srv0, pid_ticks(server.pid())) {
        (Some(a0), Some(a1), Some(s0), Some(s1)) => {
            let ours = (s1 - s0) + lg_ticks;
            (a1 - a0).saturating_sub(ours) as f64 / USER_HZ / t0.elapsed().as_secs_f64() * 100.0
        }
        _ => 0.0,
    };
    drop(server);
    let json = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let errors = json_num(json, "errors").unwrap_or(0.0);
    if !status.success() || errors > 0.0 || json.is_empty() {
        let why: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("loadgen:"))
            .take(3)
            .collect();
        return Err(format!(
            "loadgen {status}, errors {errors}: {}",
            why.join(" | ")
        ));
    }
    let field = |k: &str| json_num(json, k).ok_or(format!("loadgen JSON lacks {k}: {json}"));
    Ok(Sample {
        mps: field("msgs_per_sec")?,
        p99: field("p99_us")?,
        cpu_us: json_num(json, "server_cpu_us_per_msg"),
        server_pct: json_num(json, "server_cpu_pct"),
        loadgen_pct: field("loadgen_cpu_pct")?,
        lost: json_num(json, "lost").unwrap_or(0.0) as u64,
        foreign_pct: foreign,
    })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The medians and spread of one server's runs in one cell.
#[derive(Clone, Debug, Default)]
struct Summary {
    ok: usize,
    failed: usize,
    mps: Option<f64>,
    mps_min: f64,
    mps_max: f64,
    p99: Option<f64>,
    cpu_us: Option<f64>,
    cpu_min: f64,
    cpu_max: f64,
    server_pct: Option<f64>,
    loadgen_pct: Option<f64>,
    lost: u64,
    foreign_pct: Option<f64>,
    /// Runs kept although other processes disturbed them (retry failed or budget spent).
    disturbed: usize,
}

fn summarize(samples: &[Sample], failed: usize, max_foreign: f64) -> Summary {
    let col =
        |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> { samples.iter().filter_map(f).collect() };
    let mps = col(&|s| Some(s.mps));
    let cpu = col(&|s| s.cpu_us);
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Summary {
        ok: samples.len(),
        failed,
        mps: median(&mps),
        mps_min: min(&mps),
        mps_max: max(&mps),
        p99: median(&col(&|s| Some(s.p99))),
        cpu_us: median(&cpu),
        cpu_min: min(&cpu),
        cpu_max: max(&cpu),
        server_pct: median(&col(&|s| s.server_pct)),
        loadgen_pct: median(&col(&|s| Some(s.loadgen_pct))),
        lost: samples.iter().map(|s| s.lost).sum(),
        foreign_pct: median(&col(&|s| Some(s.foreign_pct))),
        disturbed: samples
            .iter()
            .filter(|s| s.foreign_pct > max_foreign)
            .count(),
    }
}

/// Newest modification time of the files under `dir` (recursively).
fn newest(path: &Path) -> Option<SystemTime> {
    let md = std::fs::metadata(path).ok()?;
    if !md.is_dir() {
        return md.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// Checks that the example binaries exist and are newer than the sources they are built from.
fn check_binaries(bin_dir: &Path) -> Result<Vec<String>, String> {
    let root = Path::new(CRATE_DIR);
    let sources = ["src", "examples", "Cargo.toml"]
        .iter()
        .filter_map(|p| newest(&root.join(p)))
        .max();
    let mut stale = Vec::new();
    let bins = SERVERS.iter().map(|s| s.bin).chain([LOADGEN]);
    for bin in bins {
        let p = bin_dir.join(bin);
        let built = std::fs::metadata(&p).and_then(|m| m.modified()).map_err(|_| {
            format!(
                "{} is missing: build the servers first with `cargo build --release --examples`",
                p.display()
            )
        })?;
        if sources.is_some_and(|s| s > built) && !stale.contains(&bin.to_string()) {
            stale.push(bin.to_string());
        }
    }
    Ok(stale)
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

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let ncpu = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |m| m.trim().to_string());
    let read = |p: &str| std::fs::read_to_string(p).map_or("?".into(), |s| s.trim().to_string());
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .map_or("?".into(), |l| {
            l.trim_start_matches("MemTotal:").trim().to_string()
        });
    vec![
        ("CPUs (nproc)".into(), ncpu.to_string()),
        ("model name".into(), model),
        ("kernel".into(), read("/proc/sys/kernel/osrelease")),
        ("memory".into(), mem),
        ("load average at start".into(), read("/proc/loadavg")),
    ]
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn f(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

type Results = BTreeMap<Cell, Vec<Summary>>;

fn cell_table(md: &mut String, cell: Cell, sums: &[Summary]) {
    let _ = writeln!(md, "### {}\n", cell.title());
    md.push_str(
        "| server | msgs/s (median) | spread (min-max) | p99 us | server CPU us/msg (spread) \
| msgs/s vs floor | vs tokio-ct | CPU/msg vs floor | vs tokio-ct | server CPU % | loadgen CPU % \
| other load % | runs ok |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let (fl, ct) = (&sums[FLOOR], &sums[TOKIO_CT]);
    for (s, sum) in SERVERS.iter().zip(sums) {
        let spread = if sum.ok > 0 {
            format!("{:.0}-{:.0}", sum.mps_min, sum.mps_max)
        } else {
            "-".into()
        };
        let cpu = match sum.cpu_us {
            Some(c) => format!("{c:.2} ({:.2}-{:.2})", sum.cpu_min, sum.cpu_max),
            None => "-".into(),
        };
        let mut runs = format!("{}/{}", sum.ok, sum.ok + sum.failed);
        if sum.disturbed > 0 {
            let _ = write!(runs, ", {} disturbed", sum.disturbed);
        }
        if cell.udp {
            let _ = write!(runs, " (lost {})", sum.lost);
        }
        let _ = writeln!(
            md,
            "| {} | {} | {spread} | {} | {cpu} | {} | {} | {} | {} | {} | {} | {} | {runs} |",
            s.label,
            f(sum.mps, 0),
            f(sum.p99, 0),
            f(ratio(sum.mps, fl.mps), 2),
            f(ratio(sum.mps, ct.mps), 2),
            f(ratio(sum.cpu_us, fl.cpu_us), 2),
            f(ratio(sum.cpu_us, ct.cpu_us), 2),
            f(sum.server_pct, 0),
            f(sum.loadgen_pct, 0),
            f(sum.foreign_pct, 0),
        );
    }
    md.push('\n');
}

/// "met" / "missed", with a warning when the two spreads overlap.
fn verdict(met: bool, a: (f64, f64), b: (f64, f64)) -> String {
    let overlap = a.0 <= b.1 && b.0 <= a.1;
    let word = if met { "**met**" } else { "**missed**" };
    if overlap {
        format!("{word} (the run spreads overlap: within noise)")
    } else {
        word.into()
    }
}

fn targets(md: &mut String, results: &Results) {
    md.push_str("## Targets (issue 6)\n\n");
    md.push_str(
        "evloop against the floor and tokio current_thread at TCP 50 connections x 64 B, from \
the medians above (same run, same machine). The counting targets (system calls and \
instructions per message, memory per idle connection) are in \"Counting\" below.\n\n",
    );
    md.push_str("| cell | target | figure | verdict |\n|---|---|---:|---|\n");
    let mut any = false;
    for cell in TARGET_CELLS {
        let Some(sums) = results.get(&cell) else {
            continue;
        };
        any = true;
        let (ev, fl, ct, mt) = (
            &sums[EVLOOP],
            &sums[FLOOR],
            &sums[TOKIO_CT],
            &sums[TOKIO_MT],
        );
        let name = format!("d{}", cell.depth);
        let mut row = |target: &str, figure: Option<f64>, fig: String, v: Option<String>| {
            let v = v.unwrap_or_else(|| "no data".into());
            let fig = if figure.is_some() { fig } else { "-".into() };
            let _ = writeln!(md, "| {name} | {target} | {fig} | {v} |");
        };
        let cpu = |s: &Summary| (s.cpu_min, s.cpu_max);
        let mps = |s: &Summary| (s.mps_min, s.mps_max);
        for (other, label, limit) in [(fl, "floor", 1.0), (ct, "tokio-ct", 0.8)] {
            let r = ratio(ev.cpu_us, other.cpu_us);
            let v = r.map(|r| verdict(r <= limit, cpu(ev), scale(cpu(other), limit)));
            let fig = format!(
                "{:.2}x ({} vs {} us)",
                r.unwrap_or(0.0),
                f(ev.cpu_us, 2),
                f(other.cpu_us, 2)
            );
            row(&format!("server CPU/msg <= {limit:.1}x {label}"), r, fig, v);
        }
        for (other, label, limit) in [(fl, "floor", 1.0), (ct, "tokio-ct", 1.15)] {
            let r = ratio(ev.mps, other.mps);
            let v = r.map(|r| verdict(r >= limit, mps(ev), scale(mps(other), limit)));
            let fig = format!(
                "{:.2}x ({} vs {} msg/s)",
                r.unwrap_or(0.0),
                f(ev.mps, 0),
                f(other.mps, 0)
            );
            row(&format!("msgs/s >= {limit:.2}x {label}"), r, fig, v);
        }
        for (other, label) in [(ct, "tokio-ct"), (mt, "tokio-mt")] {
            let r = ratio(ev.p99, other.p99);
            let v = r.map(|r| if r <= 1.0 { "**met**" } else { "**missed**" }.to_string());
            let fig = format!("{} vs {} us", f(ev.p99, 0), f(other.p99, 0));
            row(&format!("p99 <= {label}'s"), r, fig, v);
        }
    }
    if !any {
        md.push_str("| - | (cells tcp:50:64:1 and tcp:50:64:16 were not run) | - | - |\n");
    }
    md.push('\n');
}

fn scale(r: (f64, f64), k: f64) -> (f64, f64) {
    (r.0 * k, r.1 * k)
}

/// The "## Counting" section of an existing report (written by scripts/count.sh), kept.
fn counting_section(path: &Path) -> Option<String> {
    let old = std::fs::read_to_string(path).ok()?;
    let start = old.find("\n## Counting")? + 1;
    let end = old[start + 3..]
        .find("\n## ")
        .map_or(old.len(), |e| start + 3 + e + 1);
    Some(old[start..end].trim_end().to_string() + "\n")
}

struct Report<'a> {
    o: &'a Opts,
    pinned: bool,
    stale: &'a [String],
    started: String,
    elapsed: Duration,
    results: &'a Results,
}

fn report(r: &Report<'_>) -> String {
    let o = r.o;
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Generated by `benches/echo.rs` on {} in {:.1} min. Echo over loopback: evloop's \
`echo` example against the floor (`floor_mio_echo`, raw mio), tokio (`tokio_echo`, \
current_thread and multi_thread with 2 workers) and std thread-per-connection \
(`std_thread_echo`), driven by `loadgen`.\n",
        r.started,
        r.elapsed.as_secs_f64() / 60.0
    );
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in machine() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    md.push('\n');
    md.push_str("## Method\n\n");
    let cmd = if o.given.is_empty() {
        "cargo bench --bench echo".to_string()
    } else {
        format!("cargo bench --bench echo -- {}", o.given.join(" "))
    };
    let _ = writeln!(
        md,
        "- Command: `cargo build --release --examples && {cmd}`.\n\
- Each run: a fresh server on a fresh port, {pin}; loadgen `--warmup {w} --secs {s}` with \
`--server-pid` (server CPU = utime + stime of all its threads over the window, from /proc, \
10 ms ticks), then the server is killed.\n\
- {runs} runs per server and cell, servers interleaved run by run (A B C D E A B C D E ...).\n\
- \"other load %\": CPU time used during the run by processes other than the server and \
loadgen (all CPUs; /proc/stat busy time, softirq and steal included, minus theirs), in % of one CPU. A run \
above {mf}% is run again once (budget: a quarter of the runs); \"disturbed\" counts kept runs \
still above it.\n\
- Figures are medians over the runs; spread is min-max; ratios are ratios of medians. \
msgs/s is echoes completed per second (one direction); p99 is loadgen's, from queueing a \
message to receiving its last byte.\n\
- A 2-core VM shared with other work: expect a few percent of run-to-run noise (see the \
spreads). With 64 B messages the single-threaded loadgen uses most of its core (its CPU % \
column), so msgs/s there mostly measures the client; server CPU per message is the figure \
that separates the servers.",
        pin = if r.pinned {
            "pinned to CPU 0 (`taskset -c 0`), loadgen pinned to CPU 1 (`taskset -c 1`)"
        } else {
            "UNPINNED (taskset missing or fewer than 2 CPUs): server and loadgen share the CPUs"
        },
        w = o.warmup,
        s = o.secs,
        runs = o.runs,
        mf = o.max_foreign,
    );
    if !r.stale.is_empty() {
        let _ = writeln!(
            md,
            "- WARNING (--stale-ok): these binaries were older than the sources: {}.",
            r.stale.join(", ")
        );
    }
    md.push('\n');
    targets(&mut md, r.results);
    md.push_str("## Results\n\n");
    for (cell, sums) in r.results {
        cell_table(&mut md, *cell, sums);
    }
    if let Some(counting) = o.out.as_deref().and_then(counting_section) {
        md.push_str(&counting);
    } else {
        md.push_str(
            "## Counting\n\nNot run yet: `scripts/count.sh` measures system calls and \
instructions per message and memory per idle connection, and fills this section.\n",
        );
    }
    md
}

fn main() {
    let o = parse_opts().unwrap_or_else(|e| {
        eprintln!("bench echo: {e}");
        std::process::exit(2)
    });
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/echo-HASH -> target/<profile>/examples
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench binary under target/<profile>/deps")
        .join("examples");
    let stale = check_binaries(&bin_dir).unwrap_or_else(|e| {
        eprintln!("bench echo: {e}");
        // `cargo test --benches` does not build the examples: nothing to smoke-test.
        std::process::exit(if o.smoke { 0 } else { 2 })
    });
    if !stale.is_empty() {
        let msg = format!(
            "bench echo: {} older than the sources; rebuild with `cargo build --release \
--examples` (or pass --stale-ok)",
            stale.join(", ")
        );
        if !o.stale_ok && !o.smoke {
            eprintln!("{msg}");
            std::process::exit(2);
        }
        eprintln!("warning: {msg}");
    }
    let pinned = taskset_works();
    if !pinned {
        eprintln!("bench echo: taskset missing or < 2 CPUs: running UNPINNED");
    }
    // Run a snapshot of the binaries: another `cargo build` in this tree during the run then
    // cannot swap a server under the bench.
    let snapshot = Snapshot::take(&bin_dir).unwrap_or_else(|e| {
        eprintln!("bench echo: {e}");
        std::process::exit(2)
    });
    let env = Env {
        bin_dir: snapshot.0.clone(),
        pinned,
    };
    let total_runs = o.cells.len() * SERVERS.len() * o.runs;
    // Per run: start + readiness (~0.3 s), connects (~1 ms each), warmup, window, teardown.
    let est: f64 = o
        .cells
        .iter()
        .map(|c| {
            (0.4 + c.conns as f64 / 1000.0 + o.warmup + o.secs) * (SERVERS.len() * o.runs) as f64
        })
        .sum();
    println!(
        "bench echo: {} cell(s) x {} servers x {} runs = {total_runs} runs of {}+{} s; \
estimated {:.1} min{}",
        o.cells.len(),
        SERVERS.len(),
        o.runs,
        o.warmup,
        o.secs,
        est / 60.0,
        if o.smoke {
            " (smoke test: no --bench flag)"
        } else {
            ""
        }
    );
    let started = now_utc();
    let t0 = Instant::now();
    let mut results = Results::new();
    let mut done = 0;
    let mut failures = 0;
    let mut retries_left = total_runs / 4;
    for &cell in &o.cells {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); SERVERS.len()];
        let mut failed = vec![0usize; SERVERS.len()];
        for run in 0..o.runs {
            for (i, s) in SERVERS.iter().enumerate() {
                done += 1;
                let tag = format!(
                    "[{done}/{total_runs} {:.0}s] {} {:<11} run {}/{}",
                    t0.elapsed().as_secs_f64(),
                    cell.key(),
                    s.label,
                    run + 1,
                    o.runs
                );
                let mut result = run_once(&env, s, cell, &o);
                if let Ok(x) = &result {
                    if x.foreign_pct > o.max_foreign && retries_left > 0 {
                        println!(
                            "{tag}: disturbed (other processes used {:.0}% CPU): again",
                            x.foreign_pct
                        );
                        retries_left -= 1;
                        result = run_once(&env, s, cell, &o);
                    }
                }
                match result {
                    Ok(x) => {
                        println!(
                            "{tag}: {:>9.0} msg/s  p99 {:>7.0} us  cpu {} us/msg ({}%)  \
loadgen {:.0}%  other {:.0}%",
                            x.mps,
                            x.p99,
                            f(x.cpu_us, 2),
                            f(x.server_pct, 0),
                            x.loadgen_pct,
                            x.foreign_pct
                        );
                        samples[i].push(x);
                    }
                    Err(e) => {
                        println!("{tag}: FAILED: {e}");
                        failed[i] += 1;
                        failures += 1;
                    }
                }
            }
        }
        let sums: Vec<Summary> = samples
            .iter()
            .zip(&failed)
            .map(|(s, &n)| summarize(s, n, o.max_foreign))
            .collect();
        results.insert(cell, sums);
    }
    let r = Report {
        o: &o,
        pinned,
        stale: &stale,
        started,
        elapsed: t0.elapsed(),
        results: &results,
    };
    let md = report(&r);
    // Print the tables (not the machine and method) to the terminal.
    if let Some(at) = md.find("## Targets") {
        let end = md.find("\n## Counting").unwrap_or(md.len());
        println!("\n{}", &md[at..end]);
    }
    let mut status = 0;
    match &o.out {
        Some(path) => match std::fs::write(path, &md) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("bench echo: writing {}: {e}", path.display());
                status = 1;
            }
        },
        None => println!("(smoke test: nothing written)"),
    }
    if o.smoke && failures > 0 {
        eprintln!("bench echo: {failures} run(s) failed");
        status = 1;
    }
    drop(snapshot);
    std::process::exit(status);
}
