//! Issue 3, "the socket toolbox on the loop": outbound connects, Unix sockets, IPv6, timers,
//! the cross-thread handle, graceful shutdown and half-close, each seen from outside the loop
//! through real sockets on loopback (or in a fresh temp dir), with every wait bounded.
//!
//! Handlers report to the test over `mpsc` channels; every test that stops the loop checks at
//! the end that each connection got exactly one `on_close` and that nothing is left in the slab.

mod support;

use evloop::{
    Addr, CloseReason, Config, ConnId, Context, EventLoop, Handler, SendError, TimerId, UdpId,
};
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};
use support::{DEADLINE, client, random_bytes, recv, recv_until, round_trip, spawn};

// ---------------------------------------------------------------------------------------------
// A handler that reports everything, with a few switchable behaviours.

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

#[derive(Debug)]
enum Ev {
    Open {
        conn: ConnId,
        peer: Option<Addr>,
        inbound: bool,
    },
    Data(ConnId, Vec<u8>),
    Eof(ConnId),
    /// What `send` returned for a send the handler made after `shutdown_write`.
    SendAfterShutdown(ConnId, Result<(), SendError>),
    Close(ConnId, Why),
    Dgram {
        socket: UdpId,
        data: Vec<u8>,
        from: Addr,
    },
}

/// What a `Probe` keeps per connection (its `Handler::Conn`), beside the connection.
#[derive(Debug, Default)]
struct Seen {
    /// `on_open` calls for this connection (0 for an outbound connect that never opened).
    opens: u32,
    /// Accepted from a listener (set in `on_open`).
    inbound: bool,
}

#[derive(Default)]
struct Probe {
    tx: Option<Sender<Ev>>,
    /// Echo every byte back (streams) and every datagram back to its sender.
    echo: bool,
    /// With `echo`: echo only on accepted connections, not outbound ones.
    echo_inbound_only: bool,
    /// Report `on_data` bytes as `Ev::Data`.
    report_data: bool,
    /// `on_peer_eof`: send this, then close (instead of the default flush-and-close).
    eof_trailer: Option<Vec<u8>>,
    /// `on_open`: send this, then `shutdown_write`; later `on_data` tries to send again.
    greet_then_shutdown_write: Option<Vec<u8>>,
    /// `on_open` calls, all connections together.
    opened: u32,
    /// For each `on_close` of a connection: the `opens` its state had counted.
    closes: HashMap<ConnId, Vec<u32>>,
}

impl Probe {
    fn new(tx: Sender<Ev>) -> Probe {
        Probe {
            tx: Some(tx),
            ..Probe::default()
        }
    }

    fn echo(tx: Sender<Ev>) -> Probe {
        Probe {
            echo: true,
            ..Probe::new(tx)
        }
    }

    fn report(&self, ev: Ev) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(ev);
        }
    }

    /// Every connection closed exactly once, and every opened one closed.
    fn assert_closed_once(&self) {
        let mut opened_then_closed = 0;
        for (conn, opens) in &self.closes {
            assert_eq!(opens.len(), 1, "{conn}: on_close ran {} times", opens.len());
            assert!(opens[0] <= 1, "{conn}: on_open ran {} times", opens[0]);
            opened_then_closed += opens[0];
        }
        assert_eq!(
            opened_then_closed, self.opened,
            "connections opened but never closed"
        );
    }
}

impl Handler for Probe {
    type Conn = Seen;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, seen: &mut Seen) {
        self.opened += 1;
        seen.opens += 1;
        let peer = cx.peer_addr(conn).ok();
        let inbound = cx.listener_of(conn).is_some();
        seen.inbound = inbound;
        self.report(Ev::Open {
            conn,
            peer,
            inbound,
        });
        if let Some(greeting) = &self.greet_then_shutdown_write {
            cx.send(conn, greeting).unwrap();
            cx.shutdown_write(conn);
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        seen: &mut Seen,
        data: &[u8],
    ) -> usize {
        if self.greet_then_shutdown_write.is_some() {
            let sent = cx.send(conn, b"too late");
            self.report(Ev::SendAfterShutdown(conn, sent));
        }
        if self.echo && (!self.echo_inbound_only || seen.inbound) {
            let _ = cx.send(conn, data);
        }
        if self.report_data {
            self.report(Ev::Data(conn, data.to_vec()));
        }
        data.len()
    }

    fn on_peer_eof(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut Seen) {
        self.report(Ev::Eof(conn));
        if let Some(trailer) = &self.eof_trailer {
            cx.send(conn, trailer)
                .expect("send after peer EOF must work");
        }
        cx.close(conn);
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        seen: Seen,
        reason: &CloseReason,
    ) {
        self.closes.entry(conn).or_default().push(seen.opens);
        self.report(Ev::Close(conn, reason.into()));
    }

    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        self.report(Ev::Dgram {
            socket,
            data: data.to_vec(),
            from: from.clone(),
        });
        if self.echo {
            cx.send_to(socket, data, from).expect("send_to back");
        }
    }
}

fn recv_open(rx: &Receiver<Ev>) -> (ConnId, Option<Addr>, bool) {
    match recv_until(rx, |e| matches!(e, Ev::Open { .. })) {
        Ev::Open {
            conn,
            peer,
            inbound,
        } => (conn, peer, inbound),
        _ => unreachable!(),
    }
}

fn recv_close(rx: &Receiver<Ev>) -> (ConnId, Why) {
    match recv_until(rx, |e| matches!(e, Ev::Close(..))) {
        Ev::Close(conn, why) => (conn, why),
        _ => unreachable!(),
    }
}

/// The loop's books after it stopped: no connection open, only `entries` left in the slab.
fn assert_books<H: Handler>(el: &EventLoop<H>, entries: usize) {
    assert_eq!(el.stats().connections_open, 0, "{:?}", el.stats());
    assert_eq!(el.slab_len(), entries, "slab entries left");
    // Assertions inside callbacks panic into the loop, which catches and counts them.
    assert_eq!(el.stats().panics, 0, "a callback panicked");
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

/// A fresh directory for Unix socket files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("evloop-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unix_client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("unix connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

fn ipv6_loopback() -> bool {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            println!("note: IPv6 loopback unavailable ({e}); skipping");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Outbound connect.

/// An outbound connect (`EventLoop::connect` before the loop runs, and `Context::connect`
/// inside a callback) opens, sends what was queued before it opened, then echoes like an
/// accepted connection; `peer_addr` is the server's address.
#[test]
fn connect_opens_and_behaves_like_accepted() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let first = el
        .connect(addr, Seen::default())
        .expect("connect from the loop");
    el.context().send(first, b"queued-before-open;").unwrap();
    let running = spawn(el);
    let (idtx, idrx) = channel();
    running
        .handle
        .post(move |_, cx| {
            let id = cx
                .connect(addr, Seen::default())
                .expect("connect from a callback");
            assert!(cx.is_open(id), "connecting counts as open");
            cx.send(id, b"queued-before-open;").unwrap();
            idtx.send(id).unwrap();
        })
        .unwrap();
    let second = recv(&idrx);
    assert_ne!(first, second);

    let mut seen = HashSet::new();
    for _ in 0..2 {
        // Wait for on_open before accepting, so accept never blocks on a connect that failed.
        let (conn, peer, inbound) = recv_open(&rx);
        assert!(conn == first || conn == second, "unexpected {conn}");
        assert!(seen.insert(conn), "{conn} opened twice");
        assert!(!inbound, "an outbound connection has no listener");
        assert_eq!(peer, Some(Addr::Inet(addr)), "peer_addr of {conn}");
    }
    for _ in 0..2 {
        let (mut peer, _) = server.accept().unwrap();
        peer.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut early = [0; 19];
        peer.read_exact(&mut early).unwrap();
        assert_eq!(&early, b"queued-before-open;");
        let msg = random_bytes(100_000, 7);
        assert_eq!(round_trip(&mut peer, &msg), msg);
        drop(peer);
    }
    let mut closed = HashSet::new();
    for _ in 0..2 {
        let (conn, why) = recv_close(&rx);
        assert_eq!(why, Why::PeerClosed, "{conn}");
        closed.insert(conn);
    }
    assert_eq!(closed, seen);

    let el = running.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.stats().connects_started, 2);
    assert_eq!(el.stats().accepted, 0);
    assert_books(&el, 0);
}

/// Regression: `send` then `close` on a connection that is still connecting (fire and
/// forget) delivers the queued bytes once it connects, then FIN; `close` promises a flush.
#[test]
fn connect_send_close_before_open_still_delivers() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = channel();
    let el = EventLoop::new(Probe::new(tx)).unwrap();
    let running = spawn(el);
    let (idtx, idrx) = channel();
    running
        .handle
        .post(move |_, cx| {
            let id = cx.connect(addr, Seen::default()).expect("connect starts");
            cx.send(id, b"fire and forget").unwrap();
            cx.close(id);
            assert!(!cx.is_open(id), "closing after close");
            assert_eq!(
                cx.send(id, b"more"),
                Err(SendError::Closing),
                "no sends after close"
            );
            idtx.send(id).unwrap();
        })
        .unwrap();
    let id = recv(&idrx);
    assert_eq!(
        recv_open(&rx).0,
        id,
        "it did connect: on_open, then on_close"
    );
    let (mut peer, _) = within_deadline(move || server.accept()).unwrap();
    peer.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"fire and forget");
    assert_eq!(recv_close(&rx), (id, Why::Local));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 0);
}

/// A connect to a port nobody listens on ends in `on_close` with `ConnectFailed`
/// (connection refused) and never reaches `on_open`.
#[test]
fn connect_refused_is_connect_failed_without_open() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::new(tx)).unwrap();
    let first = el
        .connect(addr, Seen::default())
        .expect("a non-blocking connect starts");
    let running = spawn(el);
    let (idtx, idrx) = channel();
    running
        .handle
        .post(move |_, cx| {
            idtx.send(cx.connect(addr, Seen::default()).expect("connect starts"))
                .unwrap()
        })
        .unwrap();
    let second = recv(&idrx);

    let mut closed = HashSet::new();
    while closed.len() < 2 {
        match recv(&rx) {
            Ev::Close(conn, why) => {
                assert_eq!(why, Why::ConnectFailed(io::ErrorKind::ConnectionRefused));
                assert!(closed.insert(conn), "{conn} closed twice");
            }
            Ev::Open { conn, .. } => panic!("{conn} opened after a refused connect"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(closed, HashSet::from([first, second]));

    let el = running.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.handler().opened, 0);
    assert_eq!(el.stats().closed.connect_failed, 2);
    assert_books(&el, 0);
}

/// A connect whose SYN goes unanswered ends in `ConnectTimeout` after
/// `Config::connect_timeout`, never `on_open`. The SYN is made to hang on loopback with a
/// listener of backlog 0 whose accept queue is full (Linux then drops further SYNs).
#[test]
fn connect_timeout_when_syn_is_dropped() {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted) until a connect hangs: that proves SYNs are dropped.
    let mut fillers = Vec::new();
    let mut hangs = false;
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                hangs = true;
                break;
            }
            Err(e) => panic!("filler connect: {e}"),
        }
    }
    if !hangs {
        println!(
            "note: could not make a SYN hang on loopback (accept queue never filled); skipping"
        );
        return;
    }

    let (tx, rx) = channel();
    let mut config = Config::default();
    config.connect_timeout = Some(Duration::from_millis(300));
    let mut el = EventLoop::with_config(Probe::new(tx), config).unwrap();
    let start = Instant::now();
    let id = el.connect(addr, Seen::default()).expect("connect starts");
    let running = spawn(el);
    match recv(&rx) {
        Ev::Close(conn, why) => {
            assert_eq!(conn, id);
            assert_eq!(why, Why::ConnectTimeout);
        }
        other => panic!("expected the connect to time out, got {other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "timed out early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "timed out late: {took:?}");

    let el = running.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.handler().opened, 0);
    assert_eq!(el.stats().closed.connect_timeout, 1);
    assert_books(&el, 0);
    drop(fillers);
}

// ---------------------------------------------------------------------------------------------
// 2. Unix domain sockets.

/// A Unix stream listener feeds the same handler: connections open (inbound, peer unnamed),
/// echo, and close once. `close_listener` removes the socket file.
#[test]
fn unix_stream_listener_echoes_and_removes_its_file() {
    let dir = TempDir::new("unix_stream");
    let path = dir.path("echo.sock");
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let lid = el.listen_unix(&path).unwrap();
    assert_eq!(
        el.context().listener_addr(lid).unwrap().as_pathname(),
        Some(path.as_path())
    );
    let running = spawn(el);

    let mut clients: Vec<UnixStream> = (0..3).map(|_| unix_client(&path)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = random_bytes(200_000, i as u64 + 1);
        c.write_all(&msg).unwrap();
        let mut back = vec![0; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    for _ in 0..3 {
        let (_, _, inbound) = recv_open(&rx);
        assert!(inbound);
    }
    drop(clients);
    for _ in 0..3 {
        assert_eq!(recv_close(&rx).1, Why::PeerClosed);
    }

    assert!(path.exists(), "the socket file exists while listening");
    let (dtx, drx) = channel();
    running
        .handle
        .post(move |_, cx| {
            cx.close_listener(lid);
            dtx.send(()).unwrap();
        })
        .unwrap();
    recv(&drx);
    let el = running.stop();
    assert!(!path.exists(), "close_listener removes the socket file");
    assert!(UnixStream::connect(&path).is_err());
    el.handler().assert_closed_once();
    assert_eq!(el.stats().accepted, 3);
    assert_books(&el, 0);
}

/// `Context::connect_unix` to the loop's own Unix listener: the outbound side opens with the
/// listener's path as peer, the accepted side echoes to it, and closing one end closes the
/// other with EOF.
#[test]
fn unix_connect_to_own_listener() {
    let dir = TempDir::new("unix_self");
    let path = dir.path("self.sock");
    let (tx, rx) = channel();
    let probe = Probe {
        echo_inbound_only: true,
        report_data: true,
        ..Probe::echo(tx)
    };
    let mut el = EventLoop::new(probe).unwrap();
    el.listen_unix(&path).unwrap();
    let running = spawn(el);
    let (idtx, idrx) = channel();
    let p = path.clone();
    running
        .handle
        .post(move |_, cx| {
            let id = cx.connect_unix(&p, Seen::default()).expect("connect_unix");
            cx.send(id, b"hi unix").unwrap();
            idtx.send(id).unwrap();
        })
        .unwrap();
    let out = recv(&idrx);
    let mut inbound = None;
    let mut echoed = Vec::new();
    while inbound.is_none() || echoed.len() < 7 {
        match recv(&rx) {
            Ev::Open {
                conn,
                peer,
                inbound: true,
            } => {
                assert_eq!(
                    peer.and_then(|p| p.as_pathname().map(Path::to_path_buf)),
                    None
                );
                inbound = Some(conn);
            }
            Ev::Open { conn, peer, .. } => {
                assert_eq!(conn, out);
                assert_eq!(peer.unwrap().as_pathname(), Some(path.as_path()));
            }
            Ev::Data(conn, data) if conn == out => echoed.extend_from_slice(&data),
            Ev::Data(conn, data) => assert_eq!((Some(conn), &data[..]), (inbound, &b"hi unix"[..])),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"hi unix");
    running.handle.post(move |_, cx| cx.close(out)).unwrap();
    let mut closes = HashMap::new();
    while closes.len() < 2 {
        let (conn, why) = recv_close(&rx);
        closes.insert(conn, why);
    }
    assert_eq!(closes[&out], Why::Local);
    assert_eq!(closes[&inbound.unwrap()], Why::PeerClosed);
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.stats().connects_started, 1);
    assert_books(&el, 1);
}

/// A Unix datagram socket gets `on_datagram` with the sender's path and can `send_to` back.
#[test]
fn unix_datagram_reports_sender_and_replies() {
    let dir = TempDir::new("unix_dgram");
    let server_path = dir.path("server.sock");
    let client_path = dir.path("client.sock");
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let sid = el.context().bind_unix_datagram(Some(&server_path)).unwrap();
    assert_eq!(
        el.context().udp_addr(sid).unwrap().as_pathname(),
        Some(server_path.as_path())
    );
    let running = spawn(el);

    let c = UnixDatagram::bind(&client_path).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    for msg in [&b"hello"[..], b"", b"third"] {
        c.send_to(msg, &server_path).unwrap();
        let mut buf = [0; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg);
        assert_eq!(from.as_pathname(), Some(server_path.as_path()));
        match recv(&rx) {
            Ev::Dgram { socket, data, from } => {
                assert_eq!(socket, sid);
                assert_eq!(data, msg);
                assert_eq!(from.as_pathname(), Some(client_path.as_path()));
            }
            other => panic!("expected a datagram, got {other:?}"),
        }
    }

    let (dtx, drx) = channel();
    running
        .handle
        .post(move |_, cx| {
            cx.close_udp(sid);
            dtx.send(()).unwrap();
        })
        .unwrap();
    recv(&drx);
    let el = running.stop();
    assert!(
        !server_path.exists(),
        "closing the datagram socket removes its file"
    );
    assert_eq!(el.stats().datagrams_in, 3);
    assert_eq!(el.stats().datagrams_out, 3);
    assert_books(&el, 0);
}

/// A socket file left by a dead socket (bound, dropped, file kept) is replaced, for a stream
/// listener and a datagram socket alike; so is one left by a dropped loop.
#[test]
fn unix_bind_over_stale_socket_file() {
    let dir = TempDir::new("unix_stale");
    let stream_path = dir.path("stream.sock");
    let dgram_path = dir.path("dgram.sock");
    drop(UnixListener::bind(&stream_path).unwrap());
    drop(UnixDatagram::bind(&dgram_path).unwrap());
    assert!(
        stream_path.exists() && dgram_path.exists(),
        "std leaves the files behind"
    );

    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    el.listen_unix(&stream_path)
        .expect("stale stream socket replaced");
    el.context()
        .bind_unix_datagram(Some(&dgram_path))
        .expect("stale datagram socket replaced");
    let running = spawn(el);

    let mut c = unix_client(&stream_path);
    c.write_all(b"ping").unwrap();
    let mut back = [0; 4];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");

    let d = UnixDatagram::bind(dir.path("client.sock")).unwrap();
    d.set_read_timeout(Some(DEADLINE)).unwrap();
    d.send_to(b"dgram", &dgram_path).unwrap();
    let mut buf = [0; 16];
    let n = d.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"dgram");

    drop(c);
    assert_eq!(recv_close(&rx).1, Why::PeerClosed);
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 2);

    // A loop dropped without closing its listener (as in a crash) may leave the file behind;
    // the next loop binds over it all the same.
    drop(el);
    let (tx, _rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    el.listen_unix(&stream_path)
        .expect("file left by a dropped loop replaced");
    el.context()
        .bind_unix_datagram(Some(&dgram_path))
        .expect("file left by a dropped loop replaced");
    assert_books(&el, 2);
}

/// A path a live socket holds is `AddrInUse`, and the live socket keeps working; a regular
/// file at the path is an error and is never deleted.
#[test]
fn unix_bind_refuses_live_socket_and_keeps_regular_file() {
    let dir = TempDir::new("unix_live");
    let (tx, _rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();

    // A live std listener.
    let live = dir.path("live.sock");
    let std_listener = UnixListener::bind(&live).unwrap();
    let err = el
        .listen_unix(&live)
        .expect_err("path held by a live listener");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    let _c = unix_client(&live);
    std_listener.set_nonblocking(false).unwrap();
    within_deadline(move || std_listener.accept().map(drop)).expect("live listener still works");

    // A live evloop listener.
    let ours = dir.path("ours.sock");
    el.listen_unix(&ours).unwrap();
    let err = el
        .listen_unix(&ours)
        .expect_err("path held by our own listener");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

    // A live datagram socket.
    let live_dgram = dir.path("live-dgram.sock");
    let _d = UnixDatagram::bind(&live_dgram).unwrap();
    let err = el
        .context()
        .bind_unix_datagram(Some(&live_dgram))
        .expect_err("path held by a live datagram socket");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

    // A regular file.
    let file = dir.path("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    assert!(el.listen_unix(&file).is_err());
    assert!(el.context().bind_unix_datagram(Some(&file)).is_err());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"precious",
        "regular file untouched"
    );

    assert_books(&el, 1);
}

/// Regression: probing a path whose live listener has a full backlog must not block the
/// loop (a blocking connect to a full Unix backlog waits until the server accepts); the
/// path is in use.
#[test]
fn unix_bind_over_busy_live_listener_does_not_block() {
    let dir = TempDir::new("unix_busy");
    let path = dir.path("busy.sock");
    let busy = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    busy.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    busy.listen(0).unwrap();
    // Fill the backlog: non-blocking connects until one would block.
    let mut fillers = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&socket2::SockAddr::unix(&path).unwrap()) {
            Ok(()) => fillers.push(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filler: {e}"),
        }
        assert!(fillers.len() < 1000, "backlog never filled");
    }
    let probe_path = path.clone();
    let result = within_deadline(move || {
        let (tx, _rx) = channel();
        let mut el = EventLoop::new(Probe::new(tx)).unwrap();
        el.listen_unix(&probe_path).map(drop).map_err(|e| e.kind())
    });
    assert_eq!(result, Err(io::ErrorKind::AddrInUse));
    assert!(path.exists());
    drop((busy, fillers));
}

/// The listener's socket file is removed when a graceful shutdown closes the listener.
#[test]
fn unix_listener_file_removed_by_shutdown() {
    let dir = TempDir::new("unix_shutdown");
    let path = dir.path("s.sock");
    let (tx, _rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    el.listen_unix(&path).unwrap();
    let running = spawn(el);
    running.handle.shutdown(Duration::from_secs(1)).unwrap();
    let el = within_deadline(move || running.join());
    assert!(
        !path.exists(),
        "shutdown closes the listener and removes its file"
    );
    assert_books(&el, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. IPv6 on [::1].

/// A listener on [::1] accepts and echoes, peer addresses are IPv6.
#[test]
fn ipv6_listener_echoes() {
    if !ipv6_loopback() {
        return;
    }
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let lid = el.listen("[::1]:0".parse().unwrap()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    assert!(addr.is_ipv6() && addr.port() != 0);
    let running = spawn(el);
    let mut c = client(addr);
    let msg = random_bytes(300_000, 3);
    assert_eq!(round_trip(&mut c, &msg), msg);
    let (_, peer, inbound) = recv_open(&rx);
    assert!(inbound);
    assert_eq!(peer, Some(Addr::Inet(c.local_addr().unwrap())));
    drop(c);
    assert_eq!(recv_close(&rx).1, Why::PeerClosed);
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 1);
}

/// A UDP socket on [::1] reports the IPv6 sender and answers it.
#[test]
fn ipv6_udp_echoes() {
    if !ipv6_loopback() {
        return;
    }
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let uid = el.bind_udp("[::1]:0".parse().unwrap()).unwrap();
    let addr = el.context().udp_addr(uid).unwrap().as_inet().unwrap();
    assert!(addr.is_ipv6());
    let running = spawn(el);
    let c = UdpSocket::bind("[::1]:0").unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send_to(b"hello six", addr).unwrap();
    let mut buf = [0; 64];
    let (n, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hello six"[..], addr));
    match recv(&rx) {
        Ev::Dgram { socket, data, from } => {
            assert_eq!(socket, uid);
            assert_eq!(data, b"hello six");
            assert_eq!(from, Addr::Inet(c.local_addr().unwrap()));
        }
        other => panic!("expected a datagram, got {other:?}"),
    }
    let el = running.stop();
    assert_books(&el, 1);
}

/// An outbound connect to [::1] opens and echoes; a refused one fails cleanly.
#[test]
fn ipv6_outbound_connect() {
    if !ipv6_loopback() {
        return;
    }
    let server = TcpListener::bind("[::1]:0").unwrap();
    let addr = server.local_addr().unwrap();
    let refused = {
        let l = TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap()
    };
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let id = el.connect(addr, Seen::default()).unwrap();
    let bad = el.connect(refused, Seen::default()).unwrap();
    let running = spawn(el);
    let mut opened = false;
    let mut failed = false;
    while !(opened && failed) {
        match recv(&rx) {
            Ev::Open { conn, peer, .. } => {
                assert_eq!((conn, peer), (id, Some(Addr::Inet(addr))));
                opened = true;
            }
            Ev::Close(conn, why) => {
                assert_eq!(conn, bad);
                assert_eq!(why, Why::ConnectFailed(io::ErrorKind::ConnectionRefused));
                failed = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (mut peer, _) = server.accept().unwrap();
    peer.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(round_trip(&mut peer, b"over six"), b"over six");
    drop(peer);
    assert_eq!(recv_close(&rx), (id, Why::PeerClosed));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Timers and the idle timeout.

/// A loop with one 50 ms timer and no sockets sleeps until it is due (few ticks, no
/// spinning), runs `on_timer`, and returns from `run()` when the timer calls `stop`.
#[test]
fn lone_timer_drives_the_poll_timeout() {
    struct StopOnTimer(Sender<TimerId>);
    impl Handler for StopOnTimer {
        type Conn = ();
        fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) {
            let _ = self.0.send(timer);
            cx.stop();
        }
    }
    let (tx, rx) = channel();
    let mut el = EventLoop::new(StopOnTimer(tx)).unwrap();
    let start = Instant::now();
    let id = el.context().set_timer(Duration::from_millis(50));
    let el = within_deadline(move || {
        el.run().unwrap();
        el
    });
    let took = start.elapsed();
    assert_eq!(recv(&rx), id);
    assert!(took >= Duration::from_millis(50), "fired early: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        el.stats().ticks <= 5,
        "the loop spun: {} ticks",
        el.stats().ticks
    );
    assert_books(&el, 0);
}

/// One-shot and repeating timers: a one-shot fires once, an interval repeats until it
/// cancels itself from its own `on_timer`, a timer cancelled at once or from another
/// timer's callback never fires, cancelling twice (or after firing) returns false, and all
/// ids are distinct.
#[test]
fn timers_fire_repeat_and_cancel() {
    #[derive(Default)]
    struct Clock {
        once: Option<TimerId>,
        tick: Option<TimerId>,
        cancelled_early: Option<TimerId>,
        canceller: Option<TimerId>,
        victim: Option<TimerId>,
        last: Option<TimerId>,
        fired: Vec<TimerId>,
        tick_count: u32,
        results: Vec<(&'static str, bool)>,
        last_fired: bool,
    }
    impl Clock {
        fn maybe_stop(&mut self, cx: &mut Context<'_, Clock>) {
            if self.last_fired && self.tick_count >= 3 {
                cx.stop();
            }
        }
    }
    impl Handler for Clock {
        type Conn = ();
        fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) {
            self.fired.push(timer);
            if Some(timer) == self.tick {
                self.tick_count += 1;
                if self.tick_count == 3 {
                    let r = cx.cancel_timer(timer);
                    self.results.push(("interval cancels itself", r));
                }
            } else if Some(timer) == self.canceller {
                let r = cx.cancel_timer(self.victim.unwrap());
                self.results.push(("cancel victim from a callback", r));
                let r = cx.cancel_timer(timer);
                self.results.push(("cancel a one-shot that is firing", r));
            } else if Some(timer) == self.once {
                let r = cx.cancel_timer(timer);
                self.results.push(("cancel a fired one-shot", r));
            } else if Some(timer) == self.last {
                self.last_fired = true;
            }
            self.maybe_stop(cx);
        }
    }
    let mut el = EventLoop::new(Clock::default()).unwrap();
    let ms = Duration::from_millis;
    let mut cx = el.context();
    let once = cx.set_timer(ms(30));
    let tick = cx.set_interval(ms(15));
    let cancelled_early = cx.set_timer(ms(20));
    assert!(cx.cancel_timer(cancelled_early));
    assert!(
        !cx.cancel_timer(cancelled_early),
        "second cancel finds nothing"
    );
    let canceller = cx.set_timer(ms(10));
    let victim = cx.set_timer(ms(40));
    // Due after everything above: if the cancelled ones were still armed they would have
    // fired by the time this one does.
    let last = cx.set_timer(ms(80));
    let ids = [once, tick, cancelled_early, canceller, victim, last];
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "ids distinct"
    );
    *el.handler_mut() = Clock {
        once: Some(once),
        tick: Some(tick),
        cancelled_early: Some(cancelled_early),
        canceller: Some(canceller),
        victim: Some(victim),
        last: Some(last),
        ..Clock::default()
    };
    let el = within_deadline(move || {
        el.run().unwrap();
        el
    });
    let h = el.handler();
    let count = |id| h.fired.iter().filter(|&&t| t == id).count();
    assert_eq!(count(once), 1);
    assert_eq!(count(canceller), 1);
    assert_eq!(count(last), 1);
    assert_eq!(count(tick), 3, "interval stopped after cancelling itself");
    assert_eq!(count(h.cancelled_early.unwrap()), 0);
    assert_eq!(count(victim), 0, "cancelled from a callback");
    let mut results = h.results.clone();
    results.sort();
    let mut expected = vec![
        ("cancel a fired one-shot", false),
        ("cancel a one-shot that is firing", false),
        ("cancel victim from a callback", true),
        ("interval cancels itself", true),
    ];
    expected.sort();
    assert_eq!(results, expected);
    assert_books(&el, 0);
}

/// `Config::idle_timeout` closes a connection that says nothing with `IdleTimeout` (the
/// client sees EOF), and spares one that keeps talking every third of the timeout.
#[test]
fn idle_timeout_closes_idle_and_spares_busy() {
    let idle = Duration::from_millis(300);
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.idle_timeout = Some(idle);
    let mut el = EventLoop::with_config(Probe::echo(tx), config).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);

    let mut quiet = client(addr);
    let quiet_start = Instant::now();
    let (quiet_id, ..) = recv_open(&rx);
    let mut busy = client(addr);
    let (busy_id, ..) = recv_open(&rx);

    // Busy: one byte every ~idle/3, for more than three idle periods, each paced by its echo.
    let busy_start = Instant::now();
    let mut sent = 0;
    while busy_start.elapsed() < idle * 3 {
        assert_eq!(round_trip(&mut busy, &[sent as u8]), [sent as u8]);
        sent += 1;
        std::thread::sleep(idle / 3); // traffic shaping, not synchronisation
    }
    assert!(sent >= 6);

    // The quiet one was closed meanwhile, for being idle, and only it.
    let (conn, why) = recv_close(&rx);
    assert_eq!((conn, why), (quiet_id, Why::IdleTimeout));
    let mut buf = [0; 1];
    assert_eq!(quiet.read(&mut buf).unwrap(), 0, "the idle client sees EOF");
    assert!(quiet_start.elapsed() >= idle);
    while let Ok(ev) = rx.try_recv() {
        assert!(
            !matches!(ev, Ev::Close(c, _) if c == busy_id),
            "busy conn closed: {ev:?}"
        );
    }
    assert_eq!(round_trip(&mut busy, b"still here"), b"still here");

    // Once it stops talking, it goes the same way.
    assert_eq!(recv_close(&rx), (busy_id, Why::IdleTimeout));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.stats().closed.idle_timeout, 2);
    assert_books(&el, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. The cross-thread handle.

/// Four threads post 1000 tasks each at once; each task sends a numbered message to one
/// connection. The client gets all 4000, each thread's in order.
#[test]
fn handle_posts_from_four_threads_keep_order() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1000;
    const LEN: usize = 7; // "t:nnnn\n"
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::new(tx)).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = client(addr);
    let (conn, ..) = recv_open(&rx);

    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let posters: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = running.handle.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..PER_THREAD {
                    let msg = format!("{t}:{i:04}\n");
                    handle
                        .post(move |_, cx| cx.send(conn, msg.as_bytes()).unwrap())
                        .expect("post");
                }
            })
        })
        .collect();
    let mut all = vec![0; THREADS * PER_THREAD * LEN];
    c.read_exact(&mut all).expect("all 4000 messages");
    for p in posters {
        p.join().unwrap();
    }
    let mut next = [0usize; THREADS];
    for line in all.chunks(LEN) {
        let line = std::str::from_utf8(line).unwrap();
        let (t, i) = line.trim_end().split_once(':').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [PER_THREAD; THREADS]);

    drop(c);
    assert_eq!(recv_close(&rx), (conn, Why::PeerClosed));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.stats().panics, 0);
    assert_books(&el, 1);
}

/// `Handle::stop` from another thread makes `run()` return; once the loop is dropped,
/// `post` (and `stop`) fail instead of queueing work nobody will run.
#[test]
fn handle_stop_from_another_thread_and_post_after_drop() {
    let (tx, _rx) = channel();
    let mut el = EventLoop::new(Probe::new(tx)).unwrap();
    el.listen(support::localhost()).unwrap();
    let handle = el.handle();
    let (done_tx, done_rx) = channel();
    std::thread::spawn(move || {
        let r = el.run();
        let _ = done_tx.send((r.is_ok(), el));
    });
    let stopper = handle.clone();
    std::thread::spawn(move || stopper.stop().expect("loop alive"))
        .join()
        .unwrap();
    let (ok, el) = recv(&done_rx);
    assert!(ok, "run returned an error");
    assert_books(&el, 1);
    drop(el);
    let err = handle
        .post(|_, _| {})
        .expect_err("post after the loop is dropped");
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    assert!(handle.stop().is_err());
    assert!(handle.shutdown(Duration::from_secs(1)).is_err());
}

// ---------------------------------------------------------------------------------------------
// 6. Graceful shutdown.

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

/// `Handle::shutdown`: the listener stops accepting, a slow reader gets every queued byte
/// then EOF, a peer that never reads is cut at the deadline with `CloseReason::Shutdown`,
/// and `run()` returns by itself.
#[test]
fn graceful_shutdown_flushes_readers_and_cuts_the_rest() {
    const SIZE: usize = 4 << 20;
    let grace = Duration::from_secs(2);
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::new(tx)).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);

    let mut reader = small_rcvbuf_client(addr);
    let (reader_id, reader_peer, _) = recv_open(&rx);
    assert_eq!(reader_peer, Some(Addr::Inet(reader.local_addr().unwrap())));
    let mut lazy = small_rcvbuf_client(addr);
    let (lazy_id, ..) = recv_open(&rx);

    let payload = std::sync::Arc::new(random_bytes(SIZE, 42));
    let (qtx, qrx) = channel();
    let p = payload.clone();
    running
        .handle
        .post(move |_, cx| {
            // A small send buffer keeps most of the payload in the loop's own queue.
            for id in [reader_id, lazy_id] {
                cx.socket(id)
                    .unwrap()
                    .set_send_buffer_size(16 * 1024)
                    .unwrap();
            }
            cx.send(reader_id, &p).unwrap();
            cx.send(lazy_id, &p).unwrap();
            qtx.send((cx.queued(reader_id), cx.queued(lazy_id)))
                .unwrap();
        })
        .unwrap();
    let (q1, q2) = recv(&qrx);
    assert!(
        q1.unwrap() > SIZE / 2 && q2.unwrap() > SIZE / 2,
        "queued {q1:?} {q2:?}"
    );
    let start = Instant::now();
    running.handle.shutdown(grace).unwrap();
    let (stx, srx) = channel();
    running
        .handle
        .post(move |_, cx| stx.send(cx.is_open(reader_id)).unwrap())
        .unwrap();
    assert!(!recv(&srx), "shutdown closes (flushes) every connection");

    // A new connect after the shutdown began fails or is closed, and is never accepted.
    match TcpStream::connect(addr) {
        Err(_) => {}
        Ok(mut late) => {
            late.set_read_timeout(Some(DEADLINE)).unwrap();
            match late.read(&mut [0; 16]) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("late connection still served: {other:?}"),
            }
        }
    }

    // The reader reads slowly, in small pieces, and gets everything, then EOF.
    let mut got = Vec::with_capacity(SIZE);
    let mut buf = [0; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reader after {} bytes: {e}", got.len()),
        }
    }
    assert_eq!(got.len(), SIZE);
    assert!(got == *payload, "bytes differ");

    let el = within_deadline(move || running.join());
    let took = start.elapsed();
    assert!(took >= grace, "returned before the deadline: {took:?}");
    assert!(took < grace + Duration::from_secs(3), "took {took:?}");

    let mut closes = HashMap::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Ev::Close(c, why) => assert!(closes.insert(c, why).is_none()),
            Ev::Open { conn, .. } => panic!("{conn} accepted after shutdown began"),
            _ => {}
        }
    }
    assert_eq!(closes.get(&reader_id), Some(&Why::Local));
    assert_eq!(closes.get(&lazy_id), Some(&Why::Shutdown));
    let mut rest = Vec::new();
    let _ = lazy.read_to_end(&mut rest);
    assert!(rest.len() < SIZE, "the lazy peer was cut off");

    el.handler().assert_closed_once();
    assert_eq!(el.stats().closed.shutdown, 1);
    assert_books(&el, 0);
}

/// Regression: a shutdown that finished early (nothing to flush) leaves no deadline behind:
/// when the loop is run again and shut down again, peers get the new deadline, not what was
/// left of the old one.
#[test]
fn second_shutdown_gets_its_own_deadline() {
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::new(tx)).unwrap();
    el.listen(support::localhost()).unwrap();
    let first = spawn(el);
    first.handle.shutdown(Duration::from_millis(300)).unwrap();
    let mut el = within_deadline(move || first.join());
    assert_books(&el, 0);

    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let second = spawn(el);
    let _lazy = small_rcvbuf_client(addr);
    let (lazy_id, ..) = recv_open(&rx);
    let grace = Duration::from_millis(1500);
    let start = Instant::now();
    second
        .handle
        .post(move |_, cx| {
            cx.socket(lazy_id)
                .unwrap()
                .set_send_buffer_size(16 * 1024)
                .unwrap();
            cx.send(lazy_id, &random_bytes(4 << 20, 1)).unwrap();
            cx.shutdown(grace);
        })
        .unwrap();
    assert_eq!(recv_close(&rx), (lazy_id, Why::Shutdown));
    let took = start.elapsed();
    assert!(
        took >= grace,
        "cut after {took:?}, before its {grace:?} deadline"
    );
    let el = within_deadline(move || second.join());
    el.handler().assert_closed_once();
    assert_books(&el, 0);
}

/// `Context::shutdown` from a callback: a loop whose peers take their bytes finishes before
/// the deadline, and `run()` returns by itself.
#[test]
fn context_shutdown_from_callback_returns_when_flushed() {
    struct ByeOnData;
    impl Handler for ByeOnData {
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            let _ = cx.send(conn, data);
            cx.shutdown(Duration::from_secs(30));
            data.len()
        }
    }
    let mut el = EventLoop::new(ByeOnData).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = client(addr);
    let mut other = client(addr);
    let start = Instant::now();
    c.write_all(b"bye").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    let mut rest = Vec::new();
    other.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let el = within_deadline(move || running.join());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "waited for the deadline"
    );
    assert_eq!(el.stats().closed.shutdown, 0);
    assert_books(&el, 0);
}

/// The echo example shuts down gracefully on SIGTERM and SIGINT: a connected client gets
/// EOF, and the process exits with success after logging its final stats.
#[test]
fn echo_example_exits_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut echo = support::start_example("echo", &["--addr", "127.0.0.1:0"]);
        // A round trip proves run() is running, so the signal watch is installed.
        let mut c = client(echo.addr);
        assert_eq!(round_trip(&mut c, b"ping"), b"ping");
        let killed = std::process::Command::new("kill")
            .args([format!("-{signal}"), echo.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("EOF from the shutting-down server");
        assert!(rest.is_empty());
        // Its stderr closes when it exits.
        let end = Instant::now() + DEADLINE;
        let mut stopped = false;
        loop {
            match echo
                .log
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(line) => stopped |= line.contains("echo stopped"),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("echo still running {DEADLINE:?} after SIG{signal}: {e}"),
            }
        }
        let status = echo.child.wait().unwrap();
        assert!(status.success(), "SIG{signal}: {status:?}");
        assert!(stopped, "SIG{signal}: no graceful stop logged");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Half-close.

/// The peer sends 2 MiB and shuts its write side before reading anything; the default
/// `on_peer_eof` flushes, so all 2 MiB come back, then EOF.
#[test]
fn half_close_default_flushes_everything_back() {
    const SIZE: usize = 2 << 20;
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = client(addr);
    let msg = random_bytes(SIZE, 9);
    c.write_all(&msg).expect("write 2 MiB without reading");
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::with_capacity(SIZE);
    c.read_to_end(&mut back).expect("echo then EOF");
    assert_eq!(back.len(), SIZE);
    assert!(back == msg, "echo differs");
    let (conn, ..) = recv_open(&rx);
    assert!(matches!(recv(&rx), Ev::Eof(c) if c == conn));
    assert_eq!(recv_close(&rx), (conn, Why::PeerClosed));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 1);
}

/// A handler that overrides `on_peer_eof` keeps sending after the peer's EOF (a trailer),
/// then closes; the client gets echo and trailer, then EOF.
#[test]
fn half_close_handler_sends_after_peer_eof() {
    let (tx, rx) = channel();
    let probe = Probe {
        eof_trailer: Some(b"TRAILER".to_vec()),
        ..Probe::echo(tx)
    };
    let mut el = EventLoop::new(probe).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = client(addr);
    c.write_all(b"hello,").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hello,TRAILER");
    let (conn, ..) = recv_open(&rx);
    assert_eq!(recv_close(&rx), (conn, Why::PeerClosed));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 1);
}

/// `Context::shutdown_write` from the handler, with 1 MiB still queued: the client gets it
/// all, then EOF, but can still send; the handler still receives it, and later sends from
/// the handler are refused with `SendError::WriteShut`.
#[test]
fn half_close_shutdown_write_from_handler() {
    // Big enough to be queued when shutdown_write is called: FIN waits for the queue.
    let greeting = random_bytes(1 << 20, 5);
    let (tx, rx) = channel();
    let probe = Probe {
        report_data: true,
        greet_then_shutdown_write: Some(greeting.clone()),
        ..Probe::new(tx)
    };
    let mut el = EventLoop::new(probe).unwrap();
    let lid = el.listen(support::localhost()).unwrap();
    let addr = el.context().listener_addr(lid).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = client(addr);
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("greeting then EOF");
    assert!(
        got == greeting,
        "got {} of {} greeting bytes",
        got.len(),
        greeting.len()
    );
    let (conn, ..) = recv_open(&rx);

    let msg = random_bytes(500_000, 11);
    c.write_all(&msg).expect("the client can still send");
    let mut received = Vec::new();
    while received.len() < msg.len() {
        match recv(&rx) {
            Ev::SendAfterShutdown(c, sent) => {
                assert_eq!(c, conn);
                assert_eq!(
                    sent,
                    Err(SendError::WriteShut),
                    "send after shutdown_write is refused"
                );
            }
            Ev::Data(c, d) => {
                assert_eq!(c, conn);
                received.extend_from_slice(&d);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(received == msg, "handler received different bytes");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(recv_close(&rx), (conn, Why::PeerClosed));
    let el = running.stop();
    el.handler().assert_closed_once();
    assert_books(&el, 1);
}
