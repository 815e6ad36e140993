//! `Context`: what a handler acts on the loop through, inside a callback.

use crate::conn::State;
use crate::core::{Core, Kind, TimerKind};
use crate::listener::{Listener, ListenerEntry};
use crate::sockopt::{self, ListenOptions, UdpOptions};
use crate::stream::Stream;
use crate::timers::TimerId;
use crate::token::Key;
use crate::udp::{Dgram, DgramSocket};
use crate::{Addr, ConnId, Handler, ListenerId, SendError, Stats, UdpId};
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Work deferred to the next tick with [`Context::defer`].
pub(crate) type Deferred<H> = Box<dyn FnOnce(&mut H, &mut Context<'_, H>) + Send>;

/// What a callback leaves for the loop that needs the handler's types: states of
/// connections it started, work it deferred.
pub(crate) struct Pending<H: Handler> {
    /// Outbound connections' states, moved beside their connections after the callback.
    pub(crate) states: Vec<(Key, H::Conn)>,
    pub(crate) deferred: Vec<Deferred<H>>,
}

impl<H: Handler> Default for Pending<H> {
    fn default() -> Self {
        Pending {
            states: Vec::new(),
            deferred: Vec::new(),
        }
    }
}

/// The loop as a handler sees it: send, close, connect, listen, set timers, stop.
///
/// Every method that takes an id checks that the id is still live: a call with the id of a
/// connection that has closed does nothing (and returns an error, `false` or `None`), even
/// if a newer connection now holds its slot.
pub struct Context<'a, H: Handler> {
    pub(crate) core: &'a mut Core,
    pub(crate) pending: &'a mut Pending<H>,
}

impl<H: Handler> Context<'_, H> {
    // ---- TCP and Unix stream connections ----

    /// Buffered sendall: writes what the kernel takes now and queues the rest, in order,
    /// to go out as the socket drains.
    ///
    /// Cost: when nothing is queued for `conn` this is one `send(2)`, so reply once per
    /// read (gather a read's replies in a buffer, then send it) rather than once per small
    /// message. Only what the kernel does not take is copied into the queue.
    ///
    /// Refused with a [`SendError`] if the connection is closed, closing, or its write side
    /// shut, or if the bytes would pass the output limit, in which case the connection is
    /// closed with [`CloseReason::OutputLimit`](crate::CloseReason::OutputLimit). Nothing of
    /// a refused send is queued.
    #[inline]
    pub fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        self.core.conn_send(conn.0, data, None)
    }

    /// [`send`](Self::send) for bytes held in a shared, reference-counted buffer: what the
    /// kernel does not take now is queued as a reference to `data`, not a copy.
    pub fn send_shared(&mut self, conn: ConnId, data: &Bytes) -> Result<(), SendError> {
        self.core.conn_send(conn.0, data, Some(data))
    }

    /// Queues `len` bytes of `file` from `offset` on, after everything already queued, to be
    /// sent with sendfile(2): the bytes go from the page cache to the socket without entering
    /// this process, resuming at the right offset after partial sends. Same backpressure
    /// (watermarks, `on_drain`) and close semantics as [`send`](Self::send); the file's
    /// bytes do not count toward `max_output`, as they are not held in memory. At most
    /// [`Config::send_file_chunk`](crate::Config::send_file_chunk) bytes go per turn, so other
    /// connections are served in between. A file that turns out shorter than `len` (truncated
    /// while sending) closes the connection with a `CloseReason::Error` saying so.
    ///
    /// sendfile(2) cannot suppress SIGPIPE: Rust programs ignore it from start-up, but a host
    /// program that restores its default action must not use this.
    pub fn send_file(
        &mut self,
        conn: ConnId,
        file: impl Into<std::sync::Arc<std::fs::File>>,
        offset: u64,
        len: u64,
    ) -> Result<(), SendError> {
        let len = usize::try_from(len).map_err(|_| SendError::OutputLimit)?;
        self.core.conn_send_file(conn.0, file.into(), offset, len)
    }

    /// Sends the same bytes to many connections. They are copied once into a shared buffer;
    /// every connection that cannot take them at once queues a reference to it, so a
    /// broadcast to a thousand congested readers holds the bytes once, not a thousand
    /// times. Returns how many connections took them; the others refused as
    /// [`send`](Self::send) would.
    pub fn broadcast(&mut self, conns: impl IntoIterator<Item = ConnId>, data: &[u8]) -> usize {
        let shared = Bytes::copy_from_slice(data);
        conns
            .into_iter()
            .filter(|c| self.core.conn_send(c.0, &shared, Some(&shared)).is_ok())
            .count()
    }

    /// Closes gracefully: everything queued is sent, then FIN. Reading stops now.
    /// `on_close` follows (at the end of this tick, or once the queue drains).
    pub fn close(&mut self, conn: ConnId) {
        self.core.conn_close(conn.0)
    }

    /// Closes now: the queue is dropped and a TCP connection is reset (RST).
    pub fn abort(&mut self, conn: ConnId) {
        self.core.conn_reset(conn.0, crate::CloseReason::Aborted)
    }

    /// Shuts our write side (FIN) once the queue drains, and keeps reading: the other half
    /// of a half-close. Later sends fail with [`SendError::WriteShut`].
    pub fn shutdown_write(&mut self, conn: ConnId) {
        self.core.conn_shutdown_write(conn.0)
    }

    /// Stops handing over data from `conn` (the kernel's buffer then fills and the peer
    /// slows down) until [`resume_read`](Self::resume_read).
    pub fn pause_read(&mut self, conn: ConnId) {
        self.core.conn_set_paused(conn.0, true)
    }

    /// Resumes reading after [`pause_read`](Self::pause_read). Input the handler left
    /// unconsumed is presented again first (next tick), even if no new byte arrives.
    pub fn resume_read(&mut self, conn: ConnId) {
        self.core.conn_set_paused(conn.0, false)
    }

    /// Bytes queued for `conn` and not yet taken by the kernel (on TLS, plus plaintext held
    /// until the handshake ends); `None` if it is not open.
    pub fn queued(&mut self, conn: ConnId) -> Option<usize> {
        let conn = self.core.conn_mut(conn.0)?;
        #[cfg(feature = "tls")]
        let held = Core::tls_held(conn);
        #[cfg(not(feature = "tls"))]
        let held = 0;
        Some(conn.out.len() + held)
    }

    /// Whether `conn`'s queue is above the high watermark (and has not drained to the low
    /// one since): a producer should wait for `on_drain`.
    pub fn is_congested(&mut self, conn: ConnId) -> bool {
        self.core.conn_mut(conn.0).is_some_and(|c| c.congested)
    }

    /// Whether `conn` is open (or connecting): not closed, not closing.
    pub fn is_open(&mut self, conn: ConnId) -> bool {
        self.core
            .conn_mut(conn.0)
            .is_some_and(|c| c.state != State::Closing && !c.close_when_open)
    }

    /// The peer's address (getpeername).
    pub fn peer_addr(&mut self, conn: ConnId) -> io::Result<Addr> {
        self.conn(conn)?.stream.peer_addr()
    }

    /// Our end's address (getsockname).
    pub fn local_addr(&mut self, conn: ConnId) -> io::Result<Addr> {
        self.conn(conn)?.stream.local_addr()
    }

    /// The listener that accepted `conn`; `None` for an outbound connection.
    pub fn listener_of(&mut self, conn: ConnId) -> Option<ListenerId> {
        self.core.conn_mut(conn.0).and_then(|c| c.origin)
    }

    /// The connection's socket, for options evloop has no method for
    /// (`socket2::SockRef` borrows it; don't close it or change its blocking mode).
    ///
    /// Defaults on a new TCP connection: TCP_NODELAY on
    /// ([`Config::nodelay`](crate::Config::nodelay)), SO_KEEPALIVE off, SO_RCVBUF, SO_SNDBUF
    /// and TTL the system's (buffers autotuned).
    pub fn socket(&mut self, conn: ConnId) -> io::Result<socket2::SockRef<'_>> {
        Ok(self.conn(conn)?.stream.sock())
    }

    /// TCP_NODELAY (Nagle off). Default: on for every TCP connection
    /// ([`Config::nodelay`](crate::Config::nodelay)). An error on a Unix stream.
    pub fn set_nodelay(&mut self, conn: ConnId, on: bool) -> io::Result<()> {
        self.conn(conn)?.stream.sock().set_tcp_nodelay(on)
    }

    /// TCP keepalive: `Some(idle)` turns SO_KEEPALIVE on with the first probe after `idle`
    /// without traffic (TCP_KEEPIDLE); `None` turns it off. Default: off (system default).
    pub fn set_keepalive(&mut self, conn: ConnId, idle: Option<Duration>) -> io::Result<()> {
        let sock = self.conn(conn)?.stream.sock();
        match idle {
            Some(t) => sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(t)),
            None => sock.set_keepalive(false),
        }
    }

    /// SO_RCVBUF in bytes (Linux doubles it and caps it at `net.core.rmem_max`; setting it
    /// turns off the kernel's autotuning). Default: the system's, autotuned.
    pub fn set_recv_buffer_size(&mut self, conn: ConnId, bytes: usize) -> io::Result<()> {
        self.conn(conn)?.stream.sock().set_recv_buffer_size(bytes)
    }

    /// SO_SNDBUF in bytes (as [`set_recv_buffer_size`](Self::set_recv_buffer_size)). A
    /// small send buffer makes the loop's own queue, and so backpressure, kick in sooner.
    pub fn set_send_buffer_size(&mut self, conn: ConnId, bytes: usize) -> io::Result<()> {
        self.conn(conn)?.stream.sock().set_send_buffer_size(bytes)
    }

    /// IP_TTL (IPv4) or IPV6_UNICAST_HOPS (IPv6) of a TCP connection. Default: the system's
    /// (usually 64).
    pub fn set_ttl(&mut self, conn: ConnId, ttl: u32) -> io::Result<()> {
        let c = self.conn(conn)?;
        match c.stream.local_addr()?.as_inet() {
            Some(SocketAddr::V6(_)) => c.stream.sock().set_unicast_hops_v6(ttl),
            Some(SocketAddr::V4(_)) => c.stream.sock().set_ttl_v4(ttl),
            None => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Overrides [`Config::high_watermark`](crate::Config::high_watermark),
    /// [`low_watermark`](crate::Config::low_watermark) and
    /// [`max_output`](crate::Config::max_output) for this connection only (a bulk-transfer
    /// peer may get a bigger queue, an untrusted one a smaller cap). `low` is clamped to
    /// `high`. Takes effect at the next send or flush; a queue already above the new `high`
    /// makes the connection congested at once, and one already above the new `max_output`
    /// is not cut, but the next send closes it. Returns `false` if `conn` is not open.
    pub fn set_output_limits(
        &mut self,
        conn: ConnId,
        high: usize,
        low: usize,
        max_output: usize,
    ) -> bool {
        self.core.conn_set_limits(conn.0, |l| {
            (l.high, l.low, l.max_output) = (high, low, max_output);
        })
    }

    /// Overrides [`Config::max_input`](crate::Config::max_input) for this connection: the
    /// most input it may leave unconsumed (a protocol with large frames raises it, an
    /// untrusted peer gets less). Checked the next time input is kept. Returns `false` if
    /// `conn` is not open.
    pub fn set_input_limit(&mut self, conn: ConnId, max_input: usize) -> bool {
        self.core
            .conn_set_limits(conn.0, |l| l.max_input = max_input)
    }

    /// Bytes of input `conn` left unconsumed, kept by the loop; `None` if it is not open.
    pub fn kept_input(&mut self, conn: ConnId) -> Option<usize> {
        self.core.conn_mut(conn.0).map(|c| c.input.len())
    }

    /// Starts a non-blocking TCP connect (the event-loop connect_ex), with `state` as the
    /// connection's state. The connection is handed to `on_open` once connected, or to
    /// `on_close` (with its state) with
    /// [`CloseReason::ConnectFailed`](crate::CloseReason::ConnectFailed) or
    /// [`ConnectTimeout`](crate::CloseReason::ConnectTimeout) if it never does. Sends made
    /// before it opens are queued. Fails while the loop is shutting down.
    pub fn connect(&mut self, addr: SocketAddr, state: H::Conn) -> io::Result<ConnId> {
        self.refuse_during_shutdown()?;
        let stream = mio::net::TcpStream::connect(addr)?;
        self.add_outbound(Stream::Tcp(stream), state)
    }

    /// Connects to a Unix stream socket at `path`, as [`connect`](Self::connect) does.
    pub fn connect_unix(&mut self, path: impl AsRef<Path>, state: H::Conn) -> io::Result<ConnId> {
        self.refuse_during_shutdown()?;
        let stream = mio::net::UnixStream::connect(path)?;
        self.add_outbound(Stream::Unix(stream), state)
    }

    /// Takes over a TCP connection accepted elsewhere (another loop, another thread, a
    /// socket handed over by a supervisor): it is made non-blocking, registered, and handed
    /// to `on_open` with a default state right after this callback, like an accepted one.
    /// Counts toward `max_connections` (past it, the socket is closed and this fails).
    pub fn adopt(&mut self, stream: std::net::TcpStream) -> io::Result<ConnId> {
        if self.core.stats.connections_open >= self.core.config.max_connections as u64 {
            self.core.stats.refused += 1;
            return Err(io::Error::other("max_connections reached"));
        }
        stream.set_nonblocking(true)?;
        let stream = Stream::Tcp(mio::net::TcpStream::from_std(stream));
        let key = self.core.register_conn(stream, State::Open, None)?;
        self.core.stats.accepted += 1;
        self.core.adopted.push(key);
        self.core.unsettled = true;
        Ok(ConnId(key))
    }

    /// Starts a TLS connection (feature `tls`): a TCP connect as [`connect`](Self::connect),
    /// then a handshake for `server_name` with `config` (see `evloop::tls::client_config`).
    /// The handler sees plaintext through the same callbacks and `send`; `on_open` comes
    /// when TCP connects (sends made before the handshake ends are held and encrypted
    /// then). A certificate the client does not trust, or any other TLS failure, closes the
    /// connection with [`CloseReason::Tls`](crate::CloseReason::Tls).
    #[cfg(feature = "tls")]
    pub fn connect_tls(
        &mut self,
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
        state: H::Conn,
    ) -> io::Result<ConnId> {
        let session = crate::tls::Tls::client(config, server_name)?;
        let id = self.connect(addr, state)?;
        self.core.tls_attach(id.0, session);
        Ok(id)
    }

    fn add_outbound(&mut self, stream: Stream, state: H::Conn) -> io::Result<ConnId> {
        let key = self.core.register_conn(stream, State::Connecting, None)?;
        self.pending.states.push((key, state));
        self.core.unsettled = true;
        Ok(ConnId(key))
    }

    /// New sockets are refused while shutting down, so a shutdown always ends.
    fn refuse_during_shutdown(&self) -> io::Result<()> {
        if self.core.shutdown.is_some() {
            return Err(io::Error::other("the loop is shutting down"));
        }
        Ok(())
    }

    fn conn(&mut self, conn: ConnId) -> io::Result<&mut crate::conn::Conn> {
        self.core
            .conn_mut(conn.0)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    // ---- Listeners ----

    /// Listens on a TCP address (IPv4 or IPv6; port 0 picks a free port) with SO_REUSEADDR
    /// and the configured backlog.
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<ListenerId> {
        self.listen_with(addr, &ListenOptions::default())
    }

    /// Listens on a TCP address with explicit options (backlog, SO_REUSEPORT, ...).
    pub fn listen_with(
        &mut self,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> io::Result<ListenerId> {
        self.refuse_during_shutdown()?;
        let l = sockopt::tcp_listener(addr, opts, &self.core.config)?;
        self.add_listener(Listener::Tcp(l))
    }

    /// Listens on a TCP address with TLS (feature `tls`): every accepted connection does a
    /// server handshake with `config` (see `evloop::tls::server_config`) and the handler sees
    /// plaintext through the same callbacks and `send`. `on_open` comes at accept; sends
    /// made before the handshake finishes are held and encrypted once it does. A failed
    /// handshake or garbage closes only that connection, with
    /// [`CloseReason::Tls`](crate::CloseReason::Tls) (the alert is sent first); one that
    /// never finishes is closed after
    /// [`Config::tls_handshake_timeout`](crate::Config::tls_handshake_timeout).
    #[cfg(feature = "tls")]
    pub fn listen_tls(
        &mut self,
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<ListenerId> {
        let id = self.listen(addr)?;
        if let Some(Kind::Listener(l)) = self.core.live_mut(id.0) {
            l.tls = Some(config);
        }
        Ok(id)
    }

    /// Listens on a Unix stream socket at `path`. A stale socket file left by a dead
    /// process is replaced; a path a live server listens on is an `AddrInUse` error.
    pub fn listen_unix(&mut self, path: impl AsRef<Path>) -> io::Result<ListenerId> {
        self.refuse_during_shutdown()?;
        let path = path.as_ref();
        let l = crate::unix::bind_listener(path)?;
        self.add_listener(Listener::Unix(l, path.to_path_buf()))
    }

    fn add_listener(&mut self, socket: Listener) -> io::Result<ListenerId> {
        let entry = ListenerEntry {
            socket,
            hand_off: None,
            #[cfg(feature = "tls")]
            tls: None,
            backing_off: false,
            failures: 0,
        };
        self.core
            .register_entry(Kind::Listener(entry))
            .map(ListenerId)
    }

    /// Routes `listener`'s accepted TCP connections through `hand_off` (`Workers`).
    pub(crate) fn set_hand_off(
        &mut self,
        listener: ListenerId,
        hand_off: crate::listener::HandOff,
    ) {
        if let Some(Kind::Listener(l)) = self.core.live_mut(listener.0) {
            l.hand_off = Some(hand_off);
        }
    }

    /// The address a listener is bound to (after port 0, the port it got).
    pub fn listener_addr(&mut self, listener: ListenerId) -> io::Result<Addr> {
        match self.core.live_mut(listener.0) {
            Some(Kind::Listener(l)) => l.socket.local_addr(),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// Stops listening; connections it accepted stay open.
    pub fn close_listener(&mut self, listener: ListenerId) {
        if let Some(Kind::Listener(_)) = self.core.live_mut(listener.0) {
            self.core.kill(listener.0, crate::CloseReason::Local);
        }
    }

    // ---- Datagram sockets ----

    /// Binds a UDP socket (IPv4 or IPv6, port 0 works).
    pub fn bind_udp(&mut self, addr: SocketAddr) -> io::Result<UdpId> {
        self.bind_udp_with(addr, &UdpOptions::default())
    }

    /// Binds a UDP socket with options (SO_BROADCAST, SO_REUSEADDR/PORT, buffer sizes).
    pub fn bind_udp_with(&mut self, addr: SocketAddr, opts: &UdpOptions) -> io::Result<UdpId> {
        self.refuse_during_shutdown()?;
        let socket = sockopt::udp_socket(addr, opts)?;
        self.add_dgram(DgramSocket::Udp(socket))
    }

    /// Binds a Unix datagram socket at `path` (a stale file is replaced, as for
    /// [`listen_unix`](Self::listen_unix)); `None` makes an unbound one, which can send
    /// but not be answered.
    pub fn bind_unix_datagram(&mut self, path: Option<&Path>) -> io::Result<UdpId> {
        self.refuse_during_shutdown()?;
        let socket = match path {
            Some(p) => crate::unix::bind_datagram(p)?,
            None => mio::net::UnixDatagram::unbound()?,
        };
        self.add_dgram(DgramSocket::Unix(socket, path.map(Path::to_path_buf)))
    }

    fn add_dgram(&mut self, socket: DgramSocket) -> io::Result<UdpId> {
        self.core
            .register_entry(Kind::Dgram(Dgram::new(socket)))
            .map(UdpId)
    }

    /// Sends a datagram (sendto). If the kernel would block it is queued, up to
    /// [`Config::datagram_queue_limit`](crate::Config::datagram_queue_limit), and sent on
    /// WRITABLE; past the limit this is a `WouldBlock` error. Other errors (`EMSGSIZE` for
    /// an oversize datagram, ...) are returned once, and the datagram is dropped.
    ///
    /// Inside [`on_datagram`](crate::Handler::on_datagram) on a UDP socket (with
    /// [`Config::udp_batch`](crate::Config::udp_batch) above 1) the datagram is copied and
    /// gathered instead, and everything the callbacks of one receive batch sent goes out
    /// right after that batch, in order per socket, in as few system calls as possible
    /// (`sendmmsg`; one GSO send for a run of same-size datagrams to one address). Errors
    /// known before sending are still returned at once: a datagram larger than UDP allows
    /// (`EMSGSIZE`), the broadcast address 255.255.255.255, port 0, an unspecified address,
    /// an address of the other family, a closed socket (such datagrams are sent at once,
    /// not gathered). Errors the kernel reports only when the batch goes out (`EACCES` for a
    /// subnet broadcast without SO_BROADCAST, no route, ...), and datagrams that find the
    /// send queue full then, are logged and counted in
    /// [`Stats::datagrams_dropped`](crate::Stats::datagrams_dropped); the others still go.
    /// Everywhere else (timers, stream callbacks, posted tasks) `send_to` writes at once.
    pub fn send_to(&mut self, socket: UdpId, data: &[u8], to: &Addr) -> io::Result<()> {
        self.core.dgram_send_to(socket.0, data, to)
    }

    /// The address a datagram socket is bound to.
    pub fn udp_addr(&mut self, socket: UdpId) -> io::Result<Addr> {
        match self.core.live_mut(socket.0) {
            Some(Kind::Dgram(d)) => d.socket.local_addr(),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// The datagram socket itself, for options evloop has no method for (multicast, TTL,
    /// ...): a `socket2::SockRef` borrows it; don't close it or change its blocking mode.
    pub fn udp_socket(&mut self, socket: UdpId) -> io::Result<socket2::SockRef<'_>> {
        match self.core.live_mut(socket.0) {
            Some(Kind::Dgram(d)) => Ok(d.socket.sock()),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// Closes a datagram socket; datagrams still queued are dropped.
    pub fn close_udp(&mut self, socket: UdpId) {
        if let Some(Kind::Dgram(_)) = self.core.live_mut(socket.0) {
            self.core.kill(socket.0, crate::CloseReason::Local);
        }
    }

    // ---- Timers and the loop ----

    /// Sets a one-shot timer: `on_timer` runs with the returned id after `after`. A delay
    /// too long to represent (`Duration::MAX`) means never.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        self.core.set_timer(after, None, TimerKind::User)
    }

    /// Sets a repeating timer: `on_timer` runs every `period` until cancelled.
    pub fn set_interval(&mut self, period: Duration) -> TimerId {
        self.core.set_timer(period, Some(period), TimerKind::User)
    }

    /// Sets a one-shot timer on a connection (a request timeout, a keep-alive): after
    /// `after`, `on_conn_timer` runs with the connection's state. It is cancelled when the
    /// connection closes. `None` if `conn` is not open.
    pub fn set_conn_timer(&mut self, conn: ConnId, after: Duration) -> Option<TimerId> {
        self.core.set_conn_timer(conn.0, after, None)
    }

    /// A repeating timer on a connection (pacing, heartbeats), as
    /// [`set_conn_timer`](Self::set_conn_timer).
    pub fn set_conn_interval(&mut self, conn: ConnId, period: Duration) -> Option<TimerId> {
        self.core.set_conn_timer(conn.0, period, Some(period))
    }

    /// Cancels a timer set by the handler; returns whether it was still pending. Ids are
    /// never reused, so an old id cannot cancel a newer timer, and the loop's own timers
    /// (idle, linger, shutdown ...) cannot be cancelled through here.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.core.cancel_user_timer(timer)
    }

    /// Runs `work` on the loop thread at the start of the next tick, after this callback and
    /// the rest of this tick's events: next-tick work without a zero-delay timer. The poll
    /// does not sleep while deferred work waits.
    pub fn defer(&mut self, work: impl FnOnce(&mut H, &mut Context<'_, H>) + Send + 'static) {
        self.pending.deferred.push(Box::new(work));
    }

    /// The time this tick started (one clock read per tick).
    pub fn now(&self) -> Instant {
        self.core.now()
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Makes `run()` return after this tick; open connections stay as they are.
    pub fn stop(&mut self) {
        self.core.stopped = true;
    }

    /// Starts a graceful shutdown: stop accepting, flush every connection and close it with
    /// FIN; peers that have not taken their bytes by `deadline` are cut off with
    /// [`CloseReason::Shutdown`](crate::CloseReason::Shutdown). `run()` returns when no
    /// connection is left. New connects, listens and binds fail from now on.
    pub fn shutdown(&mut self, deadline: Duration) {
        self.core.begin_shutdown(deadline);
    }

    /// Whether a graceful shutdown is under way: new connects, listens and binds fail.
    pub fn is_shutting_down(&self) -> bool {
        self.core.shutdown.is_some()
    }
}
