//! The `udp_chat` example as a real process: joining, delivery, leaving, expiry, and its
//! client mode driven through stdin and stdout.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{DEADLINE, Example, example_path, start_example};

/// A UDP peer on loopback, talking to one server.
struct Peer {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Peer {
    fn new(server: SocketAddr) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        Peer { sock, server }
    }

    fn joined(server: SocketAddr, name: &str) -> Peer {
        let p = Peer::new(server);
        p.say(&format!("/join {name}"));
        p.expect("OK");
        p
    }

    fn say(&self, msg: &str) {
        self.send(msg.as_bytes());
    }

    fn send(&self, data: &[u8]) {
        self.sock.send_to(data, self.server).expect("send");
    }

    /// The next datagram from the server, without its "\n", within `wait`.
    fn hear_within(&self, wait: Duration) -> Option<String> {
        // A zero timeout would mean "block forever" to the OS; std refuses it.
        let wait = wait.max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0; 65536];
        let got = match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, self.server);
                let text = std::str::from_utf8(&buf[..n]).expect("UTF-8");
                Some(text.strip_suffix('\n').expect("ends in \\n").to_string())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv: {e}"),
        };
        self.sock.set_read_timeout(Some(DEADLINE)).unwrap();
        got
    }

    fn hear(&self) -> String {
        self.hear_within(DEADLINE)
            .unwrap_or_else(|| panic!("no datagram within {DEADLINE:?}"))
    }

    fn expect(&self, want: &str) {
        assert_eq!(self.hear(), want);
    }
}

fn server(args: &[&str]) -> Example {
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    start_example("udp_chat", &all)
}

#[test]
fn two_peers_join_and_talk() {
    let ex = server(&[]);
    let a = Peer::joined(ex.addr, "alice");
    let b = Peer::joined(ex.addr, "bob");
    a.say("hello bob");
    b.expect("[alice] hello bob");
    b.send(b"hi alice\r\n");
    // Had alice got her own line back, it would have come first.
    a.expect("[bob] hi alice");
    a.send(b"tab\there\n");
    b.expect("[alice] tab\there");

    // Names: visible, at most 32 characters, unique.
    let c = Peer::new(ex.addr);
    for bad in [
        "/join",
        "/join  ",
        "/join two words",
        &format!("/join {}", "n".repeat(33)),
    ] {
        c.say(bad);
        assert_eq!(c.hear(), "ERR name must be 1 to 32 visible characters");
    }
    c.say("/join bob");
    c.expect("ERR name bob is taken");
    c.say(&format!("/join {}", "é".repeat(32)));
    c.expect("OK");
    // Rejoining renames.
    c.say("/join carol");
    c.expect("OK");
    c.say("hi all");
    a.expect("[carol] hi all");
    b.expect("[carol] hi all");
}

#[test]
fn bad_input_and_unregistered_senders_get_err() {
    let ex = server(&[]);
    let u = Peer::new(ex.addr);
    u.say("hello?");
    u.expect("ERR join first");
    u.say("/leave");
    u.expect("ERR join first");
    u.say("/shout x");
    u.expect("ERR unknown command /shout");
    u.send(b"\xff\xfe");
    u.expect("ERR invalid UTF-8");
    u.send(b"esc \x1b[0m");
    u.expect("ERR control characters are not allowed");
    u.send(b"two\nlines");
    u.expect("ERR control characters are not allowed");
}

#[test]
fn leave_stops_delivery() {
    let ex = server(&[]);
    let a = Peer::joined(ex.addr, "alice");
    let b = Peer::joined(ex.addr, "bob");
    let c = Peer::joined(ex.addr, "carol");
    a.say("one");
    b.expect("[alice] one");
    c.expect("[alice] one");
    b.say("/leave");
    b.expect("OK");
    a.say("two");
    c.expect("[alice] two");
    // The server handled "two" before this datagram of bob's (carol got it), and sends to
    // bob in order: the next thing bob hears must be the answer, not "two".
    b.say("still there?");
    b.expect("ERR join first");
}

#[test]
fn silent_peers_expire() {
    let ex = server(&["--expiry", "1"]);
    let talker = Peer::joined(ex.addr, "talker");
    let join_sent = Instant::now();
    let silent = Peer::joined(ex.addr, "silent");
    // The talker speaks every 200 ms; the silent one hears it until it expires. It counts as
    // gone after three slots in a row with nothing (a late ping would show up in a later
    // slot). Bounded at 5 s.
    let slot = Duration::from_millis(200);
    let give_up = Instant::now() + Duration::from_secs(5);
    let (mut heard, mut misses, mut i) = (Vec::new(), 0, 0);
    while misses < 3 {
        assert!(
            Instant::now() < give_up,
            "still hearing after 5 s: {heard:?}"
        );
        i += 1;
        talker.say(&format!("ping {i}"));
        let slot_end = Instant::now() + slot;
        let before = heard.len();
        while let Some(msg) = silent.hear_within(slot_end.saturating_duration_since(Instant::now()))
        {
            heard.push(msg);
        }
        misses = if heard.len() > before { 0 } else { misses + 1 };
    }
    assert!(
        join_sent.elapsed() >= Duration::from_secs(1),
        "expired early"
    );
    // It heard a run of pings, in order, from the first one.
    let want: Vec<String> = (1..=heard.len())
        .map(|n| format!("[talker] ping {n}"))
        .collect();
    assert_eq!(heard, want);
    assert!(heard.len() >= 2, "{heard:?}");
    // The timer forgot it: it must join again. The talker, who kept talking, did not expire.
    silent.say("anyone?");
    silent.expect("ERR join first");
    silent.say("/join silent");
    silent.expect("OK");
    talker.say("welcome back");
    silent.expect("[talker] welcome back");
}

/// `udp_chat --connect ADDR` with piped stdin and stdout; killed when dropped.
struct Client {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// Its stdout lines; disconnected at EOF (when it exits).
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(server: SocketAddr) -> Client {
        let mut child = Command::new(example_path("udp_chat"))
            .args(["--connect", &server.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn udp_chat --connect");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            lines,
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write stdin");
        stdin.flush().unwrap();
    }

    fn expect(&self, want: &str) {
        assert_eq!(support::recv(&self.lines), want);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn client_mode_sends_stdin_lines_and_prints_datagrams() {
    let ex = server(&[]);
    let mut carol = Client::start(ex.addr);
    carol.type_line("/join carol");
    carol.expect("OK");
    let alice = Peer::joined(ex.addr, "alice");
    carol.type_line("hello from carol");
    alice.expect("[carol] hello from carol");
    alice.say("hi carol");
    carol.expect("[alice] hi carol");

    // EOF on stdin stops the loop: stdout closes and the process exits cleanly.
    drop(carol.stdin.take());
    match carol.lines.recv_timeout(DEADLINE) {
        Err(mpsc::RecvTimeoutError::Disconnected) => {}
        other => panic!("expected stdout to close, got {other:?}"),
    }
    let status = carol.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

/// SIGTERM starts a graceful shutdown (`shutdown_on_signals`): with no connections to
/// flush, the server exits cleanly at once.
#[test]
fn sigterm_exits() {
    let mut ex = server(&[]);
    let a = Peer::joined(ex.addr, "alice");
    a.say("/leave");
    a.expect("OK");
    sigterm(&ex);
    exits_cleanly(&mut ex);
}

/// Sends SIGTERM to the example.
fn sigterm(ex: &Example) {
    let pid = ex.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.unwrap().success());
}

/// Waits, within the deadline, for the example to exit cleanly: its stderr closes, then
/// its status is success.
fn exits_cleanly(ex: &mut Example) {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match ex.log.recv_timeout(left) {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("still running {DEADLINE:?} after SIGTERM: {e}"),
        }
    }
    let status = ex.child.wait().unwrap();
    assert!(status.success(), "exited with {status}");
}
