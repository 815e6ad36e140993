//! Why things end or are refused: `CloseReason` (given to `on_close`) and `SendError` (what
//! a refused `send` says).

use std::{fmt, io};

/// Why a connection closed; given to [`Handler::on_close`](crate::Handler::on_close).
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (recv returned 0) and we closed ours after flushing.
    PeerClosed,
    /// [`Context::close`](crate::Context::close) finished: everything queued was sent, then
    /// FIN.
    Local,
    /// [`Context::abort`](crate::Context::abort): the queue was dropped and the connection
    /// reset.
    Aborted,
    /// A socket error: reset by the peer, broken pipe, and so on.
    Error(io::Error),
    /// No traffic for [`Config::idle_timeout`](crate::Config::idle_timeout).
    IdleTimeout,
    /// Queued output would have passed [`Config::max_output`](crate::Config::max_output).
    OutputLimit,
    /// Input the handler left unconsumed passed [`Config::max_input`](crate::Config::max_input)
    /// (a frame too large, or a peer that never finishes one).
    InputLimit,
    /// Bytes were queued and none of them left for
    /// [`Config::send_timeout`](crate::Config::send_timeout): the peer stopped reading.
    SendTimeout,
    /// TLS failed: a handshake that did not succeed (an untrusted certificate, no common
    /// protocol), a bad record, or bytes that are not TLS at all. The alert telling the peer
    /// was sent first.
    Tls(io::Error),
    /// The TLS handshake did not finish within
    /// [`Config::tls_handshake_timeout`](crate::Config::tls_handshake_timeout).
    TlsHandshakeTimeout,
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
            CloseReason::InputLimit => f.write_str("input limit exceeded"),
            CloseReason::SendTimeout => f.write_str("send timed out"),
            CloseReason::Tls(e) => write!(f, "TLS: {e}"),
            CloseReason::TlsHandshakeTimeout => f.write_str("TLS handshake timed out"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::ConnectTimeout => f.write_str("connect timed out"),
            CloseReason::Shutdown => f.write_str("shutdown deadline"),
            CloseReason::Panicked => f.write_str("handler panicked"),
        }
    }
}

/// Why [`Context::send`](crate::Context::send) refused bytes. Nothing of a refused send is
/// queued. For `OutputLimit` the connection is closed, and as the kernel may already have
/// taken the start of those bytes, it is reset (RST), never closed with a FIN that would let
/// the peer take the cut-off stream for a complete one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed (or the id never named one); it may have been closed just
    /// now by a socket error the send met.
    Closed,
    /// [`Context::close`](crate::Context::close) was called: the queue is flushing toward
    /// FIN and takes nothing more.
    Closing,
    /// [`Context::shutdown_write`](crate::Context::shutdown_write) was called.
    WriteShut,
    /// The bytes would have passed the connection's output limit
    /// ([`Config::max_output`](crate::Config::max_output)); the connection has been closed
    /// with [`CloseReason::OutputLimit`].
    OutputLimit,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Closed => "connection closed",
            SendError::Closing => "connection closing",
            SendError::WriteShut => "write side shut down",
            SendError::OutputLimit => "output limit reached; connection closed",
        })
    }
}

impl std::error::Error for SendError {}
