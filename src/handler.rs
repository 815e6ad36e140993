//! The `Handler` trait: the callbacks a program gets from its loop.

use crate::{Addr, CloseReason, ConnId, Context, ListenerId, Signal, TimerId, UdpId};
use std::io;

/// The events a program gets from its [`EventLoop`](crate::EventLoop).
///
/// One value implements it for the whole loop, so every callback sees the same state (a
/// chat room, a file root). Each connection also has a state of its own, of type
/// [`Conn`](Self::Conn), which the loop keeps beside the connection: it is created when the
/// connection opens, lent to every callback about that connection, and handed back by value
/// in `on_close`. No map from ids to state is needed. Every method has a default, so a
/// handler writes only what it needs. Callbacks act on the loop through the [`Context`];
/// they run on the loop thread and must not block.
///
/// Callbacks are grouped by family:
/// - **TCP and Unix streams**: `on_open`, `on_data`, `on_peer_eof`, `on_drain`,
///   `on_conn_timer`, `on_close`.
/// - **UDP and Unix datagrams**: `on_datagram`.
/// - **Time and process**: `on_timer`, `on_signal`, `on_listener_error`.
///
/// Lifecycle of a connection: `on_open` once (never, for an outbound connect that failed),
/// then any number of `on_data` / `on_drain` / `on_conn_timer`, at most one `on_peer_eof`,
/// and **exactly one** `on_close`, whoever closed it. After `on_close` the [`ConnId`] is
/// dead: calls with it do nothing, even if a new connection takes its slot.
///
/// ```no_run
/// use evloop::{ConnId, Context, EventLoop, Handler};
///
/// /// Counts the lines each client sent, and tells it on every line.
/// struct Counter;
///
/// impl Handler for Counter {
///     type Conn = u64; // lines seen on this connection
///
///     fn on_data(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, lines: &mut u64, input: &[u8]) -> usize {
///         let mut used = 0;
///         // Whole lines only: the loop keeps the unfinished tail and presents it again.
///         while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
///             used += nl + 1;
///             *lines += 1;
///             let _ = cx.send(conn, format!("line {lines}\n").as_bytes());
///         }
///         used
///     }
/// }
///
/// let mut el = EventLoop::new(Counter)?;
/// el.listen("127.0.0.1:7000".parse().unwrap())?;
/// el.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Handler: Sized {
    /// Per-connection state, kept by the loop beside each connection. An accepted connection
    /// starts with `Default::default()` (fill it in `on_open`); an outbound one with the
    /// value given to [`Context::connect`]. Use `()` when there is none.
    type Conn: Default;

    /// A connection is open: accepted from a listener ([`Context::listener_of`] tells which),
    /// or an outbound connect succeeded.
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, state: &mut Self::Conn) {
        let _ = (cx, conn, state);
    }

    /// Input arrived. Returns how many bytes of `input` were consumed (used up).
    ///
    /// `input` is what was left unconsumed last time followed by the bytes just read. The
    /// loop keeps the unconsumed tail and presents it again with the next bytes, or when
    /// reading resumes after a pause; so a handler consumes whole frames and returns, and
    /// never keeps a partial frame itself. When everything is consumed nothing is copied:
    /// `input` is borrowed from the loop's read buffer. The kept tail is bounded by
    /// [`Config::max_input`](crate::Config::max_input) (per connection
    /// [`Context::set_input_limit`]): past it the connection closes with
    /// [`CloseReason::InputLimit`]. The default consumes and ignores everything.
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        state: &mut Self::Conn,
        input: &[u8],
    ) -> usize {
        let _ = (cx, conn, state);
        input.len()
    }

    /// The peer shut its write side: recv returned 0. Nothing more will arrive, but the
    /// connection may still be written to.
    ///
    /// The default closes the connection after everything queued is sent (flush, then FIN);
    /// `on_close` then reports [`CloseReason::PeerClosed`]. Override it to keep sending
    /// (half-close), and call [`Context::close`] when done.
    fn on_peer_eof(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, state: &mut Self::Conn) {
        let _ = state;
        cx.close(conn);
    }

    /// The connection's output queue went above the high watermark and has now drained to
    /// the low watermark: a producer that paused can send again.
    fn on_drain(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, state: &mut Self::Conn) {
        let _ = (cx, conn, state);
    }

    /// A timer set with [`Context::set_conn_timer`] or [`Context::set_conn_interval`] on
    /// this connection fired. Such timers are cancelled when the connection closes.
    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        state: &mut Self::Conn,
        timer: TimerId,
    ) {
        let _ = (cx, conn, state, timer);
    }

    /// The connection is closed; called exactly once per connection, with its state. The id
    /// is already dead: sends to it do nothing.
    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        state: Self::Conn,
        reason: &CloseReason,
    ) {
        let _ = (cx, conn, state, reason);
    }

    /// A datagram arrived on `socket` from `from`. An empty datagram is a datagram.
    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        let _ = (cx, socket, data, from);
    }

    /// A timer set with [`Context::set_timer`] or [`Context::set_interval`] fired.
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) {
        let _ = (cx, timer);
    }

    /// A watched signal arrived (see
    /// [`EventLoop::watch_signals`](crate::EventLoop::watch_signals)). With
    /// [`EventLoop::shutdown_on_signals`](crate::EventLoop::shutdown_on_signals), SIGINT and
    /// SIGTERM start a graceful shutdown right after this returns. The default logs it.
    fn on_signal(&mut self, cx: &mut Context<'_, Self>, signal: Signal) {
        let _ = cx;
        log::info!("{signal}");
    }

    /// Accepting on `listener` failed: out of descriptors or kernel memory (the loop retries
    /// after [`Config::accept_retry`](crate::Config::accept_retry)), or an error about the
    /// listener itself. The default logs nothing more than the loop already did.
    fn on_listener_error(
        &mut self,
        cx: &mut Context<'_, Self>,
        listener: ListenerId,
        error: &io::Error,
    ) {
        let _ = (cx, listener, error);
    }
}
