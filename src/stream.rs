//! `Stream`: a connected TCP or Unix stream socket, with the few operations the loop needs.
//!
//! Writes go through `send`/`sendmsg` with `MSG_NOSIGNAL`, so writing to a closed peer is
//! an `EPIPE` error and never a SIGPIPE, even in a host program that restored SIGPIPE's
//! default action (std's `write`/`writev` have no such flag).

use crate::Addr;
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use socket2::SockRef;
use std::io::{self, IoSlice, Read};
use std::net::Shutdown;

/// The socket would block: control flow, not an error.
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: retry it.
pub(crate) fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    #[inline]
    pub(crate) fn sock(&self) -> SockRef<'_> {
        match self {
            Stream::Tcp(s) => SockRef::from(s),
            Stream::Unix(s) => SockRef::from(s),
        }
    }

    #[inline]
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    #[inline]
    pub(crate) fn send(&self, data: &[u8]) -> io::Result<usize> {
        self.sock().send_with_flags(data, libc::MSG_NOSIGNAL)
    }

    pub(crate) fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.sock()
            .send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    pub(crate) fn peer_addr(&self) -> io::Result<Addr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(Addr::Inet),
            Stream::Unix(s) => s.peer_addr().map(Addr::Unix),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Stream::Tcp(s) => s.local_addr().map(Addr::Inet),
            Stream::Unix(s) => s.local_addr().map(Addr::Unix),
        }
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }
}

impl crate::outbuf::Sink for &Stream {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_vectored(bufs)
    }

    /// sendfile(2) has no MSG_NOSIGNAL: a write to a closed peer raises SIGPIPE, which Rust
    /// programs ignore from start-up (a host that restores it must not use `send_file`).
    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<usize> {
        let mut offset = offset;
        let out = match self {
            Stream::Tcp(s) => rustix::fs::sendfile(s, file, Some(&mut offset), len),
            Stream::Unix(s) => rustix::fs::sendfile(s, file, Some(&mut offset), len),
        };
        out.map_err(io::Error::from)
    }
}
