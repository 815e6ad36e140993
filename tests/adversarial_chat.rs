//! Issue 12: the chat, udp_chat and echo examples against hostile clients, as real processes.
//!
//! - chat slowloris: a connection that never completes a line, or stops mid-line, is closed
//!   after `--login-timeout` / `--line-timeout`; `--max-per-ip` caps one address; under a
//!   descriptor limit of 64, silent connections no longer lock new users out.
//! - chat flood: one user bursting 300 KB of short lines is paced (reading from it pauses
//!   while a reader is congested), and no reader, fast or merely slow, is cut off.
//! - chat join storm: 2,000 connects are announced in batches, not one line to everyone per
//!   join; two users keep talking with bounded latency meanwhile; server CPU is measured.
//! - chat nicks: format, default-ignorable and bidi-control characters are refused.
//! - UDP reflection: a datagram forged (raw socket, root only: skipped otherwise) with echo's
//!   own address, or from udp_chat to echo, does not start an endless exchange; echo does not
//!   answer well-known ports.
//! - udp_chat: a `/join` must return the cookie of its welcome before it is enrolled, no
//!   unproven sender is answered with more bytes than it sent, peers are capped per address
//!   and in total.
//!
//! Timing is measured, never used to synchronise: every wait is on a socket or channel with
//! a deadline; the CPU windows after a forged datagram are measurements.

mod support;

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::chat_user::User;
use support::*;

/// Builds the examples these tests start, once per test binary.
fn build() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| support::build_examples(&["chat", "echo", "udp_chat"]));
}

fn chat(args: &[&str]) -> Example {
    build();
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    start_example("chat", &all)
}

/// CPU seconds (user + system, all threads) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// A TCP connection from a chosen loopback source address (127.0.0.0/8 is all ours).
fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

/// Reads what is left until EOF: the lines the server sent before closing.
fn rest_until_eof(u: &mut User) -> Vec<String> {
    let mut rest = String::new();
    u.r.read_to_string(&mut rest)
        .expect("EOF within the deadline");
    rest.lines().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// chat: slowloris.

/// A connection that says nothing is closed after the login timeout, with a reason; one that
/// registered and then stops mid-line is closed after the line timeout; a registered user
/// who is merely quiet stays.
#[test]
fn chat_silent_and_unfinished_connections_time_out() {
    let ex = chat(&["--login-timeout", "0.5", "--line-timeout", "0.5"]);
    let mut bob = User::join(ex.addr, "bob");
    // Silent from the start: never completes a line.
    let started = Instant::now();
    let (mut silent, _) = User::connect(ex.addr);
    let rest = rest_until_eof(&mut silent);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert_eq!(
        rest.last().map(String::as_str),
        Some("ERR timed out: no line within 0.5 s")
    );
    // Registered, then drips a line that never ends.
    let mut drip = User::join(ex.addr, "drip");
    drip.send(b"this line never e");
    let started = Instant::now();
    let rest = rest_until_eof(&mut drip);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert_eq!(
        rest.last().map(String::as_str),
        Some("ERR timed out: unfinished line for 0.5 s")
    );
    // Bob registered before both and said nothing since: still here.
    bob.say("/who");
    bob.skip_until("* users: bob");
}

/// `--max-per-ip 3`: the fourth connection from 127.0.0.1 is refused with a line, one from
/// 127.0.0.2 is not, and a slot freed by a leaving user can be taken again.
#[test]
fn chat_caps_connections_per_address() {
    let ex = chat(&["--max-per-ip", "3"]);
    let mut a = User::join(ex.addr, "a");
    let (_b, _) = User::connect(ex.addr);
    let (c, _) = User::connect(ex.addr);
    let mut fourth = User::from_stream(TcpStream::connect(ex.addr).unwrap());
    assert_eq!(
        rest_until_eof(&mut fourth),
        ["ERR too many connections from your address"]
    );
    let mut other = User::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 2), ex.addr));
    assert!(other.line().starts_with("* welcome, you are guest"));
    drop(c);
    a.skip_until("* guest3 left");
    let (_again, welcome) = User::connect(ex.addr);
    assert!(welcome.starts_with("* welcome, you are guest"), "{welcome}");
}

/// The scenario: at a descriptor limit of 64, 80 silent connections fill the
/// server's table; a real user who connects after them is welcomed once the silent ones
/// time out (here after 1 s), instead of never.
#[test]
fn chat_silent_connections_do_not_lock_out_new_users() {
    build();
    let chat = example_path("chat");
    let script = format!(
        "ulimit -n 64; exec {} --addr 127.0.0.1:0 --login-timeout 1 --max-per-ip 0",
        chat.display()
    );
    let ex = start_example_with(std::process::Command::new("sh").args(["-c", &script]));
    let silent: Vec<TcpStream> = (0..80).map(|_| client(ex.addr)).collect();
    let started = Instant::now();
    let mut user = User::from_stream(TcpStream::connect(ex.addr).unwrap());
    let welcome = user.line();
    assert!(welcome.starts_with("* welcome, you are guest"), "{welcome}");
    user.say("/nick latecomer");
    user.skip_until("* you are now latecomer");
    eprintln!(
        "chat: a user behind 80 silent connections at ulimit -n 64 was welcomed after {:?}",
        started.elapsed()
    );
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// chat: flood.

/// One user bursts 300 KB of short lines into a room of 8 readers and one that reads slowly
/// (a 4 KiB receive buffer, a 2 ms pause every 32 lines). The flooder is paced: every reader gets
/// every line, in order, and nobody is cut off; the flooder still gets answers after.
#[test]
fn chat_flood_is_paced_and_no_reader_is_cut_off() {
    flood(&[]);
}

/// The same over two event loops (`--threads 2`): readers on the other loop than the
/// flooder's are congested too, and the flooder's loop is told (a post) to pace it.
#[test]
fn chat_flood_across_two_loops_is_paced() {
    flood(&["--threads", "2"]);
}

fn flood(args: &[&str]) {
    const FAST: usize = 8;
    const BYTES: usize = 300_000;
    let line = |i: usize| format!("f{i:06}");
    let lines = BYTES / (line(0).len() + 1);
    let ex = chat(args);
    let mut readers: Vec<(String, User)> = (0..FAST)
        .map(|i| (format!("r{i}"), User::join(ex.addr, &format!("r{i}"))))
        .collect();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&ex.addr.into()).unwrap();
    let mut slow = User::from_stream(sock.into());
    slow.line();
    slow.say("/nick slow");
    slow.skip_until("* you are now slow");
    readers.push(("slow".into(), slow));
    let mut flooder = User::join(ex.addr, "flooder");

    let threads: Vec<_> = readers
        .into_iter()
        .map(|(name, u)| {
            std::thread::spawn(move || {
                let slow = name == "slow";
                let mut r = u.r;
                let mut i = 0;
                while i < lines {
                    let mut got = String::new();
                    match r.read_line(&mut got) {
                        Ok(0) => panic!("{name} was cut off after {i} of {lines} lines"),
                        Ok(_) => {}
                        Err(e) => panic!("{name}: no line within {DEADLINE:?} after {i}: {e}"),
                    }
                    if got.starts_with("* ") {
                        continue;
                    }
                    assert_eq!(got, format!("[flooder] {}\n", line(i)), "{name}");
                    i += 1;
                    if slow && i % 32 == 0 {
                        std::thread::sleep(Duration::from_millis(2)); // a slow reader, not a wait
                    }
                }
                let mut after = String::new();
                r.read_line(&mut after).unwrap();
                assert_eq!(after, "[flooder] done\n", "{name}");
                (name, u.w)
            })
        })
        .collect();
    let mut burst = Vec::with_capacity(BYTES);
    for i in 0..lines {
        burst.extend_from_slice(format!("{}\n", line(i)).as_bytes());
    }
    let started = Instant::now();
    let writer = flooder.w.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        let mut w = writer;
        w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        w.write_all(&burst).expect("the flooder's burst");
        started.elapsed()
    });
    let burst_took = sent.join().expect("flooder");
    flooder.say("done");
    // Their write halves stay open: the readers are still in the room.
    let _still_here: Vec<TcpStream> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| panic!("a reader failed")).1)
        .collect();
    let all_took = started.elapsed();
    flooder.say("/who");
    flooder.skip_until("* users: flooder r0 r1 r2 r3 r4 r5 r6 r7 slow");
    eprintln!(
        "chat {args:?} flood: {BYTES} bytes in {lines} lines written in {burst_took:?}, \
         delivered whole to {} readers (one slow) in {all_took:?}; nobody cut off",
        FAST + 1
    );
}

// ---------------------------------------------------------------------------------------------
// chat: join storm.

/// 2,000 clients connect while alice and bob talk. Joins are announced in batches (bob counts
/// every join, summed over the announcements), each ping reaches bob within a bound, and the
/// server's CPU for the storm is reported.
#[test]
fn chat_join_storm_is_batched_and_talk_goes_on() {
    const JOINERS: usize = 2000;
    let ex = chat(&["--max-per-ip", "0"]);
    let pid = ex.child.id();
    let mut alice = User::join(ex.addr, "alice");
    let mut bob = User::join(ex.addr, "bob");
    alice.skip_until("* guest2 is now bob");
    let cpu_before = cpu_secs(pid);
    let (done_tx, done_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let addr = ex.addr;
    let storm = std::thread::spawn(move || {
        let started = Instant::now();
        let joiners: Vec<TcpStream> = (0..JOINERS)
            .map(|i| {
                TcpStream::connect(addr).unwrap_or_else(|e| panic!("joiner {i}: connect: {e}"))
            })
            .collect();
        done_tx.send(started.elapsed()).unwrap();
        let _ = release_rx.recv_timeout(4 * DEADLINE);
        drop(joiners);
    });
    let started = Instant::now();
    let (mut joined, mut pings, mut worst) = (0usize, 0usize, Duration::ZERO);
    let mut connect_took = None;
    let mut announcements = 0;
    while joined < JOINERS || connect_took.is_none() {
        assert!(
            started.elapsed() < 4 * DEADLINE,
            "storm not over: {joined} joins announced"
        );
        if connect_took.is_none() {
            connect_took = done_rx.try_recv().ok();
        }
        pings += 1;
        let sent = Instant::now();
        alice.say(&format!("ping {pings}"));
        loop {
            let line = bob.line();
            if line == format!("[alice] ping {pings}") {
                break;
            }
            if let Some(n) = joins_in(&line) {
                joined += n;
                announcements += 1;
            } else {
                assert!(line.starts_with("* "), "{line}");
            }
        }
        worst = worst.max(sent.elapsed());
    }
    let cpu = cpu_secs(pid) - cpu_before;
    let took = started.elapsed();
    release_tx.send(()).unwrap();
    storm.join().unwrap();
    assert_eq!(joined, JOINERS);
    eprintln!(
        "chat join storm: {JOINERS} connects in {:?}, announced in {announcements} lines; \
         {pings} pings, worst {worst:?}; server CPU {cpu:.2} s over {took:?}",
        connect_took.unwrap()
    );
    assert!(worst < Duration::from_secs(2), "a ping took {worst:?}");
    assert!(
        announcements < JOINERS / 10,
        "{announcements} announcements for {JOINERS} joins"
    );
}

/// How many joins an announcement line reports: "* NAME joined" or "* N users joined".
fn joins_in(line: &str) -> Option<usize> {
    let what = line.strip_prefix("* ")?.strip_suffix(" joined")?;
    match what.strip_suffix(" users") {
        Some(n) => n.parse().ok(),
        None => Some(1),
    }
}

// ---------------------------------------------------------------------------------------------
// chat: nicks.

/// Invisible and look-alike nicks are refused: zero-width and word-joiner format characters,
/// the byte-order mark, the Hangul filler (default-ignorable), bidi overrides and isolates,
/// and `alice` followed by a zero-width space while alice is here. Ordinary Unicode nicks
/// still pass.
#[test]
fn chat_invisible_and_lookalike_nicks_are_refused() {
    let ex = chat(&[]);
    let mut alice = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    alice.skip_until("* guest2 is now bob");
    for bad in [
        "\u{200B}",
        "\u{2060}",
        "\u{FEFF}",
        "\u{3164}",
        "\u{202E}ecila",
        "alice\u{200B}",
        "al\u{200D}ice",
        "\u{2066}x\u{2069}",
        "a\u{180E}b",
        "a\u{034F}b",
        "a\u{FE0F}",
        "\u{E0061}bc",
        "a\u{AD}b",
        "a\u{061C}",
        "x\u{E000}",
    ] {
        b.say(&format!("/nick {bad}"));
        assert_eq!(
            b.expect_err(),
            "ERR nick must be 1 to 32 visible characters",
            "{bad:?} was accepted"
        );
    }
    for good in ["ünïcödé!", "小明", "🦀crab", "Ελένη", "x-y_z.1"] {
        b.say(&format!("/nick {good}"));
        b.expect(&format!("* you are now {good}"));
    }
    b.say("/who");
    b.expect("* users: alice x-y_z.1");
}

// ---------------------------------------------------------------------------------------------
// UDP: forged sources (raw sockets: root only).

/// Sends one UDP datagram with a forged source address through a raw socket; `None` (with a
/// message) if raw sockets are not allowed here (not root).
fn forge(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<()> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let raw = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    );
    let raw = match raw {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            eprintln!("skipped: raw sockets need root ({e})");
            return None;
        }
        Err(e) => panic!("raw socket: {e}"),
    };
    raw.send_to(&udp_packet(src, dst, payload), &SocketAddr::V4(dst).into())
        .expect("send the forged datagram");
    Some(())
}

/// An IPv4 header (IPPROTO_RAW implies IP_HDRINCL; Linux fills in the checksum) and a UDP
/// header without checksum (0: none, allowed over IPv4), then the payload.
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + 8 + payload.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend(total.to_be_bytes());
    p.extend([0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL 64, UDP, checksum (kernel's)
    p.extend(src.ip().octets());
    p.extend(dst.ip().octets());
    p.extend(src.port().to_be_bytes());
    p.extend(dst.port().to_be_bytes());
    p.extend((total - 20).to_be_bytes());
    p.extend([0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A UDP socket on loopback with the support deadline.
fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `msg` to an echo server and expects it back: everything sent to it before has been
/// handled (one socket, handled in order).
fn echo_probe(echo: SocketAddr) {
    let probe = udp();
    probe.send_to(b"probe", echo).unwrap();
    let mut buf = [0; 64];
    let (n, from) = probe.recv_from(&mut buf).expect("probe echoed");
    assert_eq!((&buf[..n], from), (&b"probe"[..], echo));
}

/// CPU the processes use over `window`, measured after everything above was handled.
fn cpu_over(pids: &[u32], window: Duration) -> f64 {
    let before: f64 = pids.iter().map(|&p| cpu_secs(p)).sum();
    std::thread::sleep(window); // a measurement window, not a wait for anything
    pids.iter().map(|&p| cpu_secs(p)).sum::<f64>() - before
}

/// A datagram forged with echo's own address as its source: echo must not answer itself
/// forever. After a probe round trip, echo is idle, and it says it dropped one.
#[test]
fn echo_ignores_a_datagram_forged_from_its_own_address() {
    build();
    let mut ex = start_example("echo", &["--addr", "127.0.0.1:0"]);
    if forge(ex.addr, ex.addr, b"loop forever").is_none() {
        return;
    }
    echo_probe(ex.addr);
    let cpu = cpu_over(&[ex.child.id()], Duration::from_millis(500));
    recv_until(&ex.log, |l: &String| l.contains("dropped 1 datagram"));
    eprintln!("echo: {cpu:.2} CPU s in the 0.5 s after a datagram from its own address");
    assert!(cpu < 0.2, "echo is busy ({cpu:.2} CPU s in 0.5 s)");
    let _ = &mut ex;
}

/// echo never answers a source on a well-known port (below 1024: echo, chargen, DNS, NTP
/// live there; clients use ephemeral ports), as BSD inetd does. Needs a port below 1024
/// (root); skipped otherwise.
#[test]
fn echo_does_not_answer_well_known_ports() {
    build();
    let ex = start_example("echo", &["--addr", "127.0.0.1:0"]);
    let Some(low) = (900..1024).find_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok()) else {
        eprintln!("skipped: cannot bind a port below 1024 (not root)");
        return;
    };
    low.set_nonblocking(true).unwrap();
    low.send_to(b"from a well-known port", ex.addr).unwrap();
    echo_probe(ex.addr); // handled after the first, and answered: the first was not
    let mut buf = [0; 64];
    let got = low.recv_from(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "echo answered port {}: {got:?}",
        low.local_addr().unwrap().port()
    );
}

/// One datagram forged from udp_chat's address to echo: echo echoes it to udp_chat, which
/// must not answer an unproven sender's text, so the exchange stops at once. Both idle.
#[test]
fn echo_and_udp_chat_do_not_answer_each_other_forever() {
    build();
    let echo = start_example("echo", &["--addr", "127.0.0.1:0"]);
    let chat = start_example("udp_chat", &["--addr", "127.0.0.1:0"]);
    for payload in [&b"hello?"[..], b"/leave", b"/nope", b"\xff\xfe"] {
        if forge(chat.addr, echo.addr, payload).is_none() {
            return;
        }
    }
    echo_probe(echo.addr);
    // And udp_chat has handled what echo sent it: a join answered means it is past them.
    let p = udp();
    p.send_to(&padded("/join probe"), chat.addr).unwrap();
    let mut buf = [0; 256];
    let (n, _) = p.recv_from(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"COOKIE "));
    let cpu = cpu_over(
        &[echo.child.id(), chat.child.id()],
        Duration::from_millis(500),
    );
    eprintln!("echo + udp_chat: {cpu:.2} CPU s in the 0.5 s after the forged datagrams");
    assert!(cpu < 0.2, "they are busy ({cpu:.2} CPU s in 0.5 s)");
}

/// Two echo servers on high ports (127.0.0.1 and 127.0.0.2) and one datagram forged from
/// the second to the first: no rule tells this loop from clients, but `--udp-rate 50` bounds
/// it to 50 datagrams a second per source IP: it is throttled (logged) and both stay idle;
/// a client from another IP is still answered.
#[test]
fn echo_rate_limit_bounds_a_loop_between_two_echo_servers() {
    build();
    let one = start_example("echo", &["--addr", "127.0.0.1:0", "--udp-rate", "50"]);
    let two = start_example("echo", &["--addr", "127.0.0.2:0", "--udp-rate", "50"]);
    if forge(two.addr, one.addr, b"ping-pong").is_none() {
        return;
    }
    recv_until(&one.log, |l: &String| l.contains("over the rate limit"));
    let probe = Peer::bound(one.addr, Ipv4Addr::new(127, 0, 0, 3));
    probe.send(b"probe");
    assert_eq!(probe.hear(), b"probe");
    let cpu = cpu_over(
        &[one.child.id(), two.child.id()],
        Duration::from_millis(500),
    );
    eprintln!("echo <-> echo under --udp-rate 50: {cpu:.2} CPU s in 0.5 s");
    assert!(cpu < 0.2, "they are busy ({cpu:.2} CPU s in 0.5 s)");
}

/// `--udp-rate 40`: 120 datagrams sent at once from one socket get at most 40 echoes (and a
/// little refill), while another source IP is answered. No raw socket needed.
#[test]
fn echo_udp_rate_limit_per_source() {
    build();
    let ex = start_example("echo", &["--addr", "127.0.0.1:0", "--udp-rate", "40"]);
    let burst = Peer::new(ex.addr);
    for i in 0..120u32 {
        burst.send(&i.to_be_bytes());
    }
    let other = Peer::bound(ex.addr, Ipv4Addr::new(127, 0, 0, 2));
    other.send(b"marker");
    assert_eq!(other.hear(), b"marker"); // the burst was handled before this
    let echoed = burst.drain().len();
    eprintln!("echo --udp-rate 40: {echoed} of 120 datagrams echoed");
    assert!((40..=45).contains(&echoed), "{echoed} echoed");
}

// ---------------------------------------------------------------------------------------------
// udp_chat: proof of address, amplification, caps.

/// `/join` requests shorter than this are not answered with a cookie (anti-amplification).
const JOIN_PAD: usize = 64;

fn padded(line: &str) -> Vec<u8> {
    let mut v = line.as_bytes().to_vec();
    v.resize(v.len().max(JOIN_PAD), b' ');
    v
}

struct Peer {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Peer {
    fn new(server: SocketAddr) -> Peer {
        Peer::bound(server, Ipv4Addr::LOCALHOST)
    }

    fn bound(server: SocketAddr, ip: Ipv4Addr) -> Peer {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        Peer { sock, server }
    }

    fn send(&self, data: &[u8]) {
        self.sock.send_to(data, self.server).unwrap();
    }

    fn hear(&self) -> Vec<u8> {
        let mut buf = [0; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).expect("a datagram");
        assert_eq!(from, self.server);
        buf[..n].to_vec()
    }

    /// The datagrams waiting now, without waiting for more.
    fn drain(&self) -> Vec<Vec<u8>> {
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = [0; 65536];
        let mut got = Vec::new();
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, self.server);
                    got.push(buf[..n].to_vec());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        self.sock.set_nonblocking(false).unwrap();
        got
    }

    fn hear_text(&self) -> String {
        let d = self.hear();
        String::from_utf8(d).unwrap().trim_end().to_string()
    }

    /// The cookie from the answer to a padded `/join NAME`.
    fn cookie(&self, name: &str) -> String {
        self.send(&padded(&format!("/join {name}")));
        let answer = self.hear_text();
        answer
            .strip_prefix("COOKIE ")
            .unwrap_or_else(|| panic!("no cookie: {answer:?}"))
            .to_string()
    }

    /// Joins with the cookie; returns the answer ("OK" or an ERR).
    fn join(&self, name: &str) -> String {
        let cookie = self.cookie(name);
        self.send(format!("/join {name} {cookie}").as_bytes());
        self.hear_text()
    }

    fn joined(server: SocketAddr, name: &str) -> Peer {
        let p = Peer::new(server);
        assert_eq!(p.join(name), "OK");
        p
    }
}

fn udp_chat(args: &[&str]) -> Example {
    build();
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    start_example("udp_chat", &all)
}

/// A `/join` whose cookie never comes back enrols nobody: the room's lines do not reach it.
/// A wrong or another address's cookie does not work either.
#[test]
fn udp_chat_join_needs_the_cookie_back() {
    let ex = udp_chat(&[]);
    let alice = Peer::joined(ex.addr, "alice");
    let bob = Peer::joined(ex.addr, "bob");
    let victim = Peer::new(ex.addr);
    let _ = victim.cookie("victim"); // the forger never sees this
    let thief = Peer::new(ex.addr);
    let stolen = thief.cookie("thief");
    victim.send(format!("/join victim {stolen}").as_bytes()); // another address's cookie
    assert_eq!(victim.hear_text(), "ERR bad cookie");
    victim.send(b"/join victim 0000000000000000");
    assert_eq!(victim.hear_text(), "ERR bad cookie");
    alice.send(b"hello room");
    assert_eq!(bob.hear_text(), "[alice] hello room");
    // Had the victim been enrolled, "[alice] hello room" would come before this.
    assert_eq!(victim.join("victim"), "OK");
    alice.send(b"now you");
    assert_eq!(victim.hear_text(), "[alice] now you");
}

/// No datagram from an unproven sender is answered with more bytes than it carried: text,
/// commands, bad UTF-8, short and long joins, bad cookies. After each, a marker peer's join
/// is answered: the server has handled the input by then, so what the sender got is all.
#[test]
fn udp_chat_never_amplifies_to_an_unproven_sender() {
    let ex = udp_chat(&[]);
    let _alice = Peer::joined(ex.addr, "alice");
    let p = Peer::new(ex.addr);
    let marker = Peer::new(ex.addr);
    let inputs: Vec<Vec<u8>> = vec![
        b"hello?".to_vec(),
        b"/leave".to_vec(),
        b"/shout x".to_vec(),
        b"\xff\xfe".to_vec(),
        b"esc \x1b[0m".to_vec(),
        b"".to_vec(),
        b"/join a".to_vec(),
        b"/join alice\n".to_vec(),
        b"/join".to_vec(),
        padded("/join"),
        padded("/join two words"),
        padded("/join alice"),
        b"/join x 0123456789abcdef".to_vec(),
        vec![b'x'; 1400],
    ];
    let (mut answered, mut bytes_in, mut bytes_out) = (0, 0, 0);
    for input in &inputs {
        p.send(input);
        let _ = marker.cookie("marker");
        bytes_in += input.len();
        for d in p.drain() {
            bytes_out += d.len();
            answered += 1;
            assert!(
                d.len() <= input.len(),
                "{:?} ({} bytes) answered with {:?} ({} bytes)",
                String::from_utf8_lossy(input),
                input.len(),
                String::from_utf8_lossy(&d),
                d.len()
            );
        }
    }
    eprintln!(
        "udp_chat: {} unproven datagrams ({bytes_in} bytes), {answered} answered with \
         {bytes_out} bytes",
        inputs.len()
    );
    assert!(bytes_out <= bytes_in);
}

/// `--max-per-ip 3 --max-peers 5`: a fourth peer from 127.0.0.1 is refused; peers from other
/// addresses fill the room to 5, then the room is full; a leave makes room.
#[test]
fn udp_chat_caps_peers_per_address_and_in_total() {
    let ex = udp_chat(&["--max-per-ip", "3", "--max-peers", "5"]);
    let local: Vec<Peer> = (0..3)
        .map(|i| Peer::joined(ex.addr, &format!("l{i}")))
        .collect();
    let fourth = Peer::new(ex.addr);
    assert_eq!(fourth.join("l3"), "ERR too many peers from your address");
    let two = Peer::bound(ex.addr, Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(two.join("two"), "OK");
    let three = Peer::bound(ex.addr, Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(three.join("three"), "OK");
    let four = Peer::bound(ex.addr, Ipv4Addr::new(127, 0, 0, 4));
    assert_eq!(four.join("four"), "ERR the room is full");
    local[0].send(b"/leave");
    assert_eq!(local[0].hear_text(), "OK");
    assert_eq!(four.join("four"), "OK");
    assert_eq!(fourth.join("l3"), "ERR the room is full");
}

/// A forged `/join` (raw socket) with a victim's address: the victim gets only the cookie
/// answer, no larger than the forged request, and is not enrolled (root only).
#[test]
fn udp_chat_forged_join_does_not_enrol_the_victim() {
    let ex = udp_chat(&[]);
    let alice = Peer::joined(ex.addr, "alice");
    let bob = Peer::joined(ex.addr, "bob");
    let marker = Peer::new(ex.addr);
    let victim = Peer::new(ex.addr);
    let request = padded("/join victim");
    if forge(victim.sock.local_addr().unwrap(), ex.addr, &request).is_none() {
        return;
    }
    let _ = marker.cookie("marker"); // the forged join was handled before this
    alice.send(b"to the room");
    assert_eq!(bob.hear_text(), "[alice] to the room");
    let _ = marker.cookie("marker"); // and alice's line was sent to everyone before this
    let heard = victim.drain();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(
        heard[0].starts_with(b"COOKIE ") && heard[0].len() <= request.len(),
        "{heard:?}"
    );
}
