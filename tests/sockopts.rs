//! Issue 4: socket options and addresses. Listener options (backlog, SO_REUSEPORT), UDP
//! options read back from the socket, per-connection options through the typed `Context`
//! helpers and `Context::socket`, and the local/peer addresses of accepted and outbound
//! connections over IPv4 and IPv6 loopback.

mod support;

use evloop::{Addr, Config, ConnId, Context, EventLoop, Handler, ListenOptions, UdpOptions};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;
use support::*;

struct Nop;
impl Handler for Nop {
    type Conn = ();
}

fn v6_loopback() -> Option<SocketAddr> {
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Some(addr),
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}); IPv6 part skipped");
            None
        }
    }
}

// ---- Listener options ----

#[test]
fn reuse_port_lets_two_listeners_share_a_port_and_its_absence_does_not() {
    let mut el = EventLoop::new(Nop).unwrap();
    let mut cx = el.context();
    let mut shared = ListenOptions::default();
    shared.reuse_port = true;
    let first = cx.listen_with(localhost(), &shared).unwrap();
    let addr = cx.listener_addr(first).unwrap().as_inet().unwrap();
    let second = cx
        .listen_with(addr, &shared)
        .expect("second SO_REUSEPORT listener");
    assert_eq!(cx.listener_addr(second).unwrap().as_inet(), Some(addr));
    // A listener without SO_REUSEPORT cannot join them.
    let err = cx.listen(addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

    // Without SO_REUSEPORT, a second listener on a taken port fails (SO_REUSEADDR, on by
    // default, does not allow two listeners).
    let plain = cx.listen(localhost()).unwrap();
    let plain_addr = cx.listener_addr(plain).unwrap().as_inet().unwrap();
    let err = cx.listen(plain_addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    let err = cx.listen_with(plain_addr, &shared).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}

/// Connects up to `tries` clients to a listener nobody accepts from; returns how many
/// completed the handshake within `wait` each (a full accept queue drops the SYN).
fn fill_accept_queue(addr: SocketAddr, tries: usize, wait: Duration) -> (usize, Vec<TcpStream>) {
    let mut held = Vec::new();
    for _ in 0..tries {
        match TcpStream::connect_timeout(&addr, wait) {
            Ok(s) => held.push(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return (held.len(), held);
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    (held.len(), held)
}

#[test]
fn listen_backlog_option_bounds_the_accept_queue() {
    // The loop never runs, so nothing is accepted: the kernel queues at most backlog + 1
    // finished handshakes (Linux), then drops SYNs, and connect does not finish.
    let mut el = EventLoop::new(Nop).unwrap();
    let mut opts = ListenOptions::default();
    opts.backlog = Some(1);
    let small = el.context().listen_with(localhost(), &opts).unwrap();
    let small_addr = el
        .context()
        .listener_addr(small)
        .unwrap()
        .as_inet()
        .unwrap();
    let (n, _held) = fill_accept_queue(small_addr, 8, Duration::from_millis(300));
    assert!(
        (1..=2).contains(&n),
        "backlog 1 queued {n} connections (expected 2 at most)"
    );

    // The default backlog (Config::backlog, 1024) takes all of them.
    let big = el.listen(localhost()).unwrap();
    let big_addr = el.context().listener_addr(big).unwrap().as_inet().unwrap();
    let (n, _held) = fill_accept_queue(big_addr, 8, Duration::from_secs(2));
    assert_eq!(n, 8);
}

// ---- UDP options ----

#[test]
fn udp_options_are_set_on_the_socket() {
    let mut el = EventLoop::new(Nop).unwrap();
    let mut cx = el.context();

    let plain = cx.bind_udp(localhost()).unwrap();
    let s = cx.udp_socket(plain).unwrap();
    assert!(!s.broadcast().unwrap(), "SO_BROADCAST is off by default");
    assert!(!s.reuse_address().unwrap());
    assert!(!s.reuse_port().unwrap());

    let size = 32 * 1024;
    let mut opts = UdpOptions::default();
    opts.broadcast = true;
    opts.reuse_addr = true;
    opts.reuse_port = true;
    opts.recv_buffer_size = Some(size);
    opts.send_buffer_size = Some(size);
    let u = cx.bind_udp_with(localhost(), &opts).unwrap();
    let addr = cx.udp_addr(u).unwrap().as_inet().unwrap();
    let r = cx.udp_socket(u).unwrap();
    assert!(r.broadcast().unwrap(), "SO_BROADCAST");
    assert!(r.reuse_address().unwrap(), "SO_REUSEADDR");
    assert!(r.reuse_port().unwrap(), "SO_REUSEPORT");
    // Linux doubles the value asked for (room for its bookkeeping).
    let rcv = r.recv_buffer_size().unwrap();
    let snd = r.send_buffer_size().unwrap();
    assert!((size..=2 * size).contains(&rcv), "SO_RCVBUF {rcv}");
    assert!((size..=2 * size).contains(&snd), "SO_SNDBUF {snd}");
    let _ = r;

    // SO_REUSEPORT lets a second socket bind the same port; a plain one cannot.
    let twin = cx
        .bind_udp_with(addr, &opts)
        .expect("second SO_REUSEPORT socket");
    assert_eq!(cx.udp_addr(twin).unwrap().as_inet(), Some(addr));
    let err = cx.bind_udp(addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}

// ---- Per-connection options and addresses ----

/// What a connection looked like in `on_open`, and its options after setting them.
#[derive(Debug)]
struct Report {
    conn: ConnId,
    outbound: bool,
    local: Addr,
    peer: Addr,
    nodelay_default: bool,
    keepalive_default: bool,
    nodelay_after_off: bool,
    keepalive_on: bool,
    keepalive_idle: Duration,
    keepalive_after_off: bool,
    recv_buffer: usize,
    send_buffer: usize,
    ttl: u32,
}

fn probe(cx: &mut Context<'_, Prober>, conn: ConnId) -> io::Result<Report> {
    let local = cx.local_addr(conn)?;
    let peer = cx.peer_addr(conn)?;
    let outbound = cx.listener_of(conn).is_none();
    let nodelay_default = cx.socket(conn)?.tcp_nodelay()?;
    let keepalive_default = cx.socket(conn)?.keepalive()?;

    cx.set_nodelay(conn, false)?;
    let nodelay_after_off = cx.socket(conn)?.tcp_nodelay()?;
    cx.set_nodelay(conn, true)?;

    cx.set_keepalive(conn, Some(Duration::from_secs(77)))?;
    let keepalive_on = cx.socket(conn)?.keepalive()?;
    let keepalive_idle = cx.socket(conn)?.tcp_keepalive_time()?;
    cx.set_keepalive(conn, None)?;
    let keepalive_after_off = cx.socket(conn)?.keepalive()?;

    cx.set_recv_buffer_size(conn, 48 * 1024)?;
    cx.set_send_buffer_size(conn, 40 * 1024)?;
    let recv_buffer = cx.socket(conn)?.recv_buffer_size()?;
    let send_buffer = cx.socket(conn)?.send_buffer_size()?;

    cx.set_ttl(conn, 42)?;
    let ttl = match local.as_inet() {
        Some(SocketAddr::V6(_)) => cx.socket(conn)?.unicast_hops_v6()?,
        _ => cx.socket(conn)?.ttl_v4()?,
    };
    Ok(Report {
        conn,
        outbound,
        local,
        peer,
        nodelay_default,
        keepalive_default,
        nodelay_after_off,
        keepalive_on,
        keepalive_idle,
        keepalive_after_off,
        recv_buffer,
        send_buffer,
        ttl,
    })
}

struct Prober {
    tx: Sender<io::Result<Report>>,
}

impl Handler for Prober {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        let _ = self.tx.send(probe(cx, conn));
    }
}

fn check_options(r: &Report) {
    assert!(
        r.nodelay_default,
        "{}: TCP_NODELAY is on by default",
        r.conn
    );
    assert!(
        !r.keepalive_default,
        "{}: SO_KEEPALIVE is off by default",
        r.conn
    );
    assert!(!r.nodelay_after_off, "set_nodelay(false)");
    assert!(r.keepalive_on, "set_keepalive(Some) turns SO_KEEPALIVE on");
    assert_eq!(r.keepalive_idle, Duration::from_secs(77), "TCP_KEEPIDLE");
    assert!(!r.keepalive_after_off, "set_keepalive(None) turns it off");
    assert!((48 * 1024..=96 * 1024).contains(&r.recv_buffer), "{r:?}");
    assert!((40 * 1024..=80 * 1024).contains(&r.send_buffer), "{r:?}");
    assert_eq!(r.ttl, 42);
}

fn addresses_and_options_over(ip: SocketAddr) {
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Prober { tx }).unwrap();
    let l = el.listen(ip).unwrap();
    let laddr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);

    // Accepted: its local end is the client's peer, its peer is the client's local end.
    let c = client(laddr);
    let r = recv(&rx).expect("probe accepted connection");
    assert!(!r.outbound);
    assert_eq!(r.local, Addr::Inet(c.peer_addr().unwrap()));
    assert_eq!(r.peer, Addr::Inet(c.local_addr().unwrap()));
    assert_eq!(r.local.as_inet(), Some(laddr));
    check_options(&r);

    // Outbound: its peer is the remote listener, its local end is what that one accepted.
    let remote = TcpListener::bind(ip).unwrap();
    let raddr = remote.local_addr().unwrap();
    server
        .handle
        .post(move |h, cx| {
            if let Err(e) = cx.connect(raddr, ()) {
                let _ = h.tx.send(Err(e));
            }
        })
        .unwrap();
    let (accepted, from) = remote.accept().unwrap();
    let r = recv(&rx).expect("probe outbound connection");
    assert!(r.outbound);
    assert_eq!(r.peer, Addr::Inet(raddr));
    assert_eq!(r.local, Addr::Inet(from));
    assert_eq!(r.local, Addr::Inet(accepted.peer_addr().unwrap()));
    check_options(&r);
    drop(server.stop());
}

#[test]
fn addresses_and_options_of_accepted_and_outbound_ipv4() {
    addresses_and_options_over(localhost());
}

#[test]
fn addresses_and_options_of_accepted_and_outbound_ipv6() {
    if let Some(ip) = v6_loopback() {
        addresses_and_options_over(ip);
    }
}

struct Nodelay {
    tx: Sender<bool>,
}

impl Handler for Nodelay {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        let _ = self
            .tx
            .send(cx.socket(conn).unwrap().tcp_nodelay().unwrap());
    }
}

#[test]
fn config_nodelay_off_leaves_nagle_on() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.nodelay = false;
    let mut el = EventLoop::with_config(Nodelay { tx }, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let _c = client(addr);
    assert!(
        !recv(&rx),
        "TCP_NODELAY set although Config::nodelay is off"
    );
    drop(server.stop());
}

#[test]
fn options_on_a_dead_connection_are_not_connected_errors() {
    struct Closer {
        tx: Sender<Vec<io::ErrorKind>>,
    }
    impl Handler for Closer {
        type Conn = ();
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
            cx.abort(conn);
            let errs = vec![
                cx.set_nodelay(conn, true).unwrap_err().kind(),
                cx.set_keepalive(conn, None).unwrap_err().kind(),
                cx.set_recv_buffer_size(conn, 1024).unwrap_err().kind(),
                cx.set_send_buffer_size(conn, 1024).unwrap_err().kind(),
                cx.set_ttl(conn, 1).unwrap_err().kind(),
                cx.peer_addr(conn).unwrap_err().kind(),
                cx.local_addr(conn).unwrap_err().kind(),
            ];
            assert!(!cx.set_output_limits(conn, 1, 1, 1));
            let _ = self.tx.send(errs);
        }
    }
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Closer { tx }).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let _c = client(addr);
    let errs = recv(&rx);
    assert!(
        errs.iter().all(|&k| k == io::ErrorKind::NotConnected),
        "{errs:?}"
    );
    drop(server.stop());
}
