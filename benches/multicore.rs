//! Several cores: echo with 2 loops (`echo --threads 2`, SO_REUSEPORT, and with
//! `--round-robin`, one acceptor handing connections out) against tokio's multi-thread
//! runtime with 2 workers and 2 loops of the raw mio floor (`floor_mio_echo --threads 2`),
//! driven by the `loadgen` example. Harness-less; writes the "## Several cores" section of
//! BENCHMARKS.md.
//!
//! ```text
//! cargo build --release --examples
//! cargo bench --bench multicore                  # 3 cells x 4 servers x 3 runs, ~2 minutes
//! cargo bench --bench multicore -- --runs 5 --secs 3 --out /tmp/b.md
//! ```
//!
//! Servers and load generator are NOT pinned (the servers need both cores; the load
//! generator shares them), so the main figure is server CPU per message (all threads, from
//! /proc), which does not depend on who got which core; messages per second is given
//! beside it. Servers are interleaved run by run. Each server is killed when its run ends.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

struct Server {
    label: &'static str,
    bin: &'static str,
    args: &'static [&'static str],
}

const SERVERS: [Server; 4] = [
    Server {
        label: "evloop 2 loops (SO_REUSEPORT)",
        bin: "echo",
        args: &["--threads", "2"],
    },
    Server {
        label: "evloop 2 loops (round-robin)",
        bin: "echo",
        args: &["--threads", "2", "--round-robin"],
    },
    Server {
        label: "floor: 2 raw mio loops",
        bin: "floor_mio_echo",
        args: &["--threads", "2"],
    },
    Server {
        label: "tokio multi_thread (2 workers)",
        bin: "tokio_echo",
        args: &["--flavor", "multi_thread"],
    },
];
const TOKIO: usize = 3;

#[derive(Clone, Copy)]
struct Cell {
    conns: u32,
    depth: u32,
}

const CELLS: [Cell; 3] = [
    Cell {
        conns: 50,
        depth: 1,
    },
    Cell {
        conns: 50,
        depth: 16,
    },
    Cell {
        conns: 1000,
        depth: 1,
    },
];

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap()
}

fn json_num(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// One run: (messages/s, server CPU µs per message).
fn run(bin_dir: &std::path::Path, s: &Server, cell: Cell, secs: f64) -> Result<(f64, f64), String> {
    let addr = free_addr();
    let server = Command::new(bin_dir.join(s.bin))
        .args(s.args)
        .args(["--addr", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", s.bin))?;
    let server = Guard(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} not ready", s.label));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(bin_dir.join("loadgen"))
        .args(["--addr", &addr.to_string(), "--proto", "tcp"])
        .args(["--conns", &cell.conns.to_string(), "--size", "64"])
        .args(["--depth", &cell.depth.to_string()])
        .args(["--secs", &secs.to_string(), "--warmup", "0.5"])
        .args(["--server-pid", &server.0.id().to_string(), "--json"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start loadgen: {e}"))?;
    let mut lg = Guard(out);
    let mut text = String::new();
    lg.0.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let status = lg.0.wait().map_err(|e| e.to_string())?;
    let json = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    if !status.success() || json_num(json, "errors").unwrap_or(1.0) > 0.0 {
        return Err(format!("{}: loadgen {status}: {json}", s.label));
    }
    let mps = json_num(json, "msgs_per_sec").ok_or("no msgs_per_sec")?;
    let cpu = json_num(json, "server_cpu_us_per_msg").ok_or("no server CPU")?;
    Ok((mps, cpu))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut runs = 3;
    let mut secs = 2.0;
    let mut out = Some(PathBuf::from(CRATE_DIR).join("BENCHMARKS.md"));
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let smoke = args.is_empty() && !std::env::args().any(|a| a == "--bench");
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--secs" => secs = it.next().and_then(|v| v.parse().ok()).expect("--secs S"),
            "--out" => out = it.next().map(PathBuf::from),
            _ => {
                panic!("usage: cargo bench --bench multicore -- [--runs N] [--secs S] [--out PATH]")
            }
        }
    }
    let bin_dir = PathBuf::from(CRATE_DIR).join("target/release/examples");
    if smoke {
        // `cargo test --benches`: nothing measured.
        println!("multicore: run with `cargo bench --bench multicore`");
        return;
    }
    let mut md = String::from(
        "## Several cores\n\nEcho, TCP, 64 B messages, 2 server threads, servers and `loadgen` \
unpinned on the 2 cores (the load generator competes for them, so messages/s is a weak \
figure here; server CPU per message, summed over the server's threads, is the main one). \
Medians of interleaved runs. Reproduce: `cargo build --release --examples && cargo bench \
--bench multicore`.\n\n",
    );
    for cell in CELLS {
        let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); SERVERS.len()];
        for _ in 0..runs {
            for (i, s) in SERVERS.iter().enumerate() {
                match run(&bin_dir, s, cell, secs) {
                    Ok(x) => samples[i].push(x),
                    Err(e) => eprintln!("multicore: {e}"),
                }
            }
        }
        let meds: Vec<Option<(f64, f64)>> = samples
            .iter()
            .map(|v| {
                (!v.is_empty()).then(|| {
                    (
                        median(v.iter().map(|x| x.0).collect()),
                        median(v.iter().map(|x| x.1).collect()),
                    )
                })
            })
            .collect();
        md += &format!(
            "**{} connections, depth {}** ({runs} runs of {secs} s)\n\n| server | msgs/s | \
server CPU µs/msg | CPU/msg vs tokio |\n|---|---:|---:|---:|\n",
            cell.conns, cell.depth
        );
        for (s, m) in SERVERS.iter().zip(&meds) {
            let row = match (m, meds[TOKIO]) {
                (Some((mps, cpu)), Some((_, t))) => {
                    format!("| {} | {mps:.0} | {cpu:.2} | {:.2}x |\n", s.label, cpu / t)
                }
                (Some((mps, cpu)), None) => format!("| {} | {mps:.0} | {cpu:.2} | - |\n", s.label),
                _ => format!("| {} | failed | failed | - |\n", s.label),
            };
            md += &row;
        }
        md += "\n";
    }
    print!("{md}");
    if let Some(path) = out {
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let new = match old.find("## Several cores") {
            Some(start) => {
                let end = old[start + 3..]
                    .find("\n## ")
                    .map_or(old.len(), |e| start + 3 + e + 1);
                format!("{}{}{}", &old[..start], md, &old[end..])
            }
            None => format!("{}\n{md}", old.trim_end()),
        };
        std::fs::write(&path, new).expect("write BENCHMARKS.md");
        eprintln!("wrote the \"Several cores\" section of {}", path.display());
    }
}
