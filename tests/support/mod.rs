//! Shared helpers for the integration tests: a loop on a thread, clients with deadlines,
//! deterministic random bytes, descriptor counting. Nothing here sleeps to synchronise:
//! tests wait on channels and sockets, each with a deadline.
#![allow(dead_code)]

pub mod chat_user;
pub mod file_client;

use evloop::{EventLoop, Handle, Handler};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A loop running on its own thread.
pub struct Running<H: Handler + Send + 'static>
where
    H::Conn: Send,
{
    pub handle: Handle<H>,
    thread: Option<JoinHandle<EventLoop<H>>>,
}

/// Moves `el` to a thread and runs it until `stop`.
pub fn spawn<H: Handler + Send + 'static>(el: EventLoop<H>) -> Running<H>
where
    H::Conn: Send,
{
    let handle = el.handle();
    let thread = std::thread::spawn(move || {
        let mut el = el;
        el.run().expect("run");
        el
    });
    Running {
        handle,
        thread: Some(thread),
    }
}

impl<H: Handler + Send + 'static> Running<H>
where
    H::Conn: Send,
{
    /// Stops the loop and gives it back (handler, stats, slab) for final checks.
    pub fn stop(self) -> EventLoop<H> {
        self.handle.stop().expect("loop alive");
        self.join()
    }

    /// Waits for the loop to return by itself (after a graceful shutdown).
    pub fn join(mut self) -> EventLoop<H> {
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("loop thread panicked")
    }
}

impl<H: Handler + Send + 'static> Drop for Running<H>
where
    H::Conn: Send,
{
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.handle.stop();
            let _ = t.join();
        }
    }
}

/// A blocking TCP client with read and write deadlines.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Writes `msg` and reads back exactly as many bytes.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).expect("write");
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).expect("read echo");
    back
}

/// Reads until EOF (the read deadline still applies to each read).
pub fn read_to_end(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Receives from a test channel, failing the test after `DEADLINE`.
pub fn recv<T>(rx: &Receiver<T>) -> T {
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("no event within {DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("event channel closed"),
    }
}

/// Receives until `pred` matches, discarding others; fails after `DEADLINE`.
pub fn recv_until<T: std::fmt::Debug>(rx: &Receiver<T>, mut pred: impl FnMut(&T) -> bool) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(e) => panic!("no matching event within {DEADLINE:?}: {e}"),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Descriptors this process has open now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An example program running as a child process; killed when dropped.
pub struct Example {
    pub child: std::process::Child,
    /// The address from its first "listening on ADDR" log line.
    pub addr: SocketAddr,
    /// Its stderr lines after that one, as they come.
    pub log: Receiver<String>,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a built example (`cargo test` builds examples into target/<profile>/examples).
pub fn example_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/examples/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test` (which builds examples) or `cargo build --examples`",
        path.display()
    );
    path
}

/// Starts example `name` with `args` (pass `--addr 127.0.0.1:0` so it picks a free port)
/// and waits for its "listening on ADDR" line on stderr. `RUST_LOG` is set to info.
pub fn start_example(name: &str, args: &[&str]) -> Example {
    start_example_with(std::process::Command::new(example_path(name)).args(args))
}

/// As `start_example`, for a command built by the caller (e.g. `sh -c 'ulimit -n 64; exec ...'`).
pub fn start_example_with(cmd: &mut std::process::Command) -> Example {
    use std::io::BufRead;
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn example");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = recv_until(&rx, |l: &String| l.contains("listening on "));
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Example {
        child,
        addr,
        log: rx,
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Descriptors are counted process-wide: tests of one binary that count them take this lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Descriptors open now: the least of three counts (another thread may hold one for a
/// moment, e.g. glibc reading /proc/sys/vm/overcommit_memory once; a leak stays).
pub fn settled_fds() -> usize {
    (0..3).map(|_| open_fds()).min().unwrap()
}

/// Builds these examples if missing or stale: `cargo test --test NAME` alone does not build
/// examples (plain `cargo test` does); a quick no-op when they are fresh.
pub fn build_examples(names: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for name in names {
        cmd.args(["--example", name]);
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {names:?} failed");
}
