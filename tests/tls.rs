//! TLS under the handler (feature `tls`): rustls clients and servers against evloop, garbage
//! instead of a ClientHello, untrusted certificates, close_notify, handshake timeouts.
#![cfg(feature = "tls")]

mod support;

use evloop::tls::{client_config_der, rustls, server_config_der};
use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;
use support::*;

struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Cert {
        der: CertificateDer::from(c.cert.der().to_vec()),
        key: PrivateKeyDer::try_from(c.signing_key.serialize_der()).unwrap(),
    }
}

/// Echoes plaintext; reports each close.
struct Echo {
    tx: Sender<String>,
}

impl Handler for Echo {
    type Conn = ();
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        input: &[u8],
    ) -> usize {
        cx.send(conn, input).unwrap();
        input.len()
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
        let _ = self.tx.send(format!("{reason:?}"));
    }
}

fn tls_server(
    cert: &Cert,
    config: Config,
) -> (
    Running<Echo>,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let (tx, rx) = channel();
    let mut el = EventLoop::with_config(Echo { tx }, config).unwrap();
    let server = server_config_der(vec![cert.der.clone()], cert.key.clone_key()).unwrap();
    let l = el.listen_tls(localhost(), server).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr, rx)
}

fn rustls_client(
    cert: &Cert,
    addr: std::net::SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = client_config_der(vec![cert.der.clone()]).unwrap();
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, client(addr))
}

#[test]
fn a_rustls_client_talks_to_an_evloop_tls_server() {
    let cert = cert();
    let (server, addr, rx) = tls_server(&cert, Config::default());
    let mut c = rustls_client(&cert, addr);
    c.write_all(b"hello over tls").unwrap();
    let mut back = [0u8; 14];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello over tls");
    // close_notify from the client: the server sees the end, closes, the client reads EOF.
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(recv(&rx), "PeerClosed");
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

#[test]
fn sixteen_mib_pass_through_a_small_socket_buffer_intact() {
    struct Big(Vec<u8>);
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
            cx.send(conn, &self.0).unwrap();
            cx.close(conn);
            input.len()
        }
    }
    let cert = cert();
    let data = random_bytes(16 << 20, 9);
    let mut config = Config::default();
    config.max_output = 64 << 20;
    let mut el = EventLoop::with_config(Big(data.clone()), config).unwrap();
    let server = server_config_der(vec![cert.der.clone()], cert.key.clone_key()).unwrap();
    let l = el.listen_tls(localhost(), server).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = rustls_client(&cert, addr);
    c.write_all(b"go").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap(); // close_notify then EOF: a clean end
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    running.stop();
}

#[test]
fn garbage_instead_of_a_client_hello_gets_an_alert_and_a_close() {
    let cert = cert();
    let (server, addr, rx) = tls_server(&cert, Config::default());
    let mut c = client(addr);
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = c.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&21), "a TLS alert first: {reply:?}");
    assert!(recv(&rx).starts_with("Tls("));
    // Other connections never notice.
    let mut ok = rustls_client(&cert, addr);
    ok.write_all(b"still fine").unwrap();
    let mut back = [0u8; 10];
    ok.read_exact(&mut back).unwrap();
    let el = server.stop();
    assert_eq!(el.stats().closed.tls, 1);
}

#[test]
fn a_handshake_that_never_finishes_times_out() {
    let cert = cert();
    let mut config = Config::default();
    config.tls_handshake_timeout = Duration::from_millis(200);
    let (server, addr, rx) = tls_server(&cert, config);
    let _silent = client(addr);
    assert_eq!(recv(&rx), "TlsHandshakeTimeout");
    server.stop();
}

/// An evloop client (`connect_tls`) to an evloop server, and one that does not trust the
/// server's certificate.
#[test]
fn an_evloop_client_connects_and_an_untrusted_certificate_is_refused() {
    struct Client {
        tx: Sender<String>,
    }
    impl Handler for Client {
        type Conn = &'static str;
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut &'static str) {
            cx.send(conn, b"ping").unwrap();
        }
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            name: &mut &'static str,
            input: &[u8],
        ) -> usize {
            let _ = self
                .tx
                .send(format!("{name} got {}", String::from_utf8_lossy(input)));
            cx.close(conn);
            input.len()
        }
        fn on_close(
            &mut self,
            _: &mut Context<'_, Self>,
            _: ConnId,
            name: &'static str,
            reason: &CloseReason,
        ) {
            let _ = self.tx.send(format!("{name} closed: {reason:?}"));
        }
    }
    let cert = cert();
    let (server, addr, _rx) = tls_server(&cert, Config::default());
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Client { tx }).unwrap();
    let trusted = client_config_der(vec![cert.der.clone()]).unwrap();
    let stranger = client_config_der(vec![self::cert().der]).unwrap();
    el.context()
        .connect_tls(addr, trusted, "localhost", "good")
        .unwrap();
    el.context()
        .connect_tls(addr, stranger, "localhost", "wary")
        .unwrap();
    let client = spawn(el);
    let mut seen: Vec<String> = (0..3).map(|_| recv(&rx)).collect();
    seen.sort();
    assert_eq!(seen[0], "good closed: Local");
    assert_eq!(seen[1], "good got ping");
    assert!(seen[2].starts_with("wary closed: Tls("), "{seen:?}");
    client.stop();
    server.stop();
    let _ = Arc::new(());
}

// ---- Helpers for the tests below ----

/// A TLS listener for handler `h` with `config`, on a loop on its own thread.
fn serve<H: Handler + Send + 'static>(
    h: H,
    config: Config,
    cert: &Cert,
) -> (Running<H>, std::net::SocketAddr)
where
    H::Conn: Send,
{
    // An assertion that fails inside a callback takes the loop down, loudly.
    let mut config = config;
    config.catch_panics = false;
    let mut el = EventLoop::with_config(h, config).unwrap();
    let server = server_config_der(vec![cert.der.clone()], cert.key.clone_key()).unwrap();
    let l = el.listen_tls(localhost(), server).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr)
}

/// A rustls client whose handshake is done (so what the server does next comes after it).
fn handshaken(
    cert: &Cert,
    addr: std::net::SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut c = rustls_client(cert, addr);
    while c.conn.is_handshaking() {
        c.conn.complete_io(&mut c.sock).expect("handshake");
    }
    c
}

/// Reads until the end of the stream; `Ok` only for a clean end (close_notify before the
/// FIN): rustls reports a FIN without close_notify as `UnexpectedEof`.
fn read_all(c: &mut impl Read) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got).map(drop);
    (got, end)
}

/// Short names for close reasons, for channel messages and asserts.
fn reason_name(reason: &CloseReason) -> String {
    match reason {
        CloseReason::Tls(_) => "Tls".into(),
        other => format!("{other:?}"),
    }
}

/// Closes (or aborts, shuts down, half-closes) on command; reports each event.
struct Commands {
    tx: Sender<String>,
}

impl Handler for Commands {
    type Conn = Vec<u8>;
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        got: &mut Vec<u8>,
        input: &[u8],
    ) -> usize {
        got.extend_from_slice(input);
        while let Some(nl) = got.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = got.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..nl]).into_owned();
            let _ = self.tx.send(format!("line {line}"));
            match line.as_str() {
                "close" => {
                    cx.send(conn, b"bye\n").unwrap();
                    cx.close(conn);
                }
                "half" => {
                    cx.send(conn, b"reply\n").unwrap();
                    cx.shutdown_write(conn);
                    let refused = cx.send(conn, b"late");
                    let _ = self
                        .tx
                        .send(format!("send after shutdown_write: {refused:?}"));
                }
                "abort" => cx.abort(conn),
                _ => {
                    if let Err(e) = cx.send(conn, format!("echo {line}\n").as_bytes()) {
                        let _ = self.tx.send(format!("send failed: {e:?}"));
                    }
                }
            }
        }
        input.len()
    }
    fn on_peer_eof(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut Vec<u8>) {
        let _ = self.tx.send("peer eof".into());
        // The peer's write side is shut, ours is not: answer, then close.
        let _ = cx.send(conn, b"after your close_notify\n");
        cx.close(conn);
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: Vec<u8>, reason: &CloseReason) {
        let _ = self.tx.send(format!("closed {}", reason_name(reason)));
    }
}

// ---- close_notify, both ways ----

/// `cx.close` sends close_notify before the FIN: the rustls client sees a clean end, not
/// `UnexpectedEof` (a truncation), and the socket lingers as on plain TCP.
#[test]
fn a_server_close_sends_close_notify_before_the_fin() {
    let cert = cert();
    let (tx, rx) = channel();
    let (server, addr) = serve(Commands { tx }, Config::default(), &cert);
    let mut c = rustls_client(&cert, addr);
    c.write_all(b"hi\nclose\n").unwrap();
    let (got, end) = read_all(&mut c);
    end.expect("a clean end: close_notify, then FIN");
    assert_eq!(got, b"echo hi\nbye\n");
    assert_eq!(recv(&rx), "line hi");
    assert_eq!(recv(&rx), "line close");
    assert_eq!(recv(&rx), "closed Local");
    let el = server.stop();
    assert_eq!(el.stats().closed.local, 1);
    assert_eq!(el.stats().panics, 0);
}

/// `cx.shutdown_write` over TLS: close_notify, FIN, and reading goes on; later sends are
/// refused with `WriteShut`. The client reads a clean end, still writes, and its own
/// close_notify then ends the connection as `PeerClosed`.
#[test]
fn shutdown_write_is_a_tls_half_close() {
    let cert = cert();
    let (tx, rx) = channel();
    let (server, addr) = serve(Commands { tx }, Config::default(), &cert);
    let mut c = handshaken(&cert, addr);
    c.write_all(b"half\n").unwrap();
    let (got, end) = read_all(&mut c);
    end.expect("close_notify before the FIN");
    assert_eq!(got, b"reply\n");
    assert_eq!(recv(&rx), "line half");
    assert_eq!(recv(&rx), "send after shutdown_write: Err(WriteShut)");
    // Our side is still open, and the server still reads.
    c.write_all(b"still talking\n").unwrap();
    assert_eq!(recv(&rx), "line still talking");
    assert_eq!(recv(&rx), "send failed: WriteShut");
    c.conn.send_close_notify();
    c.flush().unwrap();
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(recv(&rx), "peer eof");
    assert_eq!(recv(&rx), "closed PeerClosed");
    let el = server.stop();
    assert_eq!(el.stats().closed.peer_closed, 1);
    assert_eq!(el.stats().panics, 0);
}

/// The peer's close_notify is its half-close: `on_peer_eof`, and the server may still
/// answer before closing; the client reads the answer, then a clean end.
#[test]
fn a_peer_close_notify_is_a_half_close_the_server_may_answer() {
    let cert = cert();
    let (tx, rx) = channel();
    let (server, addr) = serve(Commands { tx }, Config::default(), &cert);
    let mut c = handshaken(&cert, addr);
    c.write_all(b"one\n").unwrap();
    c.conn.send_close_notify();
    c.flush().unwrap();
    let (got, end) = read_all(&mut c);
    end.expect("close_notify before the FIN");
    assert_eq!(got, b"echo one\nafter your close_notify\n");
    assert_eq!(recv(&rx), "line one");
    assert_eq!(recv(&rx), "peer eof");
    assert_eq!(recv(&rx), "closed PeerClosed");
    server.stop();
}

/// `abort` resets a TLS connection: no close_notify, an RST.
#[test]
fn abort_resets_a_tls_connection() {
    let cert = cert();
    let (tx, rx) = channel();
    let (server, addr) = serve(Commands { tx }, Config::default(), &cert);
    let mut c = handshaken(&cert, addr);
    c.write_all(b"abort\n").unwrap();
    assert_eq!(recv(&rx), "line abort");
    assert_eq!(recv(&rx), "closed Aborted");
    let (got, end) = read_all(&mut c);
    assert!(got.is_empty(), "the queue is dropped: {got:?}");
    assert_eq!(
        end.expect_err("an RST").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    let el = server.stop();
    assert_eq!(el.stats().closed.aborted, 1);
}

// ---- Backpressure, deadlines, shutdown ----

const CHUNK: usize = 64 * 1024;

/// Sends 64 KiB chunks at a client that never reads, until a send is refused; reports how
/// far it got. `early`: flood in `on_open`, before the handshake (rustls holds the
/// plaintext), else on the first input (after it).
struct Flood {
    early: bool,
    tx: Sender<String>,
}

impl Flood {
    fn flood(&mut self, cx: &mut Context<'_, Self>, conn: ConnId) {
        cx.set_send_buffer_size(conn, 32 * 1024).unwrap();
        let chunk = vec![b'x'; CHUNK];
        let mut sends = 0usize;
        loop {
            if let Err(why) = cx.send(conn, &chunk) {
                let open = cx.is_open(conn);
                let _ = self
                    .tx
                    .send(format!("refused {why:?} after {sends} open {open}"));
                return;
            }
            sends += 1;
            assert!(sends < 10_000, "send never refused");
        }
    }
}

impl Handler for Flood {
    type Conn = bool;
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut bool) {
        if self.early {
            self.flood(cx, conn);
        }
    }
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        done: &mut bool,
        input: &[u8],
    ) -> usize {
        if !self.early && !*done {
            *done = true;
            self.flood(cx, conn);
        }
        input.len()
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: bool, reason: &CloseReason) {
        let _ = self.tx.send(format!("closed {}", reason_name(reason)));
    }
}

/// Encrypted output queued for a reader that never reads counts toward `max_output`: the
/// send that would pass it is refused, the connection is reset (`OutputLimit`).
#[test]
fn max_output_closes_a_tls_connection_whose_reader_never_reads() {
    let cert = cert();
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.max_output = 1 << 20;
    let (server, addr) = serve(Flood { early: false, tx }, config, &cert);
    let mut c = handshaken(&cert, addr);
    c.write_all(b"go").unwrap();
    c.flush().unwrap();
    let report = recv(&rx);
    let sends: usize = report
        .strip_prefix("refused OutputLimit after ")
        .and_then(|r| r.strip_suffix(" open false"))
        .unwrap_or_else(|| panic!("{report}"))
        .parse()
        .unwrap();
    // Each chunk is one record and a few bytes more on the wire; the kernel took some.
    assert!(
        sends * CHUNK <= (1 << 20) + 256 * 1024,
        "{sends} chunks sent"
    );
    assert_eq!(recv(&rx), "closed OutputLimit");
    let (_, end) = read_all(&mut c);
    assert_eq!(
        end.expect_err("cut off: a reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    let el = server.stop();
    assert_eq!(el.stats().closed.output_limit, 1);
}

/// Plaintext sent before the handshake finishes (rustls holds it) counts toward
/// `max_output` too: a peer that never handshakes cannot make the server hold more.
#[test]
fn plaintext_held_before_the_handshake_counts_toward_max_output() {
    let cert = cert();
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.max_output = 1 << 20;
    let (server, addr) = serve(Flood { early: true, tx }, config, &cert);
    let _silent = client(addr);
    // Exactly as many chunks as fit under the cap: nothing has left yet.
    assert_eq!(
        recv(&rx),
        format!("refused OutputLimit after {} open false", (1 << 20) / CHUNK)
    );
    assert_eq!(recv(&rx), "closed OutputLimit");
    let el = server.stop();
    assert_eq!(el.stats().closed.output_limit, 1);
}

/// Streams `total` bytes (a counter pattern) in 16 KiB sends while not congested, and goes
/// on in `on_drain`; closes when all is sent. Starts on the first input, or in `on_open`
/// (`early`, before the handshake has finished).
struct Producer {
    total: usize,
    early: bool,
    tx: Sender<String>,
}

#[derive(Default)]
struct Progress {
    sent: usize,
    drains: usize,
    max_queued: usize,
    started: bool,
}

/// The most the first `pump` may send to a client that does not read before congestion
/// stops it: the kernel's buffers (the server's send buffer, set to 16 KiB, doubled by
/// Linux; the client's receive buffer, 128 KiB before autotuning), the high watermark
/// (64 KiB) and one send, with room to spare.
const MAX_BURST: usize = 1 << 20;

fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

impl Producer {
    fn pump(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, p: &mut Progress) {
        while p.sent < self.total && !cx.is_congested(conn) {
            let n = (16 * 1024).min(self.total - p.sent);
            cx.send(conn, &pattern(p.sent, n)).unwrap();
            p.sent += n;
            p.max_queued = p.max_queued.max(cx.queued(conn).unwrap());
        }
        if p.sent == self.total {
            cx.close(conn);
        }
    }
    fn start(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, p: &mut Progress) {
        if !p.started {
            p.started = true;
            cx.set_send_buffer_size(conn, 16 * 1024).unwrap();
            self.pump(cx, conn, p);
            // The client reads only after this: the first burst meets a reader that does not
            // read, so congestion must stop it.
            let congested = cx.is_congested(conn);
            let _ = self
                .tx
                .send(format!("first burst {} congested {congested}", p.sent));
        }
    }
}

impl Handler for Producer {
    type Conn = Progress;
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, p: &mut Progress) {
        if self.early {
            self.start(cx, conn, p);
        }
    }
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        p: &mut Progress,
        input: &[u8],
    ) -> usize {
        self.start(cx, conn, p);
        input.len()
    }
    fn on_drain(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, p: &mut Progress) {
        p.drains += 1;
        assert!(!cx.is_congested(conn), "on_drain while congested");
        self.pump(cx, conn, p);
    }
    fn on_close(
        &mut self,
        _: &mut Context<'_, Self>,
        _: ConnId,
        p: Progress,
        reason: &CloseReason,
    ) {
        let _ = self.tx.send(format!(
            "closed {} sent {} drains {} max_queued {}",
            reason_name(reason),
            p.sent,
            p.drains,
            p.max_queued
        ));
    }
}

fn paced(early: bool) {
    let cert = cert();
    let (tx, rx) = channel();
    let total = 8 << 20;
    let (server, addr) = serve(Producer { total, early, tx }, Config::default(), &cert);
    let mut c = if early {
        rustls_client(&cert, addr) // the server starts at accept
    } else {
        let mut c = handshaken(&cert, addr);
        c.write_all(b"go").unwrap();
        c.flush().unwrap();
        c
    };
    let first = recv(&rx);
    let words: Vec<&str> = first.split(' ').collect();
    let burst: usize = words[2].parse().unwrap();
    assert!(
        burst <= MAX_BURST && words[4] == "true",
        "no backpressure: {first}"
    );
    let (got, end) = read_all(&mut c);
    end.expect("a clean end");
    assert_eq!(got.len(), total);
    assert!(got == pattern(0, total), "the stream arrived intact");
    let report = recv(&rx);
    let words: Vec<&str> = report.split(' ').collect();
    assert_eq!(
        &words[..4],
        ["closed", "Local", "sent", &total.to_string()],
        "{report}"
    );
    let (drains, max_queued): (usize, usize) =
        (words[5].parse().unwrap(), words[7].parse().unwrap());
    assert!(drains > 0, "on_drain never came: {report}");
    // High watermark 64 KiB, plus one 16 KiB send and its record overhead.
    assert!(max_queued <= 64 * 1024 + 16 * 1024 + 64, "{report}");
    let el = server.stop();
    assert_eq!(el.stats().panics, 0);
}

/// A producer paced by `is_congested` / `on_drain` streams 8 MiB intact over TLS with a
/// bounded queue: encrypted output counts toward the watermarks.
#[test]
fn on_drain_paces_a_producer_over_tls() {
    paced(false);
}

/// The same producer started in `on_open`, before the handshake has finished: the
/// plaintext rustls holds until then must count toward the watermarks as well.
#[test]
fn on_drain_paces_a_producer_that_starts_before_the_handshake_ends() {
    paced(true);
}

/// Idle timeout and send deadline apply to TLS connections.
#[test]
fn idle_timeout_closes_an_idle_tls_connection() {
    let cert = cert();
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::from_millis(300));
    let (server, addr) = serve(Commands { tx }, config, &cert);
    let mut c = handshaken(&cert, addr);
    c.write_all(b"ping\n").unwrap();
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"echo ping\n");
    assert_eq!(recv(&rx), "line ping");
    assert_eq!(recv(&rx), "closed IdleTimeout");
    // The client sees the end of the stream.
    let (got, _end) = read_all(&mut c);
    assert!(got.is_empty());
    let el = server.stop();
    assert_eq!(el.stats().closed.idle_timeout, 1);
}

#[test]
fn send_timeout_closes_a_tls_connection_whose_peer_stopped_reading() {
    let cert = cert();
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.send_timeout = Some(Duration::from_millis(300));
    let total = 16 << 20; // far more than the socket buffers hold
    let (server, addr) = serve(
        Producer {
            total,
            early: false,
            tx,
        },
        config,
        &cert,
    );
    let mut c = handshaken(&cert, addr);
    c.write_all(b"go").unwrap();
    c.flush().unwrap();
    assert!(recv(&rx).ends_with("congested true"));
    let report = recv(&rx);
    assert!(report.starts_with("closed SendTimeout"), "{report}");
    let el = server.stop();
    assert_eq!(el.stats().closed.send_timeout, 1);
}

/// `cx.shutdown` flushes what is queued on TLS connections, then close_notify and FIN; the
/// loop returns by itself once they are gone.
#[test]
fn graceful_shutdown_flushes_tls_records_then_close_notify() {
    struct Shutter {
        reply: Vec<u8>,
    }
    impl Handler for Shutter {
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            input: &[u8],
        ) -> usize {
            cx.set_send_buffer_size(conn, 16 * 1024).unwrap();
            cx.send(conn, &self.reply).unwrap();
            assert!(cx.queued(conn).unwrap() > 0, "a queue to flush");
            cx.shutdown(DEADLINE);
            input.len()
        }
    }
    let cert = cert();
    let reply = random_bytes(4 << 20, 7);
    let (server, addr) = serve(
        Shutter {
            reply: reply.clone(),
        },
        Config::default(),
        &cert,
    );
    let mut c = handshaken(&cert, addr);
    c.write_all(b"go").unwrap();
    let (got, end) = read_all(&mut c);
    end.expect("close_notify before the FIN");
    assert_eq!(got.len(), reply.len());
    assert!(got == reply);
    let el = server.join();
    assert_eq!(el.stats().closed.local, 1);
    assert_eq!(el.stats().closed.shutdown, 0);
    assert_eq!(el.stats().panics, 0);
}

/// A reply sent in `on_open` and a `close` right after it, before the handshake has
/// finished (a banner, a refusal): on plain TCP the peer gets the bytes, then FIN. Over TLS
/// it must get them too: the close has to wait for the handshake and the held plaintext.
#[test]
fn send_then_close_before_the_handshake_ends_still_delivers() {
    struct Banner;
    impl Handler for Banner {
        type Conn = ();
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
            cx.send(conn, b"220 hello, and goodbye\n").unwrap();
            cx.close(conn);
        }
    }
    let cert = cert();
    let (server, addr) = serve(Banner, Config::default(), &cert);
    let mut c = rustls_client(&cert, addr);
    let (got, end) = read_all(&mut c);
    end.expect("the handshake, the banner, close_notify, FIN");
    assert_eq!(got, b"220 hello, and goodbye\n");
    server.stop();
}

/// Pauses reading after every 64 KiB and resumes on a timer; checks the stream byte by byte.
struct Pauser {
    tx: Sender<String>,
}

#[derive(Default)]
struct Received {
    got: usize,
    pauses: usize,
    bad_at: Option<usize>,
}

impl Handler for Pauser {
    type Conn = Received;
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        r: &mut Received,
        input: &[u8],
    ) -> usize {
        if r.bad_at.is_none() && input != pattern(r.got, input.len()) {
            r.bad_at = Some(r.got);
        }
        let before = r.got / (64 * 1024);
        r.got += input.len();
        if r.got / (64 * 1024) != before {
            r.pauses += 1;
            cx.pause_read(conn);
            cx.set_conn_timer(conn, Duration::from_millis(1)).unwrap();
        }
        input.len()
    }
    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut Received,
        _: evloop::TimerId,
    ) {
        cx.resume_read(conn);
    }
    fn on_peer_eof(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, r: &mut Received) {
        let _ = self.tx.send(format!(
            "got {} bad_at {:?} pauses {}",
            r.got, r.bad_at, r.pauses
        ));
        cx.close(conn);
    }
    fn on_close(
        &mut self,
        _: &mut Context<'_, Self>,
        _: ConnId,
        _: Received,
        reason: &CloseReason,
    ) {
        let _ = self.tx.send(format!("closed {reason:?}"));
    }
}

/// `pause_read` in the middle of a read: the ciphertext read from the socket but not yet
/// fed to the session must be kept for when reading resumes, not dropped.
#[test]
fn pausing_in_the_middle_of_a_read_loses_no_ciphertext() {
    let cert = cert();
    let (tx, rx) = channel();
    let (server, addr) = serve(Pauser { tx }, Config::default(), &cert);
    let total = 4 << 20;
    let mut c = handshaken(&cert, addr);
    c.write_all(&pattern(0, total))
        .expect("the server reads it all");
    c.conn.send_close_notify();
    c.flush().unwrap();
    let report = recv(&rx);
    assert!(
        report.starts_with(&format!("got {total} bad_at None ")),
        "{report}"
    );
    assert_eq!(recv(&rx), "closed PeerClosed");
    let (_, end) = read_all(&mut c);
    end.expect("a clean end");
    server.stop();
}

/// Forwards one connection to `upstream`; flips the last byte of the next chunk from the
/// client once `tamper` is set. Both directions end with their peer.
fn tampering_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let tamper = Arc::new(AtomicBool::new(false));
    let flag = tamper.clone();
    std::thread::spawn(move || {
        let (down, _) = listener.accept().unwrap();
        let up = client(upstream);
        down.set_read_timeout(Some(DEADLINE)).unwrap();
        let pipe = |mut from: TcpStream, mut to: TcpStream, flag: Option<Arc<AtomicBool>>| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if flag
                    .as_ref()
                    .is_some_and(|f| f.swap(false, Ordering::SeqCst))
                {
                    buf[n - 1] ^= 0x55;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        };
        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let back = std::thread::spawn(move || pipe(u2, d2, None));
        pipe(down, up, Some(flag));
        let _ = back.join();
    });
    (addr, tamper)
}

/// A record altered in flight (one flipped byte of ciphertext) closes that connection with
/// `CloseReason::Tls` after an alert; the other connections carry on.
#[test]
fn a_bad_record_mid_stream_closes_only_that_connection() {
    let cert = cert();
    let (server, addr, rx) = tls_server(&cert, Config::default());
    let mut other = handshaken(&cert, addr);
    other.write_all(b"before").unwrap();
    let mut back = [0u8; 6];
    other.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"before");

    let (proxy, tamper) = tampering_proxy(addr);
    let mut victim = handshaken(&cert, proxy);
    victim.write_all(b"intact").unwrap();
    victim.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"intact");
    tamper.store(true, std::sync::atomic::Ordering::SeqCst);
    victim.write_all(b"tampered").unwrap();
    let reason = recv(&rx);
    assert!(
        reason.starts_with("Tls(") && reason.contains("decrypt"),
        "{reason}"
    );
    // The client is told with an alert (bad_record_mac), then the connection ends.
    let err = victim.read(&mut back).expect_err("an alert");
    assert!(err.to_string().contains("BadRecordMac"), "{err}");

    // Unaffected: the open connection, and new ones.
    other.write_all(b"after!").unwrap();
    other.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after!");
    let mut fresh = handshaken(&cert, addr);
    fresh.write_all(b"fresh!").unwrap();
    fresh.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"fresh!");
    let el = server.stop();
    assert_eq!(el.stats().closed.tls, 1);
    assert_eq!(el.stats().connections_open, 2);
}

/// A peer that connects and never finishes the handshake holds a connection slot: past
/// `max_connections` the next one is refused; when one goes, a new one is served.
#[test]
fn a_peer_that_never_finishes_the_handshake_counts_toward_max_connections() {
    struct Counted {
        tx: Sender<String>,
    }
    impl Handler for Counted {
        type Conn = ();
        fn on_open(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: &mut ()) {
            let _ = self.tx.send("open".into());
        }
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            input: &[u8],
        ) -> usize {
            cx.send(conn, input).unwrap();
            input.len()
        }
        fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
            let _ = self.tx.send(format!("closed {}", reason_name(reason)));
        }
    }
    let cert = cert();
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.max_connections = 2;
    let (server, addr) = serve(Counted { tx }, config, &cert);
    let silent1 = client(addr);
    assert_eq!(recv(&rx), "open");
    let _silent2 = client(addr);
    assert_eq!(recv(&rx), "open");
    // Full: refused (closed without a word), so no handshake.
    let mut refused = rustls_client(&cert, addr);
    let err = refused
        .conn
        .complete_io(&mut refused.sock)
        .expect_err("refused");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    // One silent peer goes: its TCP EOF mid-handshake closes it, and there is room again.
    drop(silent1);
    assert_eq!(recv(&rx), "closed PeerClosed");
    let mut ok = handshaken(&cert, addr);
    assert_eq!(recv(&rx), "open");
    ok.write_all(b"in").unwrap();
    let mut back = [0u8; 2];
    ok.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"in");
    let el = server.stop();
    let s = el.stats();
    assert_eq!(s.refused, 1);
    assert_eq!(s.accepted, 3);
    assert_eq!(s.connections_open, 2);
}

/// `send_file` on a TLS connection sends the file's bytes encrypted (sendfile(2) cannot
/// encrypt: the region is read and goes through the session), in order with other sends.
#[test]
fn send_file_over_tls_is_encrypted_and_in_order() {
    struct Files(Arc<std::fs::File>);
    impl Handler for Files {
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            input: &[u8],
        ) -> usize {
            cx.send(conn, b"<").unwrap();
            cx.send_file(conn, self.0.clone(), 10, 200_000).unwrap();
            cx.send(conn, b">").unwrap();
            cx.close(conn);
            input.len()
        }
    }
    let content = random_bytes(300_000, 4);
    let path = std::env::temp_dir().join(format!("evloop-tls-file-{}", std::process::id()));
    std::fs::write(&path, &content).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    let cert = cert();
    let mut el = EventLoop::new(Files(file)).unwrap();
    let server = server_config_der(vec![cert.der.clone()], cert.key.clone_key()).unwrap();
    let l = el.listen_tls(localhost(), server).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let running = spawn(el);
    let mut c = rustls_client(&cert, addr);
    c.write_all(b"go").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let mut expected = b"<".to_vec();
    expected.extend_from_slice(&content[10..200_010]);
    expected.push(b'>');
    assert_eq!(got.len(), expected.len());
    assert!(got == expected);
    running.stop();
    std::fs::remove_file(path).unwrap();
}
