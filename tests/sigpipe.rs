//! Issue 7, item 3: writing to a closed peer is an error, never a SIGPIPE, even in a host
//! program that restored SIGPIPE's default action (Rust programs start with it ignored).
//!
//! The library has no unsafe code and does not touch signal dispositions: it writes with
//! `send`/`sendmsg` and MSG_NOSIGNAL. To test that in a process where SIGPIPE would kill,
//! this test binary re-executes itself with `EVLOOP_SIGPIPE_CHILD` set, running only
//! `sigpipe_child`, which restores the default action (the one unsafe call here) and then
//! makes the loop write to dead peers: directly (`send`, nothing queued) and from the queue
//! (`sendmsg`, the vectored flush). A control child shows the set-up is real: a plain
//! `write(2)` to a closed Unix socket does kill it with SIGPIPE.

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler, SendError};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;
use support::*;

const CHILD: &str = "EVLOOP_SIGPIPE_CHILD";

/// Runs this test binary again as a child in `mode`, with a deadline.
fn run_child(mode: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "sigpipe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-run the test binary");
    let (tx, rx) = channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    recv(&rx).expect("wait for the child")
}

#[test]
fn writes_to_a_closed_peer_are_errors_with_sigpipe_at_its_default() {
    let out = run_child("loop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child died: {:?} (signal {:?})\n{stdout}\n{stderr}",
        out.status,
        out.status.signal()
    );
    let reports: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("REPORT ").map(|(_, r)| r))
        .collect();
    eprintln!("{reports:#?}");
    assert_eq!(reports.len(), 4, "{stdout}");
    for r in &reports {
        assert!(r.contains("sigpipe=default"), "{r}");
    }
    assert!(
        reports
            .iter()
            .any(|r| r.starts_with("unix-send closed Error(BrokenPipe)"))
    );
    assert!(
        reports
            .iter()
            .any(|r| r.starts_with("unix-sendmsg closed Error(BrokenPipe)"))
    );
    for name in ["tcp-send ", "tcp-sendmsg "] {
        let r = reports.iter().find(|r| r.starts_with(name)).unwrap();
        assert!(
            r.contains("Error(BrokenPipe)") || r.contains("Error(ConnectionReset)"),
            "{r}"
        );
    }
}

#[test]
fn control_a_plain_write_in_the_child_dies_of_sigpipe() {
    let out = run_child("control");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "the control child should die of SIGPIPE: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child's entry point; in an ordinary test run (no `EVLOOP_SIGPIPE_CHILD`) it does
/// nothing.
#[test]
fn sigpipe_child() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    // SAFETY: restores the default disposition of one signal, before any thread of ours
    // writes to a socket; no handler function is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match mode.as_str() {
        "control" => {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            drop(b);
            // As a File, the socket is written with write(2), which has no MSG_NOSIGNAL
            // (std's own socket writes use send with it): SIGPIPE.
            let mut f = std::fs::File::from(std::os::fd::OwnedFd::from(a));
            let r = f.write(b"x");
            panic!("still alive after a plain write to a closed peer: {r:?}");
        }
        "loop" => child_scenarios(),
        other => panic!("unknown child mode {other}"),
    }
}

/// What the child's handler does once the peer is gone.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// On the peer's EOF, send with nothing queued: `send` meets the dead peer.
    SendAfterEof,
    /// On open, queue 1 MiB the peer will not take: the flush's `sendmsg` (or the error
    /// event before it) meets the dead peer.
    Queue,
}

struct Writer {
    plan: Plan,
    tx: Sender<String>,
}

impl Handler for Writer {
    type Conn = ();

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        if let Plan::Queue = self.plan {
            let _ = cx.set_send_buffer_size(conn, 16 * 1024);
            cx.send(conn, &vec![b'z'; 1 << 20]).unwrap();
            assert!(cx.queued(conn).unwrap() > 0, "nothing queued");
        }
        let _ = self.tx.send("open".into());
    }

    fn on_peer_eof(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        if let Plan::SendAfterEof = self.plan {
            // The first write to a closed TCP peer may still be taken (the peer answers it
            // with RST); keep writing until the loop reports the error, which closed it.
            for _ in 0..1000 {
                if let Err(e) = cx.send(conn, b"anyone there?") {
                    assert_eq!(e, SendError::Closed, "the send met the dead peer");
                    return;
                }
            }
        }
        cx.close(conn);
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        _: (),
        reason: &CloseReason,
    ) {
        let shown = match reason {
            CloseReason::Error(e) => format!("closed Error({:?})", e.kind()),
            other => format!("closed {other:?}"),
        };
        let _ = self.tx.send(shown);
    }
}

/// Whether SIGPIPE is at its default action now (read back through signal-hook-free means:
/// /proc/self/status lists ignored signals in SigIgn).
fn sigpipe_state() -> &'static str {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    let mask = u64::from_str_radix(ign, 16).unwrap();
    if mask & (1 << (libc::SIGPIPE - 1)) != 0 {
        "ignored"
    } else {
        "default"
    }
}

/// How the peer leaves.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Closes (the loop sees EOF, or a reset if it had unread data).
    Close,
    /// Unix: shuts its read side and drains what it holds: the loop's next `sendmsg` is
    /// EPIPE (a peer that closed with unread data would be a reset, before any write).
    ShutReadAndDrain,
    /// TCP: half-closes (we are in CLOSE_WAIT), then resets: the RST makes the socket's
    /// error EPIPE.
    HalfCloseThenReset,
}

fn child_scenarios() {
    use std::io::Read;
    let dir = std::env::temp_dir().join(format!("evloop-sigpipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, plan, peer, unix) in [
        ("unix-send", Plan::SendAfterEof, Peer::Close, true),
        ("unix-sendmsg", Plan::Queue, Peer::ShutReadAndDrain, true),
        ("tcp-send", Plan::SendAfterEof, Peer::Close, false),
        ("tcp-sendmsg", Plan::Queue, Peer::HalfCloseThenReset, false),
    ] {
        let (tx, rx) = channel();
        let mut el = EventLoop::with_config(Writer { plan, tx }, Config::default()).unwrap();
        let path = dir.join(name);
        let tcp_addr = if unix {
            el.listen_unix(&path).unwrap();
            None
        } else {
            let l = el.listen(localhost()).unwrap();
            Some(el.context().listener_addr(l).unwrap().as_inet().unwrap())
        };
        let running = spawn(el);
        let closed = match tcp_addr {
            None => {
                let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                assert_eq!(recv(&rx), "open");
                if let Peer::ShutReadAndDrain = peer {
                    s.shutdown(std::net::Shutdown::Read).unwrap();
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink).unwrap();
                    let closed = recv(&rx);
                    drop(s);
                    closed
                } else {
                    drop(s);
                    recv(&rx)
                }
            }
            Some(addr) => {
                let s = client(addr);
                assert_eq!(recv(&rx), "open");
                if let Peer::HalfCloseThenReset = peer {
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                }
                drop(s);
                recv(&rx)
            }
        };
        let el = running.stop();
        assert_eq!(el.stats().connections_open, 0);
        // Printed for the parent, which checks the reasons.
        println!("REPORT {name} {closed} sigpipe={}", sigpipe_state());
        assert!(closed.starts_with("closed Error("), "{name}: {closed}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::io::stdout().flush().unwrap();
}
