//! Issue 4: descriptor exhaustion. The echo example runs in a child process whose
//! RLIMIT_NOFILE is lowered with `ulimit -n` (no unsafe `setrlimit` here); the test opens
//! more clients than it has descriptors for and checks that the listener backs off on a
//! timer (no busy loop), that open connections keep being served, and that accepting
//! resumes once descriptors are free.

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const NOFILE: usize = 64;
const CLIENTS: usize = 90;

/// CPU time (user + system) the process has used, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

fn open_fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap()
}

fn is_retry_line(line: &str) -> bool {
    line.contains("Too many open files") && line.contains("retrying in")
}

#[test]
fn accept_backs_off_on_emfile_keeps_serving_and_recovers() {
    build_examples(&["echo"]);
    let echo = example_path("echo");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
        .arg(&echo)
        .args(["--addr", "127.0.0.1:0"]);
    let mut ex = start_example_with(&mut cmd);
    let pid = ex.child.id();
    let addr = ex.addr;

    // More clients than the server has descriptors: the kernel completes every handshake
    // (the backlog is 1024), the server accepts until EMFILE.
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| client(addr)).collect();
    let line = recv_until(&ex.log, |l: &String| is_retry_line(l));
    assert!(line.contains("100ms"), "default accept_retry: {line}");
    // Every descriptor number below the limit is taken (inherited ones above it may exist).
    let fds = open_fds_of(pid);
    assert!(fds >= NOFILE, "EMFILE with {fds} descriptors open");

    // The first client was accepted before the limit: it is still served.
    assert_eq!(
        round_trip(&mut clients[0], b"still served"),
        b"still served"
    );

    // While exhausted the loop waits on its retry timer: ten retries take about a second
    // (not a spin), and the process uses next to no CPU meanwhile.
    let (t0, cpu0) = (Instant::now(), cpu_time(pid));
    for _ in 0..10 {
        recv_until(&ex.log, |l: &String| is_retry_line(l));
    }
    let (elapsed, cpu) = (t0.elapsed(), cpu_time(pid) - cpu0);
    assert!(
        elapsed >= Duration::from_millis(800),
        "10 accept retries in {elapsed:?}: not backing off"
    );
    assert!(
        cpu < Duration::from_millis(200),
        "{cpu:?} of CPU in {elapsed:?} while out of descriptors"
    );
    assert_eq!(round_trip(&mut clients[1], b"and again"), b"and again");

    // Free descriptors: close all but the first 20 clients (the never-accepted ones
    // included, which the server accepts and then sees close). A new client is served
    // within a second.
    let t0 = Instant::now();
    clients.truncate(20);
    let mut fresh = client(addr);
    fresh
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(round_trip(&mut fresh, b"new one"), b"new one");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "served after {:?}",
        t0.elapsed()
    );
    assert_eq!(round_trip(&mut clients[0], b"old one"), b"old one");

    // SIGTERM: a graceful shutdown closes every client and the process exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = recv_until(&ex.log, |l: &String| l.contains("echo stopped"));
    let errors: u64 = stopped
        .split("accept_descriptor_errors: ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no accept_descriptor_errors in {stopped:?}"));
    assert!(errors >= 11, "Stats::accept_descriptor_errors = {errors}");
    // Its stderr closes when it exits.
    let end = Instant::now() + DEADLINE;
    loop {
        match ex
            .log
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("echo did not exit after SIGTERM: {e}"),
        }
    }
    let status = ex.child.wait().unwrap();
    assert!(status.success(), "echo exited with {status}");
    for mut c in clients {
        assert_eq!(read_to_end(&mut c).unwrap(), b"", "closed with FIN");
    }
}
