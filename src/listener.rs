//! Accepting: a TCP or Unix listener, drained until `WouldBlock` or the per-tick budget.
//!
//! Edge-triggered readiness does not repeat itself, so a listener whose budget ran out is put
//! on the ready list and accepted from again next tick without waiting for a new edge. On
//! EMFILE/ENFILE the listener waits for a retry timer instead of spinning on an accept that
//! keeps failing (the pending connection keeps the listener readable, and nothing else would
//! wake it once descriptors free up). The accept loop, which calls the handler, is in
//! dispatch.rs; this file is the socket side.

use crate::stream::{interrupted, would_block};
use crate::{Addr, stream::Stream};
use mio::event::Source;
use mio::net::{TcpListener, UnixListener};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The path is removed again when the listener closes.
    Unix(UnixListener, PathBuf),
}

/// Where a listener's accepted TCP connections go: `Some(stream)` back to serve it on this
/// loop, `None` if it was handed to another loop (`Workers::listen_round_robin`).
pub(crate) type HandOff = Box<dyn FnMut(std::net::TcpStream) -> Option<std::net::TcpStream> + Send>;

pub(crate) struct ListenerEntry {
    pub(crate) socket: Listener,
    /// Set for a listener whose connections are spread over several loops.
    pub(crate) hand_off: Option<HandOff>,
    /// Set for a TLS listener: each accepted connection gets a server session.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Waiting for the retry timer after EMFILE/ENFILE/ENOBUFS/ENOMEM.
    pub(crate) backing_off: bool,
    /// Back-offs in a row without a connection accepted in between.
    pub(crate) failures: u32,
}

impl Listener {
    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l, _) => l,
        }
    }

    /// A connection and, for TCP, the peer's IP address.
    fn accept(&self) -> io::Result<(Stream, Option<IpAddr>)> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .map(|(s, a)| (Stream::Tcp(s), Some(a.ip().to_canonical()))),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| (Stream::Unix(s), None)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Addr::Inet),
            Listener::Unix(l, _) => l.local_addr().map(Addr::Unix),
        }
    }
}

/// What one `accept` came to.
pub(crate) enum Accepted {
    /// A connection, and the peer's IP address (TCP).
    Conn(Stream, Option<IpAddr>),
    /// Drained: the next connection raises a new edge.
    Blocked,
    /// The kernel reported an error about one pending connection (it was reset, the
    /// network went away, ...): skip it and go on accepting.
    Skip(io::Error),
    /// Out of descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): retrying at
    /// once would spin, so back off and retry on a timer.
    BackOff(io::Error),
    /// Anything else is about the listener itself.
    Failed(io::Error),
}

impl ListenerEntry {
    /// Passes an accepted connection through the hand-off, if any: `None` if another loop
    /// took it.
    pub(crate) fn route(&mut self, stream: Stream) -> Option<Stream> {
        match (&mut self.hand_off, stream) {
            (Some(hand_off), Stream::Tcp(s)) => hand_off(std::net::TcpStream::from(s))
                .map(|s| Stream::Tcp(mio::net::TcpStream::from_std(s))),
            (_, stream) => Some(stream),
        }
    }

    /// One accept, classified.
    pub(crate) fn accept(&self) -> Accepted {
        loop {
            return match self.socket.accept() {
                Ok((stream, ip)) => Accepted::Conn(stream, ip),
                Err(e) if would_block(&e) => Accepted::Blocked,
                Err(e) if interrupted(&e) => continue,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        Accepted::BackOff(e)
                    }
                    // accept(2): errors of the pending connection, which Linux passes on
                    // ("treat them like EAGAIN by retrying"), and a firewall's EPERM.
                    Some(
                        libc::ECONNABORTED
                        | libc::ENETDOWN
                        | libc::EPROTO
                        | libc::ENOPROTOOPT
                        | libc::EHOSTDOWN
                        | libc::ENONET
                        | libc::EHOSTUNREACH
                        | libc::EOPNOTSUPP
                        | libc::ENETUNREACH
                        | libc::EPERM,
                    ) => Accepted::Skip(e),
                    _ => Accepted::Failed(e),
                },
            };
        }
    }
}
