//! One UDP or Unix datagram socket: the receive loop and the queue behind `send_to`.
//!
//! Datagrams are read into the loop's buffer until `WouldBlock` or the per-tick budget. A
//! datagram that fills the whole buffer may have been cut short by the kernel, so it is
//! dropped with a log line rather than handed over as if complete (with the default 64 KiB
//! buffer no UDP datagram can be that large). `send_to` that meets `WouldBlock` queues the
//! datagram, up to a bound, and WRITABLE is asked for only while the queue holds any. The
//! receive loop, which calls the handler, is in dispatch.rs.

use crate::stream::{interrupted, would_block};
use crate::{Addr, UdpId};
use mio::Interest;
use mio::event::Source;
use mio::net::{UdpSocket, UnixDatagram};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;

pub(crate) enum DgramSocket {
    Udp(UdpSocket),
    /// The path is removed again when the socket closes.
    Unix(UnixDatagram, Option<PathBuf>),
}

pub(crate) struct Dgram {
    pub(crate) socket: DgramSocket,
    pub(crate) queue: VecDeque<(Vec<u8>, Addr)>,
    pub(crate) writable_armed: bool,
}

impl DgramSocket {
    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            DgramSocket::Udp(s) => s,
            DgramSocket::Unix(s, _) => s,
        }
    }

    pub(crate) fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Addr)> {
        match self {
            DgramSocket::Udp(s) => s.recv_from(buf).map(|(n, a)| (n, Addr::Inet(a))),
            DgramSocket::Unix(s, _) => s.recv_from(buf).map(|(n, a)| (n, Addr::Unix(a))),
        }
    }

    fn send_to(&self, data: &[u8], to: &Addr) -> io::Result<usize> {
        match (self, to) {
            (DgramSocket::Udp(s), Addr::Inet(a)) => s.send_to(data, *a),
            (DgramSocket::Unix(s, _), Addr::Unix(a)) => match a.as_pathname() {
                Some(path) => s.send_to(data, path),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot send to an unnamed unix socket",
                )),
            },
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family does not match the socket",
            )),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            DgramSocket::Udp(s) => s.local_addr().map(Addr::Inet),
            DgramSocket::Unix(s, _) => s.local_addr().map(Addr::Unix),
        }
    }

    /// The socket, for options evloop has no method for.
    pub(crate) fn sock(&self) -> socket2::SockRef<'_> {
        match self {
            DgramSocket::Udp(s) => socket2::SockRef::from(s),
            DgramSocket::Unix(s, _) => socket2::SockRef::from(s),
        }
    }
}

impl Dgram {
    pub(crate) fn new(socket: DgramSocket) -> Dgram {
        Dgram {
            socket,
            queue: VecDeque::new(),
            writable_armed: false,
        }
    }

    pub(crate) fn interest(&self) -> Interest {
        if self.writable_armed {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Sends now, or queues (at most `limit` datagrams) on `WouldBlock`. Returns whether it
    /// was sent now (`Ok(false)`: queued), and whether WRITABLE must be armed.
    pub(crate) fn send_to(
        &mut self,
        data: &[u8],
        to: &Addr,
        limit: usize,
    ) -> (io::Result<bool>, bool) {
        if self.queue.is_empty() {
            loop {
                match self.socket.send_to(data, to) {
                    Ok(_) => return (Ok(true), false),
                    Err(e) if interrupted(&e) => {}
                    Err(e) if would_block(&e) => break,
                    Err(e) => return (Err(e), false),
                }
            }
        }
        if self.queue.len() >= limit {
            return (Err(io::ErrorKind::WouldBlock.into()), false);
        }
        self.queue.push_back((data.to_vec(), to.clone()));
        let rearm = !self.writable_armed;
        self.writable_armed = true;
        (Ok(false), rearm)
    }

    /// Sends what is queued until `WouldBlock`; drops WRITABLE once the queue is empty.
    /// Returns (sent, dropped, whether the interest changed).
    pub(crate) fn flush(&mut self, id: UdpId) -> (u64, u64, bool) {
        let (mut sent, mut dropped) = (0, 0);
        while let Some((data, to)) = self.queue.front() {
            match self.socket.send_to(data, to) {
                Ok(_) => sent += 1,
                Err(e) if interrupted(&e) => continue,
                Err(e) if would_block(&e) => return (sent, dropped, false),
                Err(e) => {
                    dropped += 1;
                    log::debug!("{id}: queued datagram to {to}: {e}");
                }
            }
            self.queue.pop_front();
        }
        self.queue = VecDeque::new();
        let rearm = self.writable_armed;
        self.writable_armed = false;
        (sent, dropped, rearm)
    }
}
