//! File-serving benchmark (issue 16): the `file_server` example sending bodies with
//! sendfile(2) (`Context::send_file`, its default) against the same server with `--copy`
//! (read into a buffer, then send), in the same run, over loopback. Harness-less.
//!
//! ```text
//! cargo bench --bench files                          # 5 runs of each cell, ~1 min
//! cargo bench --bench files -- --runs 3 --out /tmp/files.md
//! ```
//!
//! Workloads: one 1 GiB download, and 1,000 downloads of 1 MiB, 50 at a time (50
//! connections, 20 requests each, over 100 distinct files). The files are written once into
//! a directory under the system temp dir (real data, so both paths read the page cache; a
//! warm-up download of each file before measuring), and removed at the end.
//!
//! Both servers run for the whole bench, pinned to CPU 0 (`taskset -c 0`) when there are two
//! CPUs and taskset works; the client is this process, pinned to CPU 1: threads with blocking
//! sockets that read and discard, checking each reply's header and length. Runs interleave
//! the servers (sendfile, copy, sendfile, copy, ...) so a drift of a noisy machine hits both.
//! Per run: server CPU time (utime + stime from /proc/PID/stat, around the transfer) per GiB
//! sent, and throughput (bytes over the client's wall time). The table gives medians (with
//! min-max) and the ratio copy / sendfile of the median CPU per GiB; the target is >= 2.
//!
//! Flags (after `--`): `--runs N` (5, at least 3 for a table), `--out PATH` (also write the
//! table there), `--budget SECS` (120: no new run starts after that, once 3 are done),
//! `--server-args "ARGS"` (more arguments for both servers, e.g. `--turn-kib 256`).
//! Run without `--bench` (`cargo test --benches`) it is a smoke test: small sizes, one run.
//! The servers get SIGKILL through PR_SET_PDEATHSIG should the bench itself be killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;
/// Clock ticks per second of /proc times (fixed by the Linux ABI).
const USER_HZ: f64 = 100.0;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct Opts {
    runs: usize,
    /// More arguments for both servers (`--server-args "--turn-kib 256"`).
    server_args: Vec<String>,
    out: Option<PathBuf>,
    budget: Duration,
    smoke: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let by_cargo_bench = args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        runs: 5,
        server_args: Vec::new(),
        out: None,
        budget: Duration::from_secs(120),
        smoke: !by_cargo_bench,
    };
    let mut it = args.iter().filter(|a| *a != "--bench");
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--server-args" => {
                o.server_args = value()?.split_whitespace().map(String::from).collect();
            }
            "--budget" => {
                let s: f64 = value()?.parse().map_err(|e| format!("--budget: {e}"))?;
                o.budget = Duration::from_secs_f64(s);
            }
            _ => {
                return Err(format!(
                    "unknown argument {a}\nusage: cargo bench --bench files -- [--runs 5] \
                     [--out PATH] [--budget SECS] [--server-args ARGS]"
                ));
            }
        }
    }
    if o.smoke {
        o.runs = 1;
    }
    Ok(o)
}

/// One workload: `conns` connections, each downloading `per_conn` files of `size` bytes.
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    size: u64,
    conns: usize,
    per_conn: usize,
    /// Distinct files the downloads cycle through.
    files: usize,
}

impl Workload {
    fn bytes(&self) -> u64 {
        self.size * (self.conns * self.per_conn) as u64
    }
    fn file(&self, i: usize) -> String {
        format!("{}-{}", self.name, i % self.files)
    }
}

fn workloads(smoke: bool) -> [Workload; 2] {
    let (big, many) = if smoke { (32 * MIB, 2) } else { (1 << 30, 20) };
    [
        Workload {
            name: "single",
            size: big,
            conns: 1,
            per_conn: 1,
            files: 1,
        },
        Workload {
            name: "many",
            size: MIB,
            conns: 50,
            per_conn: many,
            files: 100,
        },
    ]
}

/// The served directory, removed when dropped.
struct Root(PathBuf);

impl Root {
    fn create(loads: &[Workload]) -> std::io::Result<Root> {
        let dir = std::env::temp_dir().join(format!("evloop-bench-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let root = Root(dir);
        // Real bytes (not holes): a cheap pattern, different per file and per MiB.
        let mut block = vec![0u8; MIB as usize];
        for w in loads {
            for i in 0..w.files {
                let mut f = std::fs::File::create(root.0.join(w.file(i)))?;
                for m in 0..w.size.div_ceil(MIB) {
                    let seed = (i as u64) << 32 | m;
                    for (k, b) in block.iter_mut().enumerate() {
                        *b = (seed as usize ^ k.wrapping_mul(2_654_435_761)) as u8;
                    }
                    let n = (w.size - m * MIB).min(MIB) as usize;
                    f.write_all(&block[..n])?;
                }
            }
        }
        Ok(root)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running file_server: killed (and reaped) when dropped.
struct Server {
    label: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(bin: &Path, root: &Path, label: &'static str, extra: &[&str], pin: bool) -> Server {
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(["--addr", "127.0.0.1:0", "--max-per-ip", "1000", "--root"])
            .arg(root)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; taskset
        // execs the server in the same process, which keeps the death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start file_server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on ") {
                    let _ = tx.send(line);
                } else if !line.contains(" INFO ") {
                    eprintln!("file_server {label}: {line}");
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("file_server did not start");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .expect("an address in the listening line");
        Server { label, child, addr }
    }

    /// utime + stime of the server, in seconds.
    fn cpu_secs(&self) -> f64 {
        let pid = self.child.id();
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 1..].split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / USER_HZ
    }
}

/// Downloads `w` from `addr` with `w.conns` threads, reading and discarding; returns the
/// bytes of body received.
fn transfer(addr: SocketAddr, w: Workload) -> u64 {
    let threads: Vec<_> = (0..w.conns)
        .map(|c| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut r = BufReader::with_capacity(256 * 1024, s);
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0;
                for k in 0..w.per_conn {
                    let name = w.file(c * w.per_conn + k);
                    r.get_mut()
                        .write_all(format!("GET {name}\n").as_bytes())
                        .expect("request");
                    let mut header = String::new();
                    r.read_line(&mut header).expect("header");
                    assert_eq!(header, format!("OK {}\n", w.size), "GET {name}");
                    let mut left = w.size;
                    while left > 0 {
                        let want = buf.len().min(left as usize);
                        let n = r.read(&mut buf[..want]).expect("body");
                        assert!(n > 0, "EOF with {left} bytes of {name} to go");
                        left -= n as u64;
                    }
                    total += w.size;
                }
                total
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client")).sum()
}

/// One measured transfer.
#[derive(Clone, Copy, Debug)]
struct Sample {
    cpu_per_gib: f64,
    gib_per_s: f64,
}

fn measure(server: &Server, w: Workload) -> Sample {
    let cpu0 = server.cpu_secs();
    let t = Instant::now();
    let bytes = transfer(server.addr, w);
    let secs = t.elapsed().as_secs_f64();
    let cpu = server.cpu_secs() - cpu0;
    assert_eq!(bytes, w.bytes());
    Sample {
        cpu_per_gib: cpu / (bytes as f64 / GIB),
        gib_per_s: bytes as f64 / GIB / secs,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median (min-max)`.
fn spread(v: &[f64], prec: usize) -> (f64, String) {
    let mut v = v.to_vec();
    let m = median(&mut v);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    (m, format!("{m:.prec$} ({lo:.prec$}-{hi:.prec$})"))
}

/// Pins this process (and the threads it starts) to `cpu`.
fn pin_self(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it;
    // sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn taskset_works() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset")
            .args(["-c", "0", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Builds the example in this profile (a no-op when fresh) and returns its path.
fn build_file_server() -> PathBuf {
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--example", "file_server"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build --example file_server failed");
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    dir.join("examples").join("file_server")
}

fn main() {
    let o = parse_opts().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let bin = build_file_server();
    let pinned = taskset_works() && pin_self(1);
    let loads = workloads(o.smoke);
    let root = Root::create(&loads).expect("create the files");
    let extra: Vec<&str> = o.server_args.iter().map(String::as_str).collect();
    let copy = [&extra[..], &["--copy"]].concat();
    let servers = [
        Server::start(&bin, &root.0, "sendfile", &extra, pinned),
        Server::start(&bin, &root.0, "copy", &copy, pinned),
    ];
    // Warm-up: every file read once through each server, so the page cache holds it all.
    for s in &servers {
        for w in &loads {
            let warm = Workload {
                conns: 1,
                per_conn: w.files,
                ..*w
            };
            transfer(s.addr, warm);
        }
    }
    // samples[workload][server]
    let mut samples = vec![vec![Vec::<Sample>::new(); servers.len()]; loads.len()];
    let started = Instant::now();
    let mut runs = 0;
    while runs < o.runs && (runs < 3 || started.elapsed() < o.budget) {
        for (wi, w) in loads.iter().enumerate() {
            for (si, s) in servers.iter().enumerate() {
                let sample = measure(s, *w);
                eprintln!(
                    "run {} {} {}: {:.3} CPU s/GiB, {:.2} GiB/s",
                    runs + 1,
                    w.name,
                    s.label,
                    sample.cpu_per_gib,
                    sample.gib_per_s
                );
                samples[wi][si].push(sample);
            }
        }
        runs += 1;
    }
    let mut table = table(&loads, &servers, &samples, runs, pinned, started.elapsed());
    if o.smoke {
        table.push_str(
            "\n(smoke run: small sizes, one run; `cargo bench --bench files` measures)\n",
        );
    }
    println!("{table}");
    if let Some(out) = &o.out {
        std::fs::write(out, &table).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    }
}

fn table(
    loads: &[Workload],
    servers: &[Server],
    samples: &[Vec<Vec<Sample>>],
    runs: usize,
    pinned: bool,
    took: Duration,
) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let where_ = if pinned {
        "server on CPU 0, client on CPU 1"
    } else {
        "not pinned"
    };
    let _ = writeln!(
        t,
        "### file_server: sendfile vs copy ({runs} runs each, interleaved, medians with \
         min-max; {where_}; {:.0} s)\n",
        took.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "| workload | path | server CPU s per GiB | throughput GiB/s | CPU copy / sendfile |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|");
    for (wi, w) in loads.iter().enumerate() {
        let what = if w.conns == 1 {
            format!("1 x {} MiB", w.size / MIB)
        } else {
            format!(
                "{} x {} MiB, {} at a time",
                w.conns * w.per_conn,
                w.size / MIB,
                w.conns
            )
        };
        let cpu: Vec<(f64, String)> = samples[wi]
            .iter()
            .map(|s| spread(&s.iter().map(|x| x.cpu_per_gib).collect::<Vec<_>>(), 3))
            .collect();
        let ratio = cpu[1].0 / cpu[0].0;
        for (si, s) in servers.iter().enumerate() {
            let rate = spread(
                &samples[wi][si]
                    .iter()
                    .map(|x| x.gib_per_s)
                    .collect::<Vec<_>>(),
                2,
            );
            let r = if si == 0 {
                let verdict = if ratio >= 2.0 { "met" } else { "NOT met" };
                format!("{ratio:.2}x (target >= 2x: {verdict})")
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "| {what} | {} | {} | {} | {r} |",
                s.label, cpu[si].1, rate.1
            );
        }
    }
    t
}
