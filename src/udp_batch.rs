//! Batched UDP: several datagrams per system call (Linux).
//!
//! **Receiving**: one `recvmmsg` fills up to `Config::udp_batch` slots of the loop's batch
//! buffer, each `read_buffer_size` bytes. The buffer belongs to the loop, not to a socket,
//! and is allocated on the first batched receive (the pages are touched only as datagrams
//! fill them). With UDP GRO on, the kernel may put a run of same-size datagrams from one
//! sender into one slot; `Received::stride` says where to cut it again, so the handler still
//! sees one datagram per `on_datagram`. GRO is asked for only when a slot can hold the
//! largest run the kernel builds (64 KiB), so a slot is never cut short by coalescing.
//!
//! **Sending**: `send` takes a run of datagrams, in order, and sends them in as few calls as
//! it can: same-size datagrams to one address (the last may be shorter) as one UDP GSO
//! `sendmsg`, the rest with `sendmmsg` (one `sendto` when there is one). Every datagram's
//! fate is known: one that fails is reported and skipped, the others still go.
//!
//! The `Cork` gathers what `on_datagram` callbacks send while the loop delivers one receive
//! batch; the loop sends it right after the batch (see `Core::dgram_flush`).
//!
//! No socket option is changed except UDP_GRO. nix (recvmmsg, the GSO and GRO control
//! messages) and rustix (sendmmsg) hold the unsafe code.

use crate::token::Key;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    setsockopt, sockopt,
};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Datagrams one system call moves at most, and segments in one GSO send (the kernel's
/// UDP_MAX_SEGMENTS was 64 until Linux 6.9).
pub(crate) const MAX_BATCH: usize = 64;

/// The largest UDP payload over IPv4 (65,535 − 20 − 8). A larger datagram is never gathered:
/// it is sent at once, so that its `EMSGSIZE` comes back from `send_to`.
pub(crate) const MAX_IPV4_PAYLOAD: usize = 65_507;

/// Bytes of payload in one GSO send at most (one IP packet's worth, headers aside).
const GSO_MAX_BYTES: usize = 65_000;

/// A slot must hold this much for GRO to be asked for: the kernel coalesces up to 64 KiB.
const GRO_MIN_SLOT: usize = 65_536;

/// What the cork may gather before it is sent early: datagrams and bytes.
const CORK_MAX_DATAGRAMS: usize = 1024;
const CORK_MAX_BYTES: usize = 256 * 1024;

/// One message from `recv`: `len` bytes in its slot, sent by `from`. With GRO it is a run of
/// datagrams of `stride` bytes each (the last may be shorter); otherwise `stride == len`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) stride: usize,
    /// The kernel cut it short (MSG_TRUNC), or its control data was cut (MSG_CTRUNC, so a
    /// GRO run could not be split).
    pub(crate) truncated: bool,
    /// `None` for a sender that is not an internet address (cannot happen on UDP).
    pub(crate) from: Option<SocketAddr>,
}

/// The loop's batch state: receive buffers and the cork. One per loop, in `Core`.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) recv: RecvBufs,
    pub(crate) cork: Cork,
}

/// The loop's receive slots, and what the last `recv` put in them.
#[derive(Default)]
pub(crate) struct RecvBufs {
    bufs: Vec<u8>,
    slot: usize,
    pub(crate) got: Vec<Received>,
}

impl RecvBufs {
    /// The bytes of message `i` of the last `recv`.
    pub(crate) fn data(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.slot..][..self.got[i].len]
    }

    /// Room for `count` slots of `slot` bytes. Allocated zeroed, so the pages come from the
    /// kernel untouched and cost memory only once datagrams land in them.
    fn reserve(&mut self, count: usize, slot: usize) {
        if self.slot != slot || self.bufs.len() < count * slot {
            self.bufs = vec![0; count * slot];
            self.slot = slot;
        }
    }
}

/// Per socket: whether GRO was asked for, and the largest segment GSO may carry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Offload {
    /// `None` until the first batched receive decides.
    pub(crate) gro: Option<bool>,
    /// GSO sends carry segments up to this size; 0 is off. Lowered when the kernel refuses a
    /// size (EINVAL: a segment larger than the route's MTU), off on EIO (no offload).
    pub(crate) gso_max_segment: usize,
}

impl Default for Offload {
    fn default() -> Offload {
        Offload {
            gro: None,
            gso_max_segment: MAX_IPV4_PAYLOAD,
        }
    }
}

/// Turns UDP_GRO on if `want` and a slot can hold what the kernel coalesces; returns
/// whether it is on.
pub(crate) fn enable_gro(fd: BorrowedFd<'_>, want: bool, slot: usize) -> bool {
    if !want || slot < GRO_MIN_SLOT {
        return false;
    }
    match setsockopt(&fd, sockopt::UdpGroSegment, &true) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("UDP_GRO not available: {e}");
            false
        }
    }
}

/// One `recvmmsg` of at most `max` messages (at most `MAX_BATCH`) into `r`'s slots of
/// `slot` bytes; `gro`: the socket has UDP_GRO on, so each message may be a run. Returns how
/// many messages came (their metadata in `r.got`); `WouldBlock` if none was waiting.
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    r: &mut RecvBufs,
    max: usize,
    slot: usize,
    gro: bool,
) -> io::Result<usize> {
    let n = max.clamp(1, MAX_BATCH);
    r.reserve(n, slot);
    let RecvBufs { bufs, got, .. } = r;
    got.clear();
    // Headers are made anew for each call: the kernel writes each message's name and
    // control lengths back into them, and a reused header would offer less room next time.
    let cmsg = gro.then(|| nix::cmsg_space!(libc::c_int));
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, cmsg);
    let mut chunks = bufs.chunks_mut(slot);
    let mut iovs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    let results = recvmmsg(
        fd.as_raw_fd(),
        &mut headers,
        iovs[..n].iter_mut(),
        MsgFlags::empty(),
        None,
    )?;
    for m in results {
        let mut truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
        let mut stride = m.bytes;
        if gro {
            match m.cmsgs() {
                Ok(cmsgs) => {
                    for c in cmsgs {
                        if let ControlMessageOwned::UdpGroSegments(s) = c {
                            if s > 0 {
                                stride = s as usize;
                            }
                        }
                    }
                }
                Err(_) => truncated = true,
            }
        }
        let from = m.address.as_ref().and_then(inet_addr);
        got.push(Received {
            len: m.bytes,
            stride,
            truncated,
            from,
        });
    }
    Ok(got.len())
}

fn inet_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// What `send` did with a run of datagrams.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// How many of the datagrams, from the first, are done with: sent or failed.
    pub(crate) done: usize,
    /// Taken by the kernel.
    pub(crate) sent: u64,
    /// Refused by the kernel (logged).
    pub(crate) failed: u64,
    /// The kernel would block: datagrams from `done` on are left.
    pub(crate) blocked: bool,
}

/// Sends datagrams `0..n` (`item(i)`: its bytes and address), in order, with at most
/// `batch` per `sendmmsg`; `gso`: the socket's offload state (`gso_max_segment` 0: no GSO).
/// `id` names the socket in log lines.
pub(crate) fn send<'d>(
    fd: BorrowedFd<'_>,
    n: usize,
    item: impl Fn(usize) -> (&'d [u8], SocketAddr),
    offload: &mut Offload,
    batch: usize,
    id: &dyn std::fmt::Display,
) -> Sent {
    let batch = batch.clamp(1, MAX_BATCH);
    let mut out = Sent::default();
    // Datagrams before this index go without GSO (a GSO send of them failed: they are sent
    // one by one, so that each error is known).
    let mut plain_until = 0;
    while out.done < n {
        let i = out.done;
        if i >= plain_until {
            let run = gso_run(&item, i, n, offload.gso_max_segment);
            if run >= 2 {
                match send_gso(fd, &item, i, run) {
                    Ok(()) => {
                        out.sent += run as u64;
                        out.done += run;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        out.blocked = true;
                        return out;
                    }
                    Err(e) => {
                        let segment = item(i).0.len();
                        match e.raw_os_error() {
                            Some(libc::EIO) => offload.gso_max_segment = 0,
                            Some(libc::EINVAL) => offload.gso_max_segment = segment - 1,
                            _ => {}
                        }
                        log::debug!("{id}: GSO send of {run} x {segment} B: {e}; one by one");
                        plain_until = i + run;
                        continue;
                    }
                }
            }
        }
        // Plain datagrams up to the next GSO run (or `batch` of them).
        let mut end = i + 1;
        while end < n && end - i < batch {
            if end >= plain_until
                && gso_run(&item, end, n.min(end + 2), offload.gso_max_segment) >= 2
            {
                break;
            }
            end += 1;
        }
        match send_plain(fd, &item, i, end) {
            Ok(k) => {
                out.sent += k as u64;
                out.done += k;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.blocked = true;
                return out;
            }
            // This datagram failed (sendmmsg sends those before it and stops at it, so the
            // next call starts with it and gets its error): skip it, send on.
            Err(e) => {
                let (data, to) = item(i);
                log::debug!("{id}: datagram of {} B to {to}: {e}", data.len());
                out.failed += 1;
                out.done += 1;
            }
        }
    }
    out
}

/// How many datagrams from `i` (before `n`) can go as one GSO send: same address, same
/// size (the last may be shorter), at most `MAX_BATCH` and `GSO_MAX_BYTES`. 1 if none.
fn gso_run<'d>(
    item: &impl Fn(usize) -> (&'d [u8], SocketAddr),
    i: usize,
    n: usize,
    max_segment: usize,
) -> usize {
    let (first, to) = item(i);
    let size = first.len();
    if size == 0 || size > max_segment || i + 1 >= n {
        return 1;
    }
    let mut total = size;
    let mut j = i + 1;
    while j < n && j - i < MAX_BATCH {
        let (data, dest) = item(j);
        if dest != to || data.is_empty() || data.len() > size || total + data.len() > GSO_MAX_BYTES
        {
            break;
        }
        total += data.len();
        j += 1;
        if data.len() < size {
            break; // a shorter one ends the run
        }
    }
    j - i
}

/// Datagrams `i..i + run` as one `sendmsg` with UDP_SEGMENT.
fn send_gso<'d>(
    fd: BorrowedFd<'_>,
    item: &impl Fn(usize) -> (&'d [u8], SocketAddr),
    i: usize,
    run: usize,
) -> io::Result<()> {
    let (first, to) = item(i);
    let segment = first.len() as u16;
    let iovs: [IoSlice<'d>; MAX_BATCH] = std::array::from_fn(|k| {
        if k < run {
            IoSlice::new(item(i + k).0)
        } else {
            IoSlice::new(&[])
        }
    });
    let addr = SockaddrStorage::from(to);
    nix::sys::socket::sendmsg(
        fd.as_raw_fd(),
        &iovs[..run],
        &[ControlMessage::UdpGsoSegments(&segment)],
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(())
}

/// Datagrams `i..end` without GSO: one `sendto`, or one `sendmmsg`. Returns how many the
/// kernel took (at least one), or the error of datagram `i`.
fn send_plain<'d>(
    fd: BorrowedFd<'_>,
    item: &impl Fn(usize) -> (&'d [u8], SocketAddr),
    i: usize,
    end: usize,
) -> io::Result<usize> {
    let count = end - i;
    if count == 1 {
        let (data, to) = item(i);
        rustix::net::sendto(fd, data, SendFlags::empty(), &to)?;
        return Ok(1);
    }
    let mut addrs: Vec<SocketAddrAny> = Vec::with_capacity(count);
    let mut iovs: Vec<[IoSlice<'d>; 1]> = Vec::with_capacity(count);
    for k in i..end {
        let (data, to) = item(k);
        addrs.push(SocketAddrAny::from(to));
        iovs.push([IoSlice::new(data)]);
    }
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        (0..count).map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
        .collect();
    let sent = rustix::net::sendmmsg(fd, &mut msgs, SendFlags::empty())?;
    if sent == 0 {
        // Not expected from Linux; treat like a full buffer rather than spin.
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(sent)
}

/// Datagrams gathered from `on_datagram` callbacks during one receive batch, for every
/// socket, in the order they were sent; bytes in one arena (no allocation per datagram).
#[derive(Default)]
pub(crate) struct Cork {
    /// Set while the loop delivers a receive batch: `send_to` gathers instead of writing.
    pub(crate) active: bool,
    bytes: Vec<u8>,
    items: Vec<Corked>,
}

#[derive(Clone, Copy, Debug)]
struct Corked {
    key: Key,
    start: usize,
    len: usize,
    to: SocketAddr,
}

impl Cork {
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether datagrams of socket `key` are gathered.
    pub(crate) fn holds(&self, key: Key) -> bool {
        self.items.iter().any(|c| c.key == key)
    }

    /// Gathers one datagram; returns whether the cork is full and should be sent now.
    pub(crate) fn push(&mut self, key: Key, data: &[u8], to: SocketAddr) -> bool {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.items.push(Corked {
            key,
            start,
            len: data.len(),
            to,
        });
        self.items.len() >= CORK_MAX_DATAGRAMS || self.bytes.len() >= CORK_MAX_BYTES
    }

    /// The sockets with datagrams gathered, each once, in the order they first sent.
    pub(crate) fn keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = Vec::new();
        for c in &self.items {
            if !keys.contains(&c.key) {
                keys.push(c.key);
            }
        }
        keys
    }

    /// The gathered datagrams of socket `key`, in order: how many, and each by index.
    pub(crate) fn of(&self, key: Key) -> CorkedRun<'_> {
        let all_one = self.items.first().is_some_and(|f| f.key == key)
            && self.items.iter().all(|c| c.key == key);
        let picked = if all_one {
            None
        } else {
            Some((self.items.iter().filter(|c| c.key == key).copied()).collect::<Vec<Corked>>())
        };
        CorkedRun { cork: self, picked }
    }

    /// Empties the cork, keeping its memory unless it grew past the usual.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.bytes.clear();
        if self.bytes.capacity() > CORK_MAX_BYTES * 2 {
            self.bytes = Vec::new();
        }
    }
}

/// One socket's gathered datagrams (see `Cork::of`).
pub(crate) struct CorkedRun<'c> {
    cork: &'c Cork,
    /// Only when several sockets are in the cork: this one's entries.
    picked: Option<Vec<Corked>>,
}

impl<'c> CorkedRun<'c> {
    pub(crate) fn len(&self) -> usize {
        self.picked.as_ref().map_or(self.cork.items.len(), Vec::len)
    }

    pub(crate) fn get(&self, i: usize) -> (&'c [u8], SocketAddr) {
        let c = match &self.picked {
            Some(p) => p[i],
            None => self.cork.items[i],
        };
        (&self.cork.bytes[c.start..][..c.len], c.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn gso_runs_are_same_size_to_one_address_and_may_end_shorter() {
        let d: Vec<(Vec<u8>, SocketAddr)> = vec![
            (vec![1; 100], a(1)),
            (vec![1; 100], a(1)),
            (vec![1; 50], a(1)),
            (vec![1; 100], a(1)),
            (vec![1; 100], a(2)),
            (vec![], a(2)),
            (vec![], a(2)),
        ];
        let item = |i: usize| (&d[i].0[..], d[i].1);
        assert_eq!(
            gso_run(&item, 0, d.len(), 65_507),
            3,
            "ends with the shorter one"
        );
        assert_eq!(
            gso_run(&item, 3, d.len(), 65_507),
            1,
            "another address next"
        );
        assert_eq!(
            gso_run(&item, 5, d.len(), 65_507),
            1,
            "empty datagrams never"
        );
        assert_eq!(gso_run(&item, 0, d.len(), 99), 1, "segment above the limit");
        assert_eq!(gso_run(&item, 0, d.len(), 0), 1, "off");
        let big: Vec<(Vec<u8>, SocketAddr)> = (0..200).map(|_| (vec![0; 1200], a(1))).collect();
        let item = |i: usize| (&big[i].0[..], big[i].1);
        assert_eq!(
            gso_run(&item, 0, big.len(), 65_507),
            54,
            "65,000 bytes at most"
        );
        let small: Vec<(Vec<u8>, SocketAddr)> = (0..200).map(|_| (vec![0; 10], a(1))).collect();
        let item = |i: usize| (&small[i].0[..], small[i].1);
        assert_eq!(gso_run(&item, 0, small.len(), 65_507), MAX_BATCH);
    }

    #[test]
    fn cork_keeps_each_sockets_order() {
        let k1 = Key {
            slot: 1,
            generation: 1,
        };
        let k2 = Key {
            slot: 2,
            generation: 1,
        };
        let mut c = Cork::default();
        assert!(!c.push(k1, b"a", a(1)));
        c.push(k2, b"bb", a(2));
        c.push(k1, b"ccc", a(3));
        assert_eq!(c.keys(), [k1, k2]);
        let r = c.of(k1);
        assert_eq!(r.len(), 2);
        assert_eq!(r.get(0), (&b"a"[..], a(1)));
        assert_eq!(r.get(1), (&b"ccc"[..], a(3)));
        let r = c.of(k2);
        assert_eq!((r.len(), r.get(0)), (1, (&b"bb"[..], a(2))));
        assert!(c.holds(k2));
        c.clear();
        assert!(c.is_empty() && !c.holds(k1));
    }
}
