//! The `Handler` trait (TCP, Unix stream, datagram and timer callbacks) and `CloseReason`.

use crate::{Addr, ConnId, Context, TimerId, UdpId};
use std::{fmt, io};

/// The events a program gets from its [`EventLoop`](crate::EventLoop).
///
/// One value implements it for the whole loop, so every callback sees the same state (a
/// chat room, a file root). Every method has a default that does nothing (or, for
/// `on_peer_eof`, the usual thing), so a handler writes only what it needs. Callbacks act
/// on the loop through the [`Context`]; they run on the loop thread and must not block.
///
/// Callbacks are grouped by family:
/// - **TCP and Unix streams**: `on_open`, `on_data`, `on_peer_eof`, `on_drain`, `on_close`.
/// - **UDP and Unix datagrams**: `on_datagram`.
/// - **Time and process**: `on_timer`, `on_signal`.
///
/// Lifecycle of a connection: `on_open` once (never, for an outbound connect that failed),
/// then any number of `on_data` / `on_drain`, at most one `on_peer_eof`, and **exactly one**
/// `on_close`, whoever closed it. After `on_close` the [`ConnId`] is dead: calls with it do
/// nothing, even if a new connection takes its slot.
pub trait Handler {
    /// A connection is open: accepted from a listener, or an outbound connect succeeded.
    fn on_open(&mut self, cx: &mut Context<'_>, conn: ConnId) {
        let _ = (cx, conn);
    }

    /// Bytes arrived. `data` is borrowed from the loop's read buffer: copy what you keep.
    fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
        let _ = (cx, conn, data);
    }

    /// The peer shut its write side: recv returned 0. Nothing more will arrive, but the
    /// connection may still be written to.
    ///
    /// The default closes the connection after everything queued is sent (flush, then FIN);
    /// `on_close` then reports [`CloseReason::PeerClosed`]. Override it to keep sending
    /// (half-close), and call [`Context::close`] when done.
    fn on_peer_eof(&mut self, cx: &mut Context<'_>, conn: ConnId) {
        cx.close(conn);
    }

    /// The connection's output queue went above the high watermark and has now drained to
    /// the low watermark: a producer that paused can send again.
    fn on_drain(&mut self, cx: &mut Context<'_>, conn: ConnId) {
        let _ = (cx, conn);
    }

    /// The connection is closed; called exactly once per connection. The id is already
    /// dead: sends to it do nothing.
    fn on_close(&mut self, cx: &mut Context<'_>, conn: ConnId, reason: &CloseReason) {
        let _ = (cx, conn, reason);
    }

    /// A datagram arrived on `socket` from `from`. An empty datagram is a datagram.
    fn on_datagram(&mut self, cx: &mut Context<'_>, socket: UdpId, data: &[u8], from: &Addr) {
        let _ = (cx, socket, data, from);
    }

    /// A timer set with [`Context::set_timer`] or [`Context::set_interval`] fired.
    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        let _ = (cx, timer);
    }

    /// A signal installed with [`EventLoop::watch_signals`](crate::EventLoop::watch_signals)
    /// arrived. The default starts a graceful shutdown with a 5 s deadline.
    fn on_signal(&mut self, cx: &mut Context<'_>, signal: i32) {
        log::info!("signal {signal}: shutting down");
        cx.shutdown(std::time::Duration::from_secs(5));
    }
}

/// Why a connection closed; given to [`Handler::on_close`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (recv returned 0) and we closed ours after flushing.
    PeerClosed,
    /// [`Context::close`] finished: everything queued was sent, then FIN.
    Local,
    /// [`Context::abort`]: the queue was dropped and the connection reset.
    Aborted,
    /// A socket error: reset by the peer, broken pipe, and so on.
    Error(io::Error),
    /// No traffic for [`Config::idle_timeout`](crate::Config::idle_timeout).
    IdleTimeout,
    /// Queued output would have passed [`Config::max_output`](crate::Config::max_output).
    OutputLimit,
    /// An outbound connect failed (refused, unreachable, ...); the connection never opened.
    ConnectFailed(io::Error),
    /// An outbound connect did not finish within its timeout; it never opened.
    ConnectTimeout,
    /// A graceful shutdown reached its deadline before this peer took its bytes.
    Shutdown,
    /// A handler callback panicked while handling this connection.
    Panicked,
}

impl CloseReason {
    /// Whether the connection ended cleanly (peer EOF or a local close that flushed).
    pub fn is_clean(&self) -> bool {
        matches!(self, CloseReason::PeerClosed | CloseReason::Local)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("closed by peer"),
            CloseReason::Local => f.write_str("closed"),
            CloseReason::Aborted => f.write_str("aborted"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::OutputLimit => f.write_str("output limit exceeded"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::ConnectTimeout => f.write_str("connect timed out"),
            CloseReason::Shutdown => f.write_str("shutdown deadline"),
            CloseReason::Panicked => f.write_str("handler panicked"),
        }
    }
}
