//! One UDP or Unix datagram socket: the receive loop and the queue behind `send_to`.
//!
//! Datagrams are read into the loop's buffer until `WouldBlock` or the per-tick budget. A
//! datagram that fills the whole buffer may have been cut short by the kernel, so it is
//! dropped with a log line rather than handed over as if complete (with the default 64 KiB
//! buffer no UDP datagram can be that large). `send_to` that meets `WouldBlock` queues the
//! datagram, up to a bound, and WRITABLE is asked for only while the queue holds any.

use crate::core::{Core, Kind, interrupted, live_in, would_block};
use crate::{Addr, Handler, UdpId, token::Key};
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

    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Addr)> {
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

    pub(crate) fn udp(&self) -> Option<&UdpSocket> {
        match self {
            DgramSocket::Udp(s) => Some(s),
            DgramSocket::Unix(..) => None,
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
}

/// Receives datagrams on `key` until `WouldBlock` or the budget, each to `on_datagram`.
pub(crate) fn recv<H: Handler>(core: &mut Core, handler: &mut H, buf: &mut [u8], key: Key) {
    let id = UdpId(key);
    for _ in 0..core.config.datagram_budget {
        let Some(Kind::Dgram(d)) = core.live_mut(key) else {
            return;
        };
        match d.socket.recv_from(buf) {
            Ok((n, _)) if n == buf.len() => {
                core.stats.datagrams_dropped += 1;
                log::warn!("{id}: datagram of {n}+ bytes may be truncated; dropped");
            }
            Ok((n, from)) => {
                core.stats.datagrams_in += 1;
                core.invoke(handler, None, |h, cx| {
                    h.on_datagram(cx, id, &buf[..n], &from)
                });
            }
            // Drained.
            Err(e) if would_block(&e) => return,
            Err(e) if interrupted(&e) => {}
            // An ICMP error for an earlier send (ECONNREFUSED, ...): reading it cleared it.
            Err(e) => log::debug!("{id}: {e}"),
        }
    }
    core.ready.push(key);
}

impl Core {
    /// `send_to` for a datagram socket: sends now, or queues (bounded) on `WouldBlock`.
    pub(crate) fn dgram_send_to(&mut self, key: Key, data: &[u8], to: &Addr) -> io::Result<()> {
        let limit = self.config.datagram_queue_limit;
        let Some(Kind::Dgram(d)) = live_in(&mut self.slab, key) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if d.queue.is_empty() {
            loop {
                match d.socket.send_to(data, to) {
                    Ok(_) => {
                        self.stats.datagrams_out += 1;
                        return Ok(());
                    }
                    Err(e) if interrupted(&e) => {}
                    Err(e) if would_block(&e) => break,
                    Err(e) => {
                        self.stats.datagrams_dropped += 1;
                        return Err(e);
                    }
                }
            }
        }
        if d.queue.len() >= limit {
            self.stats.datagrams_dropped += 1;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        d.queue.push_back((data.to_vec(), to.clone()));
        if !d.writable_armed {
            d.writable_armed = true;
            let token = key.token();
            let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
            self.registry
                .reregister(d.socket.source(), token, interest)?;
        }
        Ok(())
    }

    /// WRITABLE on a datagram socket: send what is queued, drop WRITABLE once it is empty.
    pub(crate) fn dgram_flush(&mut self, key: Key) {
        let Some(Kind::Dgram(d)) = live_in(&mut self.slab, key) else {
            return;
        };
        while let Some((data, to)) = d.queue.front() {
            match d.socket.send_to(data, to) {
                Ok(_) => self.stats.datagrams_out += 1,
                Err(e) if interrupted(&e) => continue,
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    self.stats.datagrams_dropped += 1;
                    log::debug!("{}: queued datagram to {to}: {e}", UdpId(key));
                }
            }
            d.queue.pop_front();
        }
        d.queue = VecDeque::new();
        d.writable_armed = false;
        let token = key.token();
        if let Err(e) = self
            .registry
            .reregister(d.socket.source(), token, mio::Interest::READABLE)
        {
            log::error!("{}: reregister: {e}", UdpId(key));
        }
    }
}
