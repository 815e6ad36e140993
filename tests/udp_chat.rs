//! The `udp_chat` example as a real process: joining (with the cookie that proves the
//! return address), delivery, leaving, expiry, and its client mode driven through stdin and
//! stdout: it talks only to its server and escapes control characters. Forged sources,
//! amplification and caps are in tests/adversarial_chat.rs.

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
        assert_eq!(p.join(name), "OK");
        p
    }

    /// `/join NAME` padded to 64 bytes (shorter ones get no cookie): the cookie answer.
    fn cookie(&self, name: &str) -> String {
        self.send(&padded(&format!("/join {name}")));
        let answer = self.hear();
        let cookie = answer.strip_prefix("COOKIE ");
        cookie
            .unwrap_or_else(|| panic!("no cookie: {answer:?}"))
            .to_string()
    }

    /// Both steps of joining; the answer to the second ("OK" or an ERR).
    fn join(&self, name: &str) -> String {
        let cookie = self.cookie(name);
        self.say(&format!("/join {name} {cookie}"));
        self.hear()
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

/// `line` padded with spaces to 64 bytes, as a cookie-less `/join` must be.
fn padded(line: &str) -> Vec<u8> {
    let mut v = line.as_bytes().to_vec();
    v.resize(v.len().max(64), b' ');
    v
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

    // Names: visible, at most 32 characters, unique. A bad name is refused at once (the
    // padded request is larger than the answer).
    let c = Peer::new(ex.addr);
    for bad in [
        "/join",
        "/join  ",
        "/join two words",
        &format!("/join {}", "n".repeat(33)),
    ] {
        c.send(&padded(bad));
        assert_eq!(c.hear(), "ERR name must be 1 to 32 visible characters");
    }
    assert_eq!(c.join("bob"), "ERR name bob is taken");
    assert_eq!(c.join(&"é".repeat(32)), "OK");
    // Rejoining renames, without a cookie: the address is proven.
    c.say("/join carol");
    c.expect("OK");
    c.say("hi all");
    a.expect("[carol] hi all");
    b.expect("[carol] hi all");
}

/// An enrolled peer's mistakes get an ERR; an unenrolled sender gets no answer at all but
/// to `/join` (tests/adversarial_chat.rs: never more bytes than it sent).
#[test]
fn bad_input_gets_err_and_strangers_get_nothing() {
    let ex = server(&[]);
    let u = Peer::joined(ex.addr, "u");
    u.say("/shout x");
    u.expect("ERR unknown command /shout");
    u.send(b"\xff\xfe");
    u.expect("ERR invalid UTF-8");
    u.send(b"esc \x1b[0m");
    u.expect("ERR control characters are not allowed");
    u.send(b"two\nlines");
    u.expect("ERR control characters are not allowed");
    u.say("/leave");
    u.expect("OK");
    for stranger in [
        &b"hello?"[..],
        b"/leave",
        b"/shout x",
        b"\xff\xfe",
        b"/join u",
    ] {
        u.send(stranger);
    }
    // The first answer u gets is to this: nothing before it was answered.
    assert!(u.cookie("u").len() == 16);
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
    // bob in order: the next thing bob hears must be the cookie, not "two".
    b.say("still there?"); // not enrolled: no answer
    let _ = b.cookie("bob");
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
    // The timer forgot it: it must join again (its next datagram is the cookie, no ping).
    // The talker, who kept talking, did not expire.
    silent.say("anyone?");
    assert_eq!(silent.join("silent"), "OK");
    talker.say("welcome back");
    silent.expect("[talker] welcome back");
}

/// `udp_chat --connect ADDR` with piped stdin and stdout; killed when dropped.
struct Client {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// Its stdout lines; disconnected at EOF (when it exits).
    lines: mpsc::Receiver<String>,
    /// The address it sends from.
    addr: SocketAddr,
}

impl Client {
    fn start(server: SocketAddr) -> Client {
        let mut child = Command::new(example_path("udp_chat"))
            .args(["--connect", &server.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        // Its log, on stderr, says which address it talks from.
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = support::recv_until(&log, |l: &String| l.contains("client on "));
        let addr = line
            .split("client on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            lines,
            addr,
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

/// The client prints only what its server sends: a datagram from anyone else (a forged
/// `[admin]` line) is ignored, and control characters (an escape sequence, a carriage
/// return) and bidi overrides are shown escaped, so they cannot drive the terminal.
#[test]
fn client_mode_hears_only_its_server_and_escapes_controls() {
    // A stand-in server: a plain socket the client is pointed at.
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut client = Client::start(server.local_addr().unwrap());
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .send_to(b"[admin] send me your password", client.addr)
        .unwrap();
    // Datagrams on loopback are queued in the order sent: the stranger's comes first.
    server
        .send_to(
            "[bob] \x1b[2J\x1b]0;owned\x07red\rX \u{202E}txet\n".as_bytes(),
            client.addr,
        )
        .unwrap();
    client.expect("[bob] \\u{1b}[2J\\u{1b}]0;owned\\u{7}red\\u{d}X \\u{202e}txet");
    // A /join typed goes out padded, and the cookie that comes back is returned for it.
    client.type_line("/join carol");
    let mut buf = [0; 256];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(from, client.addr);
    assert_eq!(buf[..n].len(), 64);
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim_end(), "/join carol");
    server
        .send_to(b"COOKIE 0123456789abcdef\n", client.addr)
        .unwrap();
    let (n, _) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"/join carol 0123456789abcdef");
    server.send_to(b"OK\n", client.addr).unwrap();
    client.expect("OK"); // the cookie was not printed
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
