//! One UDP or Unix datagram socket: receiving, and the queue behind `send_to`.
//!
//! Datagrams are read until `WouldBlock` or the per-tick budget: on UDP sockets several per
//! system call (`recvmmsg`, and GRO) into the loop's batch buffers (see udp_batch.rs), on
//! Unix ones (or with `Config::udp_batch` 1) one `recvfrom` at a time into the loop's read
//! buffer. A datagram that fills its whole buffer may have been cut short by the kernel, so
//! it is dropped with a log line rather than handed over as if complete (with the default
//! 64 KiB buffer no UDP datagram can be that large). `send_to` that meets `WouldBlock`
//! queues the datagram, up to a bound, and WRITABLE is asked for only while the queue holds
//! any; the queue leaves in batches. The receive loop, which calls the handler, is in
//! dispatch.rs.

use crate::stream::{interrupted, would_block};
use crate::{Addr, UdpId};
use mio::Interest;
use mio::event::Source;
use mio::net::{UdpSocket, UnixDatagram};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

#[path = "udp_batch.rs"]
pub(crate) mod batch;

use batch::{CorkedRun, Offload};

pub(crate) enum DgramSocket {
    Udp(UdpSocket),
    /// The path is removed again when the socket closes.
    Unix(UnixDatagram, Option<PathBuf>),
}

pub(crate) struct Dgram {
    pub(crate) socket: DgramSocket,
    pub(crate) queue: VecDeque<(Vec<u8>, Addr)>,
    pub(crate) writable_armed: bool,
    /// A UDP socket bound to an IPv6 address (it may also reach IPv4 ones, v4-mapped).
    v6: bool,
    /// GRO and GSO as they stand on this socket (UDP only).
    offload: Offload,
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
        let v6 =
            matches!(&socket, DgramSocket::Udp(s) if s.local_addr().is_ok_and(|a| a.is_ipv6()));
        Dgram {
            socket,
            queue: VecDeque::new(),
            writable_armed: false,
            v6,
            offload: Offload::default(),
        }
    }

    /// The UDP socket's descriptor; `None` for a Unix one (which keeps the plain path).
    pub(crate) fn udp_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.socket {
            DgramSocket::Udp(s) => Some(s.as_fd()),
            DgramSocket::Unix(..) => None,
        }
    }

    /// Whether a datagram of `data` to `to` may be gathered and sent with others after the
    /// receive batch: a UDP socket with nothing queued, an address of the socket's family
    /// that can take datagrams, a size UDP allows. Anything else is sent at once, so that
    /// errors the kernel gives before sending (EMSGSIZE, EACCES for a broadcast, EINVAL for
    /// port 0, EAFNOSUPPORT) are still returned by `send_to`.
    pub(crate) fn can_gather(&self, data: &[u8], to: &Addr) -> Option<SocketAddr> {
        let (DgramSocket::Udp(_), Addr::Inet(to)) = (&self.socket, to) else {
            return None;
        };
        let plain = to.port() != 0
            && !to.ip().is_unspecified()
            && match to {
                SocketAddr::V4(a) => !self.v6 && !a.ip().is_broadcast(),
                SocketAddr::V6(_) => self.v6,
            };
        (plain && data.len() <= batch::MAX_IPV4_PAYLOAD && self.queue.is_empty()).then_some(*to)
    }

    /// One batched receive (UDP only) into the loop's slots: see `batch::recv`. Asks for GRO
    /// on the first call if `offload` is on and the slots can hold what it coalesces.
    pub(crate) fn recv_batch(
        &mut self,
        bufs: &mut batch::RecvBufs,
        max: usize,
        slot: usize,
        offload: bool,
    ) -> io::Result<usize> {
        let DgramSocket::Udp(s) = &self.socket else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let gro = *self
            .offload
            .gro
            .get_or_insert_with(|| batch::enable_gro(s.as_fd(), offload, slot));
        batch::recv(s.as_fd(), bufs, max, slot, gro)
    }

    /// Sends datagrams gathered during a receive batch, in order, `batch` per system call
    /// (GSO if `offload`); what the kernel would not take is queued (at most `limit`, the
    /// rest dropped) unless `closing` (the socket was closed: the rest is dropped). Returns
    /// (sent, dropped, whether WRITABLE must be armed).
    pub(crate) fn send_gathered(
        &mut self,
        id: UdpId,
        run: &CorkedRun<'_>,
        batch: usize,
        offload: bool,
        limit: usize,
        closing: bool,
    ) -> (u64, u64, bool) {
        let DgramSocket::Udp(s) = &self.socket else {
            return (0, run.len() as u64, false);
        };
        if !offload {
            self.offload.gso_max_segment = 0;
        }
        let out = batch::send(
            s.as_fd(),
            run.len(),
            |i| run.get(i),
            &mut self.offload,
            batch,
            &id,
        );
        let mut dropped = out.failed;
        let mut rearm = false;
        if out.blocked {
            for i in out.done..run.len() {
                let (data, to) = run.get(i);
                if closing || self.queue.len() >= limit {
                    dropped += 1;
                    log::debug!(
                        "{id}: send queue full; datagram of {} B to {to} dropped",
                        data.len()
                    );
                } else {
                    self.queue.push_back((data.to_vec(), Addr::Inet(to)));
                }
            }
            if !self.queue.is_empty() && !self.writable_armed {
                self.writable_armed = true;
                rearm = true;
            }
        }
        (out.sent, dropped, rearm)
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

    /// Sends what is queued until `WouldBlock`, `batch` datagrams per system call on a UDP
    /// socket (GSO if `offload`); drops WRITABLE once the queue is empty. Returns (sent,
    /// dropped, whether the interest changed).
    pub(crate) fn flush(&mut self, id: UdpId, batch: usize, offload: bool) -> (u64, u64, bool) {
        let (mut sent, mut dropped) = (0, 0);
        if let (DgramSocket::Udp(s), true) = (&self.socket, batch > 1) {
            if !offload {
                self.offload.gso_max_segment = 0;
            }
            let queue = self.queue.make_contiguous();
            let item = |i: usize| {
                let (data, to) = &queue[i];
                // Only internet addresses are ever queued on a UDP socket.
                (
                    &data[..],
                    to.as_inet().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                )
            };
            let out = batch::send(s.as_fd(), queue.len(), item, &mut self.offload, batch, &id);
            self.queue.drain(..out.done);
            if out.blocked {
                return (out.sent, out.failed, false);
            }
            (sent, dropped) = (out.sent, out.failed);
        }
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
