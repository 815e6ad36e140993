//! Handler API v2, seen from outside the loop over loopback: per-connection state, kept
//! input, connection timers, `defer`, typed send results, `broadcast`, shutdown refusing new
//! sockets, config validation and delays too long to represent.
//!
//! Handlers report to the test over `mpsc` channels; every wait has the support deadline,
//! and nothing sleeps to synchronise.

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler, SendError, TimerId};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};
use support::{
    DEADLINE, Running, client, localhost, random_bytes, recv, recv_until, round_trip, spawn,
};

/// `CloseReason` without the `io::Error` (which is not `Clone`/`PartialEq`).
#[derive(Clone, Debug, PartialEq)]
enum Why {
    PeerClosed,
    Local,
    Aborted,
    Error(io::ErrorKind),
    IdleTimeout,
    OutputLimit,
    InputLimit,
    SendTimeout,
    ConnectFailed(io::ErrorKind),
    ConnectTimeout,
    Shutdown,
    Panicked,
    Other,
}

impl From<&CloseReason> for Why {
    fn from(r: &CloseReason) -> Why {
        match r {
            CloseReason::PeerClosed => Why::PeerClosed,
            CloseReason::Local => Why::Local,
            CloseReason::Aborted => Why::Aborted,
            CloseReason::Error(e) => Why::Error(e.kind()),
            CloseReason::IdleTimeout => Why::IdleTimeout,
            CloseReason::OutputLimit => Why::OutputLimit,
            CloseReason::InputLimit => Why::InputLimit,
            CloseReason::SendTimeout => Why::SendTimeout,
            CloseReason::ConnectFailed(e) => Why::ConnectFailed(e.kind()),
            CloseReason::ConnectTimeout => Why::ConnectTimeout,
            CloseReason::Shutdown => Why::Shutdown,
            CloseReason::Panicked => Why::Panicked,
            _ => Why::Other,
        }
    }
}

/// A loop with a listener on 127.0.0.1:0, running on its own thread.
fn start<H: Handler + Send + 'static>(h: H, config: Config) -> (Running<H>, SocketAddr)
where
    H::Conn: Send,
{
    let mut el = EventLoop::with_config(h, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr)
}

/// Runs `f` on the loop thread and waits for what it returns.
fn on_loop<H, T>(
    running: &Running<H>,
    f: impl FnOnce(&mut H, &mut Context<'_, H>) -> T + Send + 'static,
) -> T
where
    H: Handler + Send + 'static,
    H::Conn: Send,
    T: Send + 'static,
{
    let (tx, rx) = channel();
    running
        .handle
        .post(move |h, cx| {
            let _ = tx.send(f(h, cx));
        })
        .expect("loop alive");
    recv(&rx)
}

/// Runs `f` on a thread and waits for its result with the test deadline, so a call that
/// hangs fails the test instead of hanging it.
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    recv(&rx)
}

/// A TCP client whose receive buffer is small, so what it is sent stays queued in the loop.
fn small_rcvbuf_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(8 * 1024).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// An address nobody listens on (a listener bound and closed at once).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Reads until EOF or an error; returns the bytes and the error kind, if any.
fn read_until_end(c: &mut TcpStream) -> (Vec<u8>, Option<io::ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Per-connection state.

/// What `Lives` keeps per connection.
#[derive(Clone, Debug, Default, PartialEq)]
struct Life {
    /// Given in `on_open` (0 before).
    serial: u64,
    /// The callbacks this state was lent to, in order.
    log: Vec<&'static str>,
    bytes: usize,
}

#[derive(Debug)]
enum LifeEv {
    Open {
        conn: ConnId,
        was_default: bool,
        serial: u64,
        peer: SocketAddr,
    },
    Data {
        conn: ConnId,
        serial: u64,
    },
    Close {
        conn: ConnId,
        state: Life,
        why: Why,
    },
}

struct Lives {
    tx: Sender<LifeEv>,
    serial: u64,
    /// `on_close` calls per connection (a record that outlives the connections).
    closes: HashMap<ConnId, u32>,
}

impl Handler for Lives {
    type Conn = Life;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, life: &mut Life) {
        let was_default = *life == Life::default();
        self.serial += 1;
        life.serial = self.serial;
        life.log.push("open");
        let peer = cx.peer_addr(conn).unwrap().as_inet().unwrap();
        let _ = self.tx.send(LifeEv::Open {
            conn,
            was_default,
            serial: life.serial,
            peer,
        });
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        life: &mut Life,
        data: &[u8],
    ) -> usize {
        life.log.push("data");
        life.bytes += data.len();
        let _ = self.tx.send(LifeEv::Data {
            conn,
            serial: life.serial,
        });
        match data {
            b"close" => cx.close(conn),
            b"abort" => cx.abort(conn),
            _ => {
                let _ = cx.send(conn, data);
            }
        }
        data.len()
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        mut life: Life,
        reason: &CloseReason,
    ) {
        *self.closes.entry(conn).or_default() += 1;
        life.log.push("close");
        let _ = self.tx.send(LifeEv::Close {
            conn,
            state: life,
            why: reason.into(),
        });
    }
}

/// 20 accepted connections, closed by the peer, locally, by abort and by the idle timeout:
/// each state starts `Default`, is the same value in `on_open`, `on_data` and `on_close`,
/// and comes back by value in exactly one `on_close`.
#[test]
fn accepted_state_lives_from_open_to_close_and_is_returned_once() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::from_secs(1));
    let h = Lives {
        tx,
        serial: 0,
        closes: HashMap::new(),
    };
    let (server, addr) = start(h, config);

    // (client's address, how it ends, bytes it sent)
    let mut plan: Vec<(SocketAddr, Why, usize)> = Vec::new();
    let mut keep = Vec::new();
    // Idle ones first: they are closed by the loop while the others do their thing.
    for _ in 0..5 {
        let mut c = client(addr);
        assert_eq!(round_trip(&mut c, b"hi"), b"hi");
        plan.push((c.local_addr().unwrap(), Why::IdleTimeout, 2));
        keep.push(c);
    }
    for _ in 0..5 {
        let mut c = client(addr);
        assert_eq!(round_trip(&mut c, b"hello"), b"hello");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_until_end(&mut c), (vec![], None), "flushed, then EOF");
        plan.push((c.local_addr().unwrap(), Why::PeerClosed, 5));
    }
    for _ in 0..5 {
        let mut c = client(addr);
        c.write_all(b"close").unwrap();
        assert_eq!(
            read_until_end(&mut c),
            (vec![], None),
            "a local close is EOF"
        );
        plan.push((c.local_addr().unwrap(), Why::Local, 5));
    }
    for _ in 0..5 {
        let mut c = client(addr);
        c.write_all(b"abort").unwrap();
        let (got, err) = read_until_end(&mut c);
        assert!(got.is_empty());
        assert_eq!(
            err,
            Some(io::ErrorKind::ConnectionReset),
            "an abort is a reset"
        );
        plan.push((c.local_addr().unwrap(), Why::Aborted, 5));
    }

    let mut opens = HashMap::new(); // peer -> (conn, serial)
    let mut data: HashMap<ConnId, Vec<u64>> = HashMap::new();
    let mut closes: HashMap<ConnId, Vec<(Life, Why)>> = HashMap::new();
    let mut closed = 0;
    while closed < 20 {
        match recv(&rx) {
            LifeEv::Open {
                conn,
                was_default,
                serial,
                peer,
            } => {
                assert!(was_default, "{conn}: the state starts as Default");
                assert!(opens.insert(peer, (conn, serial)).is_none());
            }
            LifeEv::Data { conn, serial } => data.entry(conn).or_default().push(serial),
            LifeEv::Close { conn, state, why } => {
                closes.entry(conn).or_default().push((state, why));
                closed += 1;
            }
        }
    }
    for (peer, why, bytes) in &plan {
        let (conn, serial) = opens[peer];
        let [(state, got_why)] = &closes[&conn][..] else {
            panic!("{conn}: on_close ran {} times", closes[&conn].len());
        };
        assert_eq!(got_why, why, "{conn}");
        assert_eq!(
            state.serial, serial,
            "{conn}: on_close got the state on_open filled"
        );
        assert!(
            data[&conn].iter().all(|&s| s == serial),
            "{conn}: on_data saw another state: {:?}",
            data[&conn]
        );
        let mut log = vec!["open"];
        log.extend(std::iter::repeat_n("data", data[&conn].len()));
        log.push("close");
        assert_eq!(state.log, log, "{conn}");
        assert_eq!(state.bytes, *bytes, "{conn}");
    }
    let el = server.stop();
    let h = el.handler();
    assert_eq!(h.closes.len(), 20);
    assert!(h.closes.values().all(|&n| n == 1), "{:?}", h.closes);
    let c = &el.stats().closed;
    assert_eq!(
        (c.idle_timeout, c.peer_closed, c.local, c.aborted),
        (5, 5, 5, 5),
        "{c:?}"
    );
    assert_eq!(el.stats().connections_open, 0);
    assert_eq!(el.stats().panics, 0);
    drop(keep);
}

/// `EventLoop::conn_state` right after `EventLoop::context().connect(addr, state)`, before
/// any tick: the connection is open, so its state is there.
#[test]
fn conn_state_right_after_a_context_connect() {
    let mut el = EventLoop::new(Outbound(channel().0)).unwrap();
    let id = el
        .context()
        .connect(
            closed_port(),
            Tag {
                name: "pending".into(),
                ..Tag::default()
            },
        )
        .unwrap();
    let name = el.conn_state(id).map(|t| t.name.clone());
    assert_eq!(name.as_deref(), Some("pending"));
}

/// `EventLoop::conn_state` reads and changes a connection's state between ticks; the next
/// callback sees the change; it is `None` once the connection is gone.
#[test]
fn conn_state_between_ticks() {
    let (tx, rx) = channel();
    let h = Lives {
        tx,
        serial: 0,
        closes: HashMap::new(),
    };
    let mut el = EventLoop::new(h).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let mut c = client(addr);
    let end = Instant::now() + DEADLINE;
    let tick_until = |el: &mut EventLoop<Lives>, want: &dyn Fn(&LifeEv) -> bool| loop {
        assert!(Instant::now() < end, "nothing happened");
        el.run_once(Some(Duration::from_millis(50))).unwrap();
        if let Some(ev) = rx.try_iter().find(|e| want(e)) {
            return ev;
        }
    };
    let LifeEv::Open { conn, .. } = tick_until(&mut el, &|e| matches!(e, LifeEv::Open { .. }))
    else {
        unreachable!()
    };
    let state = el.conn_state(conn).expect("open");
    assert_eq!((state.serial, state.bytes), (1, 0));
    state.bytes = 1000;
    state.serial = 77;
    c.write_all(b"x").unwrap();
    let LifeEv::Data { serial, .. } = tick_until(&mut el, &|e| matches!(e, LifeEv::Data { .. }))
    else {
        unreachable!()
    };
    assert_eq!(serial, 77, "on_data sees the changed state");
    assert_eq!(el.conn_state(conn).unwrap().bytes, 1001);
    let mut echo = [0u8; 1];
    c.set_nonblocking(true).unwrap();
    let end = Instant::now() + DEADLINE;
    // Take the echo (unread bytes would turn the close into a reset), ticking meanwhile.
    while c.read(&mut echo).is_err() {
        assert!(Instant::now() < end, "no echo");
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    drop(c);
    let LifeEv::Close { state, why, .. } =
        tick_until(&mut el, &|e| matches!(e, LifeEv::Close { .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        (state.serial, state.bytes, why),
        (77, 1001, Why::PeerClosed)
    );
    assert!(
        el.conn_state(conn).is_none(),
        "no state for a closed connection"
    );
}

/// What `Outbound` keeps per connection: given to `connect`.
#[derive(Debug, Default)]
struct Tag {
    name: String,
    opened: bool,
    data: Vec<u8>,
}

#[derive(Debug)]
enum OutEv {
    Open(ConnId, String),
    Close {
        conn: ConnId,
        name: String,
        opened: bool,
        data: Vec<u8>,
        why: Why,
    },
}

struct Outbound(Sender<OutEv>);

impl Handler for Outbound {
    type Conn = Tag;

    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, tag: &mut Tag) {
        tag.opened = true;
        let _ = self.0.send(OutEv::Open(conn, tag.name.clone()));
    }

    fn on_data(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        tag: &mut Tag,
        data: &[u8],
    ) -> usize {
        tag.data.extend_from_slice(data);
        data.len()
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        tag: Tag,
        reason: &CloseReason,
    ) {
        let _ = self.0.send(OutEv::Close {
            conn,
            name: tag.name,
            opened: tag.opened,
            data: tag.data,
            why: reason.into(),
        });
    }
}

/// An outbound connection carries the state given to `connect` (from the loop or from a
/// callback) into `on_open` and back in `on_close`; a connect that fails hands its state
/// to `on_close` with `ConnectFailed`, without `on_open`.
#[test]
fn outbound_state_goes_from_connect_to_open_and_close() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let refused = closed_port();
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Outbound(tx)).unwrap();
    let tag = |name: &str| Tag {
        name: name.to_string(),
        ..Tag::default()
    };
    let first = el.connect(addr, tag("from the loop")).unwrap();
    assert_eq!(el.conn_state(first).unwrap().name, "from the loop");
    el.conn_state(first).unwrap().name.push('!');
    let running = spawn(el);
    let (second, bad) = on_loop(&running, move |_, cx| {
        let second = cx.connect(addr, tag("from a callback")).unwrap();
        let bad = cx.connect(refused, tag("refused")).unwrap();
        (second, bad)
    });

    let mut names = HashMap::new();
    let mut failed = false;
    while names.len() < 2 || !failed {
        match recv(&rx) {
            OutEv::Open(conn, name) => assert!(names.insert(conn, name).is_none()),
            OutEv::Close {
                conn,
                name,
                opened,
                data,
                why,
            } => {
                assert_eq!(conn, bad, "only the refused one closes now");
                assert_eq!(name, "refused");
                assert!(!opened && data.is_empty());
                assert_eq!(why, Why::ConnectFailed(io::ErrorKind::ConnectionRefused));
                failed = true;
            }
        }
    }
    assert_eq!(names[&first], "from the loop!");
    assert_eq!(names[&second], "from a callback");

    for _ in 0..2 {
        let (mut peer, _) = server.accept().unwrap();
        peer.write_all(b"xyz").unwrap();
    }
    let mut closed = HashMap::new();
    while closed.len() < 2 {
        if let OutEv::Close {
            conn,
            name,
            opened,
            data,
            why,
        } = recv(&rx)
        {
            assert!(opened, "{name}");
            assert_eq!(data, b"xyz", "{name}: on_data filled the state");
            assert_eq!(why, Why::PeerClosed);
            closed.insert(conn, name);
        }
    }
    assert_eq!(closed, names);
    let el = running.stop();
    assert_eq!(el.stats().connections_open, 0);
    assert_eq!(el.stats().closed.connect_failed, 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Kept input.

#[derive(Debug)]
enum LineEv {
    Open(ConnId, SocketAddr),
    /// One `on_data` call: the input's length and how much was consumed.
    Call {
        conn: ConnId,
        len: usize,
        used: usize,
    },
    Line(ConnId, Vec<u8>),
    Paused(ConnId),
    DataWhilePaused(ConnId),
    Close(ConnId, Why),
}

#[derive(Debug, Default)]
struct LineState {
    paused: bool,
}

/// Consumes whole lines only; "PAUSE" pauses reading and leaves the rest unconsumed.
struct Lines {
    tx: Sender<LineEv>,
    /// Input limits given to the next connections opened, in order.
    limits: VecDeque<usize>,
    /// Set by the test just before it resumes reading.
    resume_allowed: bool,
}

impl Lines {
    fn new(tx: Sender<LineEv>) -> Lines {
        Lines {
            tx,
            limits: VecDeque::new(),
            resume_allowed: false,
        }
    }
}

impl Handler for Lines {
    type Conn = LineState;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut LineState) {
        if let Some(limit) = self.limits.pop_front() {
            assert!(cx.set_input_limit(conn, limit));
        }
        let peer = cx.peer_addr(conn).unwrap().as_inet().unwrap();
        let _ = self.tx.send(LineEv::Open(conn, peer));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        st: &mut LineState,
        input: &[u8],
    ) -> usize {
        if st.paused {
            if !self.resume_allowed {
                let _ = self.tx.send(LineEv::DataWhilePaused(conn));
            }
            st.paused = false;
            self.resume_allowed = false;
        }
        let mut used = 0;
        while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
            let line = input[used..used + nl].to_vec();
            used += nl + 1;
            let pause = line == b"PAUSE";
            let _ = self.tx.send(LineEv::Line(conn, line));
            if pause {
                cx.pause_read(conn);
                st.paused = true;
                let _ = self.tx.send(LineEv::Paused(conn));
                break;
            }
        }
        let _ = self.tx.send(LineEv::Call {
            conn,
            len: input.len(),
            used,
        });
        used
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: LineState,
        reason: &CloseReason,
    ) {
        let _ = self.tx.send(LineEv::Close(conn, reason.into()));
    }
}

fn line_client(addr: SocketAddr, rx: &Receiver<LineEv>) -> (TcpStream, ConnId) {
    let c = client(addr);
    c.set_nodelay(true).unwrap();
    let me = c.local_addr().unwrap();
    match recv_until(rx, |e| matches!(e, LineEv::Open(_, p) if *p == me)) {
        LineEv::Open(conn, _) => (c, conn),
        _ => unreachable!(),
    }
}

/// The lines the handler reported for `conn`, until `n` of them came.
fn lines_of(rx: &Receiver<LineEv>, conn: ConnId, n: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while lines.len() < n {
        match recv(rx) {
            LineEv::Line(c, line) if c == conn => lines.push(line),
            LineEv::Close(c, why) if c == conn => panic!("{conn} closed: {why:?}"),
            LineEv::DataWhilePaused(c) => panic!("{c}: on_data while paused"),
            _ => {}
        }
    }
    lines
}

/// Waits until `on_data` for `conn` was handed exactly `len` bytes (an unfinished line, so
/// nothing was consumed).
fn wait_call(rx: &Receiver<LineEv>, conn: ConnId, len: usize) {
    let call = recv_until(
        rx,
        |e| matches!(e, LineEv::Call { conn: c, len: l, .. } if *c == conn && *l == len),
    );
    assert!(matches!(call, LineEv::Call { used: 0, .. }), "{call:?}");
}

fn sample_lines(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let pad = random_bytes(count, seed);
    (0..count)
        .map(|i| {
            let fill = "abcdefghij".repeat(pad[i] as usize % 9);
            format!("line {i}: {fill}").into_bytes()
        })
        .collect()
}

fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect()
}

/// A handler that consumes whole lines only sees every line exactly once, in order, whether
/// the client writes byte by byte or in random chunks; consuming everything keeps nothing,
/// and an unfinished line is kept until its newline comes.
#[test]
fn whole_lines_are_seen_once_however_the_bytes_are_cut() {
    let (tx, rx) = channel();
    let (server, addr) = start(Lines::new(tx), Config::default());

    // Byte by byte.
    let (mut a, a_id) = line_client(addr, &rx);
    let lines = sample_lines(150, 1);
    for b in joined(&lines) {
        a.write_all(&[b]).unwrap();
        a.flush().unwrap();
    }
    assert_eq!(lines_of(&rx, a_id, lines.len()), lines);
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(a_id)), Some(0));

    // Random chunk sizes (deterministic seed), from 1 byte to a few KiB.
    let (mut b, b_id) = line_client(addr, &rx);
    let lines = sample_lines(3000, 2);
    let text = joined(&lines);
    let sizes = random_bytes(2 * text.len() + 2, 3);
    let mut at = 0;
    let mut i = 0;
    while at < text.len() {
        let size = match sizes[i] % 4 {
            0 => 1,
            1 => sizes[i + 1] as usize % 16 + 1,
            2 => sizes[i + 1] as usize + 1,
            _ => (sizes[i + 1] as usize + 1) * 16,
        };
        let end = (at + size).min(text.len());
        b.write_all(&text[at..end]).unwrap();
        at = end;
        i += 2;
    }
    assert_eq!(lines_of(&rx, b_id, lines.len()), lines);
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(b_id)), Some(0));

    // An unfinished line is kept (and presented again with the rest).
    a.write_all(b"no newline yet").unwrap();
    wait_call(&rx, a_id, 14);
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(a_id)), Some(14));
    a.write_all(b", now\n").unwrap();
    assert_eq!(lines_of(&rx, a_id, 1), [b"no newline yet, now".to_vec()]);
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(a_id)), Some(0));

    drop((a, b));
    let el = server.stop();
    assert_eq!(el.stats().closed.peer_closed, 2);
    assert_eq!(el.stats().panics, 0);
}

/// Kept input is bounded by `Config::max_input`: exactly the limit is kept, one byte more
/// closes the connection with `InputLimit`. Input that is consumed does not count, however
/// much of it comes at once.
#[test]
fn unconsumed_input_past_max_input_closes_with_input_limit() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.max_input = 1024;
    let (server, addr) = start(Lines::new(tx), config);

    let (mut busy, busy_id) = line_client(addr, &rx);
    let lines = sample_lines(5000, 4);
    busy.write_all(&joined(&lines)).unwrap();
    assert_eq!(
        lines_of(&rx, busy_id, lines.len()),
        lines,
        "consumed input is not bounded"
    );

    let (mut c, id) = line_client(addr, &rx);
    c.write_all(&[b'a'; 1024]).unwrap();
    wait_call(&rx, id, 1024);
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(id)), Some(1024));
    c.write_all(b"a").unwrap();
    match recv_until(&rx, |e| matches!(e, LineEv::Close(..))) {
        LineEv::Close(conn, why) => assert_eq!((conn, why), (id, Why::InputLimit)),
        _ => unreachable!(),
    }
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(id)), None);
    assert_eq!(
        on_loop(&server, move |_, cx| cx.kept_input(busy_id)),
        Some(0)
    );
    let el = server.stop();
    assert_eq!(el.stats().closed.input_limit, 1);
    assert_eq!(el.stats().panics, 0);
}

/// `set_input_limit` overrides `Config::max_input` for one connection, up or down.
#[test]
fn set_input_limit_overrides_the_config_per_connection() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.max_input = 1000;
    let mut h = Lines::new(tx);
    h.limits = VecDeque::from([10_000, 100]);
    let (server, addr) = start(h, config);

    let (mut big, big_id) = line_client(addr, &rx);
    let (mut small, small_id) = line_client(addr, &rx);
    let (mut plain, plain_id) = line_client(addr, &rx);

    let long = vec![b'x'; 5000];
    big.write_all(&long).unwrap();
    wait_call(&rx, big_id, 5000);
    assert_eq!(
        on_loop(&server, move |_, cx| cx.kept_input(big_id)),
        Some(5000)
    );
    big.write_all(b"\n").unwrap();
    assert_eq!(lines_of(&rx, big_id, 1), [long]);

    small.write_all(&[b'y'; 100]).unwrap();
    wait_call(&rx, small_id, 100);
    assert_eq!(
        on_loop(&server, move |_, cx| cx.kept_input(small_id)),
        Some(100)
    );
    small.write_all(b"y").unwrap();
    match recv_until(&rx, |e| matches!(e, LineEv::Close(..))) {
        LineEv::Close(conn, why) => assert_eq!((conn, why), (small_id, Why::InputLimit)),
        _ => unreachable!(),
    }

    plain.write_all(&[b'z'; 1001]).unwrap();
    match recv_until(&rx, |e| matches!(e, LineEv::Close(..))) {
        LineEv::Close(conn, why) => assert_eq!((conn, why), (plain_id, Why::InputLimit)),
        _ => unreachable!(),
    }
    assert!(
        !on_loop(&server, move |_, cx| cx.set_input_limit(plain_id, 1)),
        "no limit for a closed connection"
    );
    let el = server.stop();
    assert_eq!(el.stats().closed.input_limit, 2);
    assert_eq!(el.stats().panics, 0);
}

/// After `pause_read` with whole lines left unconsumed, nothing is handed over while paused;
/// `resume_read` presents the kept lines again even if the peer sends nothing more, and
/// bytes that came while paused follow them, in order.
#[test]
fn resume_read_presents_kept_input_without_new_bytes() {
    let (tx, rx) = channel();
    let (server, addr) = start(Lines::new(tx), Config::default());
    let (mut c, id) = line_client(addr, &rx);

    c.write_all(b"a\nPAUSE\nb\nc\n").unwrap();
    assert_eq!(lines_of(&rx, id, 2), [b"a".to_vec(), b"PAUSE".to_vec()]);
    recv_until(&rx, |e| matches!(e, LineEv::Paused(c) if *c == id));
    assert_eq!(
        on_loop(&server, move |_, cx| cx.kept_input(id)),
        Some(4),
        "b and c are kept, not handed over"
    );
    on_loop(&server, move |h, cx| {
        h.resume_allowed = true;
        cx.resume_read(id)
    });
    assert_eq!(lines_of(&rx, id, 2), [b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(id)), Some(0));

    // Again, with bytes arriving while paused: kept ones first.
    c.write_all(b"d\nPAUSE\ne\n").unwrap();
    assert_eq!(lines_of(&rx, id, 2), [b"d".to_vec(), b"PAUSE".to_vec()]);
    c.write_all(b"f\n").unwrap();
    assert_eq!(on_loop(&server, move |_, cx| cx.kept_input(id)), Some(2));
    on_loop(&server, move |h, cx| {
        h.resume_allowed = true;
        cx.resume_read(id)
    });
    assert_eq!(lines_of(&rx, id, 2), [b"e".to_vec(), b"f".to_vec()]);
    drop(c);
    match recv_until(&rx, |e| {
        matches!(e, LineEv::Close(..) | LineEv::DataWhilePaused(_))
    }) {
        LineEv::Close(conn, why) => assert_eq!((conn, why), (id, Why::PeerClosed)),
        other => panic!("{other:?}"),
    }
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Connection timers.

#[derive(Debug, Default)]
struct Clocked {
    serial: u32,
    once: Option<TimerId>,
    every: Option<TimerId>,
    ticks: u32,
}

#[derive(Debug, PartialEq)]
enum TEv {
    Open(ConnId, u32, Option<TimerId>),
    Armed(ConnId, Vec<TimerId>),
    Fired {
        conn: ConnId,
        serial: u32,
        timer: TimerId,
        once: bool,
        at: Instant,
    },
    Cancelled(&'static str, bool),
    Close(ConnId, Why),
    End,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `on_open`: a one-shot connection timer of 50 ms.
    Once,
    /// `on_open`: a 20 ms interval, cancelled from its third firing.
    Interval,
    /// `on_open`: timers of 50 ms and 150 ms, the first cancelled at once.
    CancelFirst,
    /// On "arm": a 300 ms timer and a 100 ms interval; on close, a 600 ms user timer.
    OnCommand,
}

struct Timed {
    tx: Sender<TEv>,
    mode: Mode,
    serial: u32,
}

impl Handler for Timed {
    type Conn = Clocked;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, st: &mut Clocked) {
        self.serial += 1;
        st.serial = self.serial;
        match self.mode {
            Mode::Once => st.once = cx.set_conn_timer(conn, Duration::from_millis(50)),
            Mode::Interval => st.every = cx.set_conn_interval(conn, Duration::from_millis(20)),
            Mode::CancelFirst => {
                let first = cx.set_conn_timer(conn, Duration::from_millis(50)).unwrap();
                st.once = cx.set_conn_timer(conn, Duration::from_millis(150));
                let _ = self
                    .tx
                    .send(TEv::Cancelled("first", cx.cancel_timer(first)));
                let _ = self
                    .tx
                    .send(TEv::Cancelled("first again", cx.cancel_timer(first)));
            }
            Mode::OnCommand => {}
        }
        let _ = self
            .tx
            .send(TEv::Open(conn, st.serial, st.once.or(st.every)));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        st: &mut Clocked,
        data: &[u8],
    ) -> usize {
        match data {
            b"arm" => {
                st.once = cx.set_conn_timer(conn, Duration::from_millis(300));
                st.every = cx.set_conn_interval(conn, Duration::from_millis(100));
                let armed = [st.once, st.every].into_iter().flatten().collect();
                let _ = self.tx.send(TEv::Armed(conn, armed));
            }
            b"close" => cx.close(conn),
            b"abort" => cx.abort(conn),
            _ => {}
        }
        data.len()
    }

    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        st: &mut Clocked,
        timer: TimerId,
    ) {
        let _ = self.tx.send(TEv::Fired {
            conn,
            serial: st.serial,
            timer,
            once: st.once == Some(timer),
            at: Instant::now(),
        });
        if self.mode == Mode::Interval && st.every == Some(timer) {
            st.ticks += 1;
            if st.ticks == 3 {
                let _ = self
                    .tx
                    .send(TEv::Cancelled("interval", cx.cancel_timer(timer)));
                let _ = self
                    .tx
                    .send(TEv::Cancelled("interval again", cx.cancel_timer(timer)));
                // Long enough for several more periods, had the cancel not worked.
                cx.set_timer(Duration::from_millis(200));
            }
        }
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        st: Clocked,
        reason: &CloseReason,
    ) {
        if self.mode == Mode::OnCommand && st.once.is_some() {
            // Past the connection timer's deadline (300 ms from "arm").
            cx.set_timer(Duration::from_millis(600));
        }
        let _ = self.tx.send(TEv::Close(conn, reason.into()));
    }

    fn on_timer(&mut self, _cx: &mut Context<'_, Self>, _timer: TimerId) {
        let _ = self.tx.send(TEv::End);
    }
}

fn start_timed(mode: Mode) -> (Running<Timed>, SocketAddr, Receiver<TEv>) {
    let (tx, rx) = channel();
    let (server, addr) = start(
        Timed {
            tx,
            mode,
            serial: 0,
        },
        Config::default(),
    );
    (server, addr, rx)
}

/// `set_conn_timer`: `on_conn_timer` runs once, after the delay, with the connection's state.
#[test]
fn conn_timer_fires_with_the_connection_state() {
    let (server, addr, rx) = start_timed(Mode::Once);
    let _first = client(addr);
    let TEv::Open(_, 1, _) = recv(&rx) else {
        panic!()
    };
    let started = Instant::now();
    let _c = client(addr);
    let TEv::Open(conn, serial, Some(timer)) = recv(&rx) else {
        panic!("no timer set")
    };
    let mut fired = Vec::new();
    while fired.len() < 2 {
        if let TEv::Fired {
            conn: c,
            serial: s,
            timer: t,
            once,
            at,
        } = recv(&rx)
        {
            assert!(once);
            fired.push((c, s, t, at));
        }
    }
    let (_, s, t, at) = fired
        .iter()
        .find(|f| f.0 == conn)
        .expect("the second one fired");
    assert_eq!((*s, *t), (serial, timer), "with its own state");
    assert!(*at >= started + Duration::from_millis(50), "fired early");
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

/// `set_conn_interval` repeats until cancelled (from its own callback): exactly three
/// firings, then none while a 200 ms timer runs out.
#[test]
fn conn_interval_repeats_until_cancelled() {
    let (server, addr, rx) = start_timed(Mode::Interval);
    let _c = client(addr);
    let TEv::Open(conn, _, Some(every)) = recv(&rx) else {
        panic!()
    };
    let mut events = Vec::new();
    loop {
        let ev = recv(&rx);
        let end = ev == TEv::End;
        events.push(ev);
        if end {
            break;
        }
    }
    let fired: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TEv::Fired { conn: c, timer, .. } => Some((*c, *timer)),
            _ => None,
        })
        .collect();
    assert_eq!(fired, vec![(conn, every); 3], "{events:?}");
    assert!(events.contains(&TEv::Cancelled("interval", true)));
    assert!(events.contains(&TEv::Cancelled("interval again", false)));
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

/// `cancel_timer` on a connection timer: it never fires; the other one does.
#[test]
fn cancel_timer_cancels_a_conn_timer() {
    let (server, addr, rx) = start_timed(Mode::CancelFirst);
    let _c = client(addr);
    assert_eq!(recv(&rx), TEv::Cancelled("first", true));
    assert_eq!(recv(&rx), TEv::Cancelled("first again", false));
    let TEv::Open(conn, _, Some(second)) = recv(&rx) else {
        panic!()
    };
    match recv(&rx) {
        TEv::Fired { conn: c, timer, .. } => assert_eq!(
            (c, timer),
            (conn, second),
            "the cancelled one did not fire first"
        ),
        other => panic!("{other:?}"),
    }
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

/// A connection's timers die with it: closed locally, by the peer or by abort before their
/// deadline, they never fire, not even on the connection that takes the slot next; a user
/// timer set in `on_close` runs out well past their deadline first.
#[test]
fn conn_timers_never_fire_after_their_connection_closed() {
    let (server, addr, rx) = start_timed(Mode::OnCommand);
    for how in ["close", "peer", "abort"] {
        let mut c = client(addr);
        let TEv::Open(conn, ..) = recv(&rx) else {
            panic!()
        };
        c.write_all(b"arm").unwrap();
        let TEv::Armed(armed_conn, timers) = recv(&rx) else {
            panic!()
        };
        assert_eq!((armed_conn, timers.len()), (conn, 2));
        match how {
            "peer" => drop(c),
            cmd => c.write_all(cmd.as_bytes()).unwrap(),
        }
        let TEv::Close(closed, _) = recv(&rx) else {
            panic!()
        };
        assert_eq!(closed, conn);
        // The next connection takes the slot (after a local close, the lingering socket
        // holds it instead); it has no timers of its own.
        let _next = client(addr);
        let TEv::Open(next, ..) = recv(&rx) else {
            panic!()
        };
        if how != "close" {
            assert_eq!(next.slot(), conn.slot());
        }
        match recv(&rx) {
            TEv::End => {}
            other => panic!("{how}: {other:?} before the end timer"),
        }
        on_loop(&server, move |_, cx| cx.close(next));
        let TEv::Close(..) = recv(&rx) else { panic!() };
    }
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 4. defer.

#[derive(Debug)]
enum DEv {
    Open(u64),
    Ran(u32, u64),
}

struct Deferrer(Sender<DEv>);

impl Handler for Deferrer {
    type Conn = ();

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        let _ = self.0.send(DEv::Open(cx.stats().ticks));
        for i in 1..=3 {
            cx.defer(move |h: &mut Deferrer, cx| {
                let _ = h.0.send(DEv::Ran(i, cx.stats().ticks));
                if i == 3 {
                    cx.defer(move |h: &mut Deferrer, cx| {
                        let _ = h.0.send(DEv::Ran(4, cx.stats().ticks));
                        cx.send(conn, b"deferred\n").unwrap();
                    });
                }
            });
        }
    }
}

/// Work deferred from a callback runs at the start of the next tick, in order; work it
/// defers runs the tick after. With nothing else happening (the client only connects), the
/// loop does not sleep while work waits: the reply comes at once.
#[test]
fn deferred_work_runs_next_tick_in_order_without_sleeping() {
    let (tx, rx) = channel();
    let (server, addr) = start(Deferrer(tx), Config::default());
    let mut c = client(addr);
    let DEv::Open(t0) = recv(&rx) else { panic!() };
    let mut ran = Vec::new();
    for _ in 0..4 {
        let DEv::Ran(i, t) = recv(&rx) else { panic!() };
        ran.push((i, t));
    }
    assert_eq!(ran, [(1, t0 + 1), (2, t0 + 1), (3, t0 + 1), (4, t0 + 2)]);
    let mut line = [0u8; 9];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"deferred\n");
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Typed send results, broadcast.

#[derive(Debug)]
enum SEv {
    Open(ConnId),
    Sent(&'static str, Result<(), SendError>),
    Close(ConnId, Why),
}

struct Sends(Sender<SEv>);

impl Handler for Sends {
    type Conn = ();

    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        let _ = self.0.send(SEv::Open(conn));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let report = |what, r| {
            let _ = self.0.send(SEv::Sent(what, r));
        };
        match data {
            b"closing" => {
                cx.set_send_buffer_size(conn, 4096).unwrap();
                report("queued", cx.send(conn, &random_bytes(512 * 1024, 5)));
                assert!(cx.queued(conn).unwrap() > 0);
                cx.close(conn);
                report("closing", cx.send(conn, b"x"));
            }
            b"writeshut" => {
                cx.shutdown_write(conn);
                report("writeshut", cx.send(conn, b"x"));
            }
            b"limit" => {
                cx.set_send_buffer_size(conn, 4096).unwrap();
                report("limit", cx.send(conn, &vec![0u8; 4 << 20]));
                report("after limit", cx.send(conn, b"x"));
            }
            _ => {}
        }
        data.len()
    }

    fn on_close(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: (), reason: &CloseReason) {
        let _ = self.0.send(SEv::Close(conn, reason.into()));
    }
}

fn sent(rx: &Receiver<SEv>) -> (&'static str, Result<(), SendError>) {
    match recv_until(rx, |e| matches!(e, SEv::Sent(..))) {
        SEv::Sent(what, r) => (what, r),
        _ => unreachable!(),
    }
}

fn closed(rx: &Receiver<SEv>) -> (ConnId, Why) {
    match recv_until(rx, |e| matches!(e, SEv::Close(..))) {
        SEv::Close(conn, why) => (conn, why),
        _ => unreachable!(),
    }
}

/// `send` says why it refuses: `Closing` after `close` with bytes queued, `WriteShut` after
/// `shutdown_write`, `Closed` for a dead id, `OutputLimit` past `max_output` (and the
/// connection then closes with `OutputLimit`).
#[test]
fn send_errors_say_why() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.max_output = 1 << 20;
    let (server, addr) = start(Sends(tx), config);

    let mut closing = small_rcvbuf_client(addr);
    let SEv::Open(closing_id) = recv(&rx) else {
        panic!()
    };
    closing.write_all(b"closing").unwrap();
    assert_eq!(sent(&rx), ("queued", Ok(())));
    assert_eq!(sent(&rx), ("closing", Err(SendError::Closing)));
    let (got, err) = read_until_end(&mut closing);
    assert_eq!(
        (got.len(), err),
        (512 * 1024, None),
        "the queue is flushed, then FIN"
    );
    assert_eq!(closed(&rx), (closing_id, Why::Local));
    let dead = on_loop(&server, move |_, cx| {
        (
            cx.send(closing_id, b"x"),
            cx.send_shared(closing_id, &evloop::Bytes::from_static(b"x")),
        )
    });
    assert_eq!(dead, (Err(SendError::Closed), Err(SendError::Closed)));

    let mut shut = client(addr);
    let SEv::Open(shut_id) = recv(&rx) else {
        panic!()
    };
    shut.write_all(b"writeshut").unwrap();
    assert_eq!(sent(&rx), ("writeshut", Err(SendError::WriteShut)));
    assert_eq!(read_until_end(&mut shut), (vec![], None), "FIN");
    shut.write_all(b"still read").unwrap();
    shut.shutdown(Shutdown::Write).unwrap();
    assert_eq!(closed(&rx), (shut_id, Why::PeerClosed));

    let mut limit = small_rcvbuf_client(addr);
    let SEv::Open(limit_id) = recv(&rx) else {
        panic!()
    };
    limit.write_all(b"limit").unwrap();
    assert_eq!(sent(&rx), ("limit", Err(SendError::OutputLimit)));
    assert_eq!(sent(&rx), ("after limit", Err(SendError::Closed)));
    assert_eq!(closed(&rx), (limit_id, Why::OutputLimit));

    let el = server.stop();
    assert_eq!(el.stats().closed.output_limit, 1);
    assert_eq!(el.stats().connections_open, 0);
    assert_eq!(el.stats().panics, 0);
}

/// Keeps the list of open connections: it needs to reach the others (a room).
struct Room {
    tx: Sender<SEv>,
    members: Vec<ConnId>,
}

impl Handler for Room {
    type Conn = ();

    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        self.members.push(conn);
        let _ = self.tx.send(SEv::Open(conn));
    }

    fn on_close(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: (), reason: &CloseReason) {
        self.members.retain(|&m| m != conn);
        let _ = self.tx.send(SEv::Close(conn, reason.into()));
    }
}

/// `broadcast` to three connections (and a dead id) delivers the same bytes to each of the
/// three, even through small send buffers (queued as one shared buffer), and returns 3.
/// `send_shared` delivers too.
#[test]
fn broadcast_delivers_the_same_bytes_to_each() {
    let (tx, rx) = channel();
    let (server, addr) = start(
        Room {
            tx,
            members: Vec::new(),
        },
        Config::default(),
    );
    let gone = client(addr);
    let SEv::Open(gone_id) = recv(&rx) else {
        panic!()
    };
    drop(gone);
    assert_eq!(closed(&rx), (gone_id, Why::PeerClosed));
    let mut clients: Vec<TcpStream> = (0..3).map(|_| small_rcvbuf_client(addr)).collect();
    for _ in 0..3 {
        let SEv::Open(_) = recv(&rx) else { panic!() };
    }
    let payload = random_bytes(1 << 20, 8);
    let p = payload.clone();
    let (n, queued) = on_loop(&server, move |room, cx| {
        let mut to = room.members.clone();
        for &m in &to {
            cx.set_send_buffer_size(m, 4096).unwrap();
        }
        to.push(gone_id);
        let n = cx.broadcast(to, &p);
        let queued: Vec<usize> = room
            .members
            .iter()
            .map(|&m| cx.queued(m).unwrap())
            .collect();
        (n, queued)
    });
    assert_eq!(n, 3, "three took the bytes; the dead id did not");
    assert!(queued.iter().all(|&q| q > 0), "{queued:?}");
    for c in &mut clients {
        let mut got = vec![0u8; payload.len()];
        c.read_exact(&mut got).unwrap();
        assert!(got == payload, "bytes differ");
    }
    let shared = evloop::Bytes::from_static(b"shared bytes");
    let r = on_loop(&server, move |room, cx| {
        cx.send_shared(room.members[0], &shared)
    });
    assert_eq!(r, Ok(()));
    let mut got = [0u8; 12];
    clients[0].read_exact(&mut got).unwrap();
    assert_eq!(&got, b"shared bytes");
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Shutdown.

#[derive(Debug, PartialEq)]
struct Refusals {
    shutting_down: bool,
    connect: bool,
    listen: bool,
    bind_udp: bool,
}

fn refusals<H: Handler>(cx: &mut Context<'_, H>, target: SocketAddr) -> Refusals
where
    H::Conn: Default,
{
    Refusals {
        shutting_down: cx.is_shutting_down(),
        connect: cx.connect(target, Default::default()).is_err(),
        listen: cx.listen(localhost()).is_err(),
        bind_udp: cx.bind_udp(localhost()).is_err(),
    }
}

/// Tries to reconnect from `on_close`.
struct Stubborn {
    tx: Sender<Refusals>,
    target: SocketAddr,
}

impl Handler for Stubborn {
    type Conn = ();

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _: ConnId, _: (), _: &CloseReason) {
        let r = refusals(cx, self.target);
        let _ = self.tx.send(r);
    }
}

/// After `cx.shutdown`, connect, listen and bind fail and `is_shutting_down` is true; a
/// handler that tries to reconnect in `on_close` cannot keep the loop alive: `run()`
/// returns by itself, long before the deadline.
#[test]
fn shutdown_refuses_new_sockets_and_reconnects_cannot_keep_the_loop_alive() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Stubborn {
        tx,
        target: target_addr,
    })
    .unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    el.connect(target_addr, ()).unwrap();
    let running = spawn(el);
    let mut c = client(addr);
    let (peer, _) = target.accept().unwrap();
    let open = on_loop(&running, |_, cx| {
        (cx.is_shutting_down(), cx.stats().connections_open)
    });
    assert_eq!(open, (false, 2));

    let start = Instant::now();
    let during = on_loop(&running, move |_, cx| {
        cx.shutdown(Duration::from_secs(30));
        refusals(cx, target_addr)
    });
    let all_refused = Refusals {
        shutting_down: true,
        connect: true,
        listen: true,
        bind_udp: true,
    };
    assert_eq!(during, all_refused);
    assert_eq!(read_until_end(&mut c), (vec![], None));
    // Both closes are done (one tick closed both): EOF from our side ends their lingering.
    drop((c, peer));
    let el = within_deadline(move || running.join());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "waited for the deadline"
    );
    assert_eq!(recv(&rx), all_refused, "from on_close");
    assert_eq!(recv(&rx), all_refused, "from on_close");
    assert_eq!(el.stats().connections_open, 0);
    assert_eq!(el.stats().connects_started, 1, "no reconnect started");
    assert_eq!(el.slab_len(), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Config and extreme delays.

/// `EventLoop::with_config` validates: zero budgets and capacities are `InvalidInput`.
#[test]
fn with_config_rejects_zero_budgets() {
    let zeroed: [fn(&mut Config); 5] = [
        |c| c.accept_budget = 0,
        |c| c.datagram_budget = 0,
        |c| c.read_budget = 0,
        |c| c.read_buffer_size = 0,
        |c| c.events_capacity = 0,
    ];
    for (i, zero) in zeroed.iter().enumerate() {
        let mut config = Config::default();
        zero(&mut config);
        match EventLoop::with_config(Deferrer(channel().0), config) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "case {i}: {e}"),
            Ok(_) => panic!("case {i}: a zero setting was accepted"),
        }
    }
    let mut config = Config::default();
    config.accept_budget = 1;
    assert!(EventLoop::with_config(Deferrer(channel().0), config).is_ok());
}

#[derive(Debug)]
enum FEv {
    Timer(TimerId),
    Close(Why),
}

/// Echoes; sets connection timers that never fire.
struct Forever(Sender<FEv>);

impl Handler for Forever {
    type Conn = ();

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        assert!(cx.set_conn_timer(conn, Duration::MAX).is_some());
        assert!(cx.set_conn_interval(conn, Duration::MAX).is_some());
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let _ = cx.send(conn, data);
        data.len()
    }

    fn on_conn_timer(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: &mut (), timer: TimerId) {
        let _ = self.0.send(FEv::Timer(timer));
    }

    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
        let _ = self.0.send(FEv::Close(reason.into()));
    }

    fn on_timer(&mut self, _: &mut Context<'_, Self>, timer: TimerId) {
        let _ = self.0.send(FEv::Timer(timer));
    }
}

/// Delays too long to represent mean "never": `set_timer(Duration::MAX)` (and intervals,
/// connection timers, `idle_timeout`, `connect_timeout` of `Duration::MAX`) neither panic
/// nor fire, and the loop keeps serving and firing shorter timers.
#[test]
fn duration_max_means_never_and_the_loop_keeps_running() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::MAX);
    config.connect_timeout = Some(Duration::MAX);
    let mut el = EventLoop::with_config(Forever(tx), config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let mut cx = el.context();
    let never = cx.set_timer(Duration::MAX);
    let never_every = cx.set_interval(Duration::MAX);
    let soon = cx.set_timer(Duration::from_millis(50));
    let running = spawn(el);

    let mut c = client(addr);
    assert_eq!(round_trip(&mut c, b"ping"), b"ping");
    match recv(&rx) {
        FEv::Timer(t) => assert_eq!(t, soon, "only the short timer fires"),
        other => panic!("{other:?}"),
    }
    let later = on_loop(&running, |_, cx| cx.set_timer(Duration::MAX));
    assert_eq!(round_trip(&mut c, b"pong"), b"pong", "still serving");
    let mut other = client(addr);
    assert_eq!(round_trip(&mut other, b"two"), b"two");
    drop(c);
    match recv(&rx) {
        FEv::Close(why) => assert_eq!(why, Why::PeerClosed, "no idle timeout"),
        other => panic!("{other:?}"),
    }
    let cancelled = on_loop(&running, move |_, cx| {
        [never, never_every, later].map(|t| cx.cancel_timer(t))
    });
    assert_eq!(cancelled, [true; 3], "still pending, never fired");
    let el = running.stop();
    assert_eq!(el.stats().panics, 0);
    assert_eq!(el.stats().closed.idle_timeout, 0);
}

/// Defers work from `on_close`.
struct DeferOnClose(Sender<&'static str>);

impl Handler for DeferOnClose {
    type Conn = ();

    fn on_open(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: &mut ()) {
        let _ = self.0.send("on_open");
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _: ConnId, _: (), _: &CloseReason) {
        let _ = self.0.send("on_close");
        cx.defer(|h: &mut DeferOnClose, _| {
            let _ = h.0.send("deferred from on_close");
        });
    }
}

/// Work deferred in the last tick of a graceful shutdown (here from the last `on_close`,
/// with nothing lingering) still runs before `run()` returns: `defer` promises the next
/// tick, and the shutdown is not over while work waits.
#[test]
fn work_deferred_in_the_last_tick_of_a_shutdown_still_runs() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.linger = Duration::ZERO;
    let (server, addr) = start(DeferOnClose(tx), config);
    let mut c = client(addr);
    assert_eq!(recv(&rx), "on_open");
    server.handle.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(read_until_end(&mut c), (vec![], None));
    let _el = within_deadline(move || server.join());
    assert_eq!(recv(&rx), "on_close");
    assert_eq!(rx.try_recv(), Ok("deferred from on_close"));
}

/// A send refused for the output limit closes the connection with a reset: the kernel may
/// have taken the start of those bytes, and a FIN would let the peer take the cut-off
/// stream for a complete one.
#[test]
fn a_send_past_the_output_limit_resets_the_peer() {
    struct Big;
    impl Handler for Big {
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            input: &[u8],
        ) -> usize {
            cx.set_send_buffer_size(conn, 4096).unwrap();
            assert_eq!(
                cx.send(conn, &vec![7u8; 1 << 20]),
                Err(SendError::OutputLimit)
            );
            input.len()
        }
    }
    let mut config = Config::default();
    config.max_output = 100_000;
    config.high_watermark = 64 * 1024;
    config.low_watermark = 16 * 1024;
    let mut el = EventLoop::with_config(Big, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let mut c = client(addr);
    c.write_all(b"go").unwrap();
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    assert!(
        end.is_err(),
        "a clean EOF after {} bytes of a cut-off reply",
        got.len()
    );
    let el = server.stop();
    assert_eq!(el.stats().closed.output_limit, 1);
    assert_eq!(el.stats().panics, 0);
}
