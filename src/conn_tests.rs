//! The connection state machine on real socket pairs, without a loop: each operation's
//! `Effects` are checked directly. The peer is a blocking std socket with a read deadline,
//! so every wait is bounded and nothing sleeps.

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnix;
use std::time::Duration;

const HIGH: usize = 64 * 1024;
const LOW: usize = 16 * 1024;
const MAX: usize = 64 << 20;
const DEADLINE: Duration = Duration::from_secs(10);

/// An open connection on one end of a Unix socket pair; the other end, blocking with a read
/// deadline, is the peer.
fn unix_pair() -> (Conn, StdUnix) {
    let (ours, theirs) = StdUnix::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    theirs.set_write_timeout(Some(DEADLINE)).unwrap();
    let stream = Stream::Unix(mio::net::UnixStream::from_std(ours));
    (Conn::new(stream, State::Open, None, Instant::now()), theirs)
}

/// As `unix_pair`, over TCP on 127.0.0.1 (port 0).
fn tcp_pair() -> (Conn, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (theirs, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_read_timeout(Some(DEADLINE)).unwrap();
    let stream = Stream::Tcp(mio::net::TcpStream::from_std(ours));
    (Conn::new(stream, State::Open, None, Instant::now()), theirs)
}

/// A connection whose kernel send buffer is tiny, so a large send is mostly queued.
fn small_sndbuf_pair() -> (Conn, StdUnix) {
    let (c, peer) = unix_pair();
    c.stream.sock().set_send_buffer_size(4096).unwrap();
    (c, peer)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Flushes `c` while the peer reads, until the queue is empty; then reads the rest the
/// kernel holds, up to `total` bytes received (counting `already`). Returns what the peer
/// got and every flush's effects. Each peer read is bounded by its deadline.
fn deliver_all(
    c: &mut Conn,
    peer: &mut impl Read,
    total: usize,
    already: usize,
) -> (Vec<u8>, Vec<Effects>) {
    let end = Instant::now() + DEADLINE;
    let mut got = Vec::with_capacity(total);
    let mut effects = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        assert!(Instant::now() < end, "not delivered within {DEADLINE:?}");
        let e = c.flush(LOW, usize::MAX);
        assert!(
            !matches!(e.close, Some(CloseReason::Error(_))),
            "flush failed: {:?}",
            e.close
        );
        let emptied = c.out.is_empty();
        effects.push(e);
        if emptied {
            break;
        }
        // The kernel's buffer is full (else the flush would have emptied the queue), so
        // this read returns at once.
        let n = peer.read(&mut buf).expect("peer read");
        assert!(n > 0, "EOF before the queue emptied");
        got.extend_from_slice(&buf[..n]);
    }
    while already + got.len() < total {
        let n = peer.read(&mut buf).expect("peer read");
        assert!(n > 0, "EOF after {} of {total} bytes", already + got.len());
        got.extend_from_slice(&buf[..n]);
    }
    (got, effects)
}

#[test]
fn send_writes_directly_when_nothing_is_queued() {
    let (mut c, mut peer) = unix_pair();
    let e = c.send(b"hello", None, HIGH, MAX);
    assert_eq!(e.written, 5);
    assert!(
        !e.reregister && !e.ready && !e.drained && e.close.is_none(),
        "{e:?}"
    );
    assert!(c.out.is_empty());
    assert!(!c.writable_armed);
    assert_eq!(c.interest(), Interest::READABLE);
    let mut back = [0u8; 5];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    // Again over TCP.
    let (mut c, mut peer) = tcp_pair();
    let e = c.send(b"tcp bytes", None, HIGH, MAX);
    assert_eq!(e.written, 9);
    assert!(!e.reregister && e.close.is_none(), "{e:?}");
    let mut back = [0u8; 9];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"tcp bytes");
}

#[test]
fn send_queues_the_rest_arms_writable_once_and_congests_above_high() {
    let (mut c, _peer) = small_sndbuf_pair();
    let data = pattern(1 << 20);
    let e = c.send(&data, None, HIGH, MAX);
    assert!(
        e.written < data.len(),
        "a 4 KiB send buffer took {} bytes",
        e.written
    );
    assert!(e.close.is_none());
    assert!(e.reregister, "WRITABLE is armed on the way up");
    assert_eq!(c.out.len(), data.len() - e.written);
    assert!(c.writable_armed);
    assert_eq!(c.interest(), Interest::READABLE | Interest::WRITABLE);
    assert!(c.congested, "{} queued > {HIGH}", c.out.len());
    // Later sends go behind the queue: no write, no second re-registration.
    let queued = c.out.len();
    let e = c.send(b"more", None, HIGH, MAX);
    assert_eq!(e.written, 0, "bytes never jump the queue");
    assert!(!e.reregister, "WRITABLE is already armed");
    assert!(e.close.is_none());
    assert_eq!(c.out.len(), queued + 4);
}

#[test]
fn a_queue_below_high_is_not_congested() {
    let (mut c, _peer) = small_sndbuf_pair();
    let e = c.send(&pattern(256 * 1024), None, 1 << 20, MAX);
    assert!(e.reregister);
    assert!(!c.out.is_empty() && c.out.len() <= 1 << 20);
    assert!(!c.congested);
}

#[test]
fn send_past_max_output_closes_with_output_limit_and_queues_nothing() {
    let (mut c, _peer) = small_sndbuf_pair();
    let max = 100_000;
    let e = c.send(&pattern(1 << 20), None, HIGH, max);
    assert!(matches!(e.close, Some(CloseReason::OutputLimit)), "{e:?}");
    assert!(c.out.is_empty(), "nothing of the refused send is queued");
    assert!(!c.writable_armed && !e.reregister);
    // A send that fits, then one that would pass the limit with what is queued.
    let (mut c, _peer) = small_sndbuf_pair();
    let e = c.send(&pattern(80_000), None, HIGH, max);
    assert!(e.close.is_none(), "{e:?}");
    let queued = c.out.len();
    assert!(queued > 0);
    let e = c.send(&pattern(max - queued + 1), None, HIGH, max);
    assert!(matches!(e.close, Some(CloseReason::OutputLimit)), "{e:?}");
    assert_eq!(e.written, 0);
    assert_eq!(c.out.len(), queued, "the queue is left as it was");
    // Exactly up to the limit is fine.
    let e = c.send(&pattern(max - queued), None, HIGH, max);
    assert!(e.close.is_none(), "{e:?}");
    assert_eq!(c.out.len(), max);
}

#[test]
fn send_of_shared_bytes_queues_them_without_a_copy() {
    let (mut c, mut peer) = small_sndbuf_pair();
    let shared = Bytes::from(pattern(1 << 20));
    let e = c.send(&shared, Some(&shared), HIGH, MAX);
    assert!(e.close.is_none() && e.reregister);
    assert_eq!(c.out.len(), shared.len() - e.written);
    assert!(
        c.out.capacity() < 1024,
        "the queue copied: {} bytes",
        c.out.capacity()
    );
    // The same bytes copied would be held by the queue itself.
    let (mut copy, _peer2) = small_sndbuf_pair();
    let e2 = copy.send(&shared, None, HIGH, MAX);
    assert!(copy.out.capacity() >= shared.len() - e2.written);
    // And the shared queue delivers exactly the bytes, in order.
    let mut got = vec![0u8; e.written];
    peer.read_exact(&mut got).unwrap();
    let (rest, _) = deliver_all(&mut c, &mut peer, shared.len(), e.written);
    got.extend_from_slice(&rest);
    assert!(got == shared[..], "bytes differ");
}

#[test]
fn flush_delivers_in_order_disarms_writable_and_reports_the_drain() {
    let (mut c, mut peer) = small_sndbuf_pair();
    let data = pattern(1 << 20);
    let e = c.send(&data, None, HIGH, MAX);
    let first = e.written;
    assert!(c.congested);
    let e = c.send(b"tail", None, HIGH, MAX);
    assert!(e.close.is_none());
    let total = data.len() + 4;
    let mut got = vec![0u8; first];
    peer.read_exact(&mut got).unwrap();
    let (rest, effects) = deliver_all(&mut c, &mut peer, total, first);
    got.extend_from_slice(&rest);
    let mut expected = data.clone();
    expected.extend_from_slice(b"tail");
    assert!(got == expected, "bytes differ or out of order");
    assert!(c.out.is_empty());
    assert_eq!(c.out.capacity(), 0, "an emptied queue frees its memory");
    // WRITABLE dropped exactly once, by the flush that emptied the queue.
    assert_eq!(effects.iter().filter(|e| e.reregister).count(), 1);
    assert!(effects.last().unwrap().reregister);
    assert!(!c.writable_armed);
    assert_eq!(c.interest(), Interest::READABLE);
    // Congestion cleared exactly once, with `ready` (reading resumes) and `replay`.
    let drains: Vec<&Effects> = effects.iter().filter(|e| e.drained).collect();
    assert_eq!(drains.len(), 1, "{effects:?}");
    assert!(drains[0].ready);
    assert!(effects.iter().all(|e| e.ready == e.drained));
    assert!(!c.congested && c.replay);
    assert!(effects.iter().all(|e| e.close.is_none()));
    assert_eq!(
        effects.iter().map(|e| e.written).sum::<usize>(),
        total - first
    );
    // A flush with nothing queued does nothing.
    let e = c.flush(LOW, usize::MAX);
    assert!(e.written == 0 && !e.reregister && !e.drained && e.close.is_none());
}

#[test]
fn close_with_a_queue_waits_for_it_then_flush_closes_locally() {
    let (mut c, mut peer) = small_sndbuf_pair();
    let data = pattern(512 * 1024);
    let first = c.send(&data, None, HIGH, MAX).written;
    assert!(c.close().is_none(), "bytes are queued: close later");
    assert_eq!(c.state, State::Closing);
    assert!(c.close().is_none(), "closing again keeps the queue");
    assert_eq!(c.accepts_output(), Err(SendError::Closing));
    assert!(
        !c.wants_read(true) && !c.wants_read(false),
        "no reading while closing"
    );
    let mut got = vec![0u8; first];
    peer.read_exact(&mut got).unwrap();
    let (rest, effects) = deliver_all(&mut c, &mut peer, data.len(), first);
    got.extend_from_slice(&rest);
    assert!(got == data);
    let (last, before) = effects.split_last().unwrap();
    assert!(matches!(last.close, Some(CloseReason::Local)), "{last:?}");
    assert!(before.iter().all(|e| e.close.is_none()));
}

#[test]
fn close_with_an_empty_queue_is_immediate_local_or_peer_closed_after_eof() {
    let (mut c, _peer) = unix_pair();
    assert!(matches!(c.close(), Some(CloseReason::Local)));
    let (mut c, peer) = unix_pair();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(c.read_step(&mut buf), ReadStep::Eof));
    assert!(matches!(c.close(), Some(CloseReason::PeerClosed)));
    // A flush that finishes a close after the peer's EOF says so too.
    let (mut c, mut peer) = small_sndbuf_pair();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(matches!(c.read_step(&mut buf), ReadStep::Eof));
    let first = c.send(&pattern(256 * 1024), None, HIGH, MAX).written;
    assert!(c.close().is_none());
    let mut skip = vec![0u8; first];
    peer.read_exact(&mut skip).unwrap();
    let (_, effects) = deliver_all(&mut c, &mut peer, 256 * 1024, first);
    assert!(matches!(
        effects.last().unwrap().close,
        Some(CloseReason::PeerClosed)
    ));
}

#[test]
fn read_step_reports_data_blocked_and_eof() {
    let (mut c, mut peer) = unix_pair();
    let mut buf = [0u8; 64];
    assert!(matches!(c.read_step(&mut buf), ReadStep::Blocked));
    peer.write_all(b"abc").unwrap();
    match c.read_step(&mut buf) {
        ReadStep::Data(3, drained) => {
            assert_eq!(
                drained,
                cfg!(target_os = "linux"),
                "a short read proves it drained"
            );
            assert_eq!(&buf[..3], b"abc");
        }
        _ => panic!("expected 3 bytes"),
    }
    assert!(matches!(c.read_step(&mut buf), ReadStep::Blocked));
    // A read that fills the buffer proves nothing.
    peer.write_all(&[9u8; 100]).unwrap();
    assert!(matches!(c.read_step(&mut buf), ReadStep::Data(64, false)));
    assert!(matches!(c.read_step(&mut buf), ReadStep::Data(36, _)));
    // After the peer said it closed (RDHUP), a short read is no proof: read on to 0.
    c.read_closed = true;
    peer.write_all(b"xy").unwrap();
    assert!(matches!(c.read_step(&mut buf), ReadStep::Data(2, false)));
    assert!(!c.eof);
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(matches!(c.read_step(&mut buf), ReadStep::Eof));
    assert!(c.eof);
    assert!(!c.wants_read(false), "nothing more to read after EOF");
    // The write side still works after the peer's EOF (half-close).
    let e = c.send(b"still", None, HIGH, MAX);
    assert_eq!(e.written, 5);
    let mut back = [0u8; 5];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still");
}

#[test]
fn send_to_a_vanished_peer_is_an_error_not_a_signal() {
    let (mut c, peer) = unix_pair();
    drop(peer);
    let e = c.send(b"anyone?", None, HIGH, MAX);
    match e.close {
        Some(CloseReason::Error(err)) => assert_eq!(err.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected EPIPE, got {other:?}"),
    }
    assert!(c.out.is_empty());
}

#[test]
fn accepts_output_says_why_it_refuses() {
    let (mut c, mut peer) = unix_pair();
    assert_eq!(c.accepts_output(), Ok(()));
    c.shutdown_write();
    assert_eq!(c.accepts_output(), Err(SendError::WriteShut));
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing queued: FIN at once");
    // Closing wins over a shut write side.
    let (mut c, _peer) = small_sndbuf_pair();
    let _ = c.send(&pattern(256 * 1024), None, HIGH, MAX);
    c.shutdown_write();
    assert_eq!(c.accepts_output(), Err(SendError::WriteShut));
    assert!(c.close().is_none());
    assert_eq!(c.accepts_output(), Err(SendError::Closing));
}

#[test]
fn shutdown_write_with_a_queue_sends_fin_after_the_last_byte_and_keeps_reading() {
    let (mut c, mut peer) = small_sndbuf_pair();
    let data = pattern(300 * 1024);
    let first = c.send(&data, None, HIGH, MAX).written;
    c.shutdown_write();
    let mut got = vec![0u8; first];
    peer.read_exact(&mut got).unwrap();
    let (rest, effects) = deliver_all(&mut c, &mut peer, data.len(), first);
    got.extend_from_slice(&rest);
    assert!(got == data);
    assert!(
        effects.iter().all(|e| e.close.is_none()),
        "a write shutdown is no close"
    );
    let mut after = Vec::new();
    peer.read_to_end(&mut after).unwrap();
    assert!(after.is_empty(), "FIN after the queue");
    peer.write_all(b"reply").unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(c.read_step(&mut buf), ReadStep::Data(5, _)));
    assert_eq!(c.state, State::Open);
}

#[test]
fn connecting_queues_sends_and_close_waits_for_the_connect() {
    let (ours, _theirs) = StdUnix::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let stream = Stream::Unix(mio::net::UnixStream::from_std(ours));
    let mut c = Conn::new(stream, State::Connecting, None, Instant::now());
    assert!(c.writable_armed, "a connect waits for WRITABLE");
    let e = c.send(b"early", None, HIGH, MAX);
    assert_eq!(
        e.written, 0,
        "nothing is written before the connect finishes"
    );
    assert!(!e.reregister && e.close.is_none());
    assert_eq!(c.out.len(), 5);
    let e = c.flush(LOW, usize::MAX);
    assert_eq!(e.written, 0, "no flush while connecting");
    assert!(c.close().is_none(), "the queued bytes are owed");
    assert!(c.close_when_open);
    assert_eq!(c.accepts_output(), Err(SendError::Closing));
    // Nothing queued: a close while connecting is immediate.
    let (ours, _theirs) = StdUnix::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let stream = Stream::Unix(mio::net::UnixStream::from_std(ours));
    let mut c = Conn::new(stream, State::Connecting, None, Instant::now());
    assert!(matches!(c.close(), Some(CloseReason::Local)));
}

#[test]
fn set_paused_then_resumed_is_ready_and_replays() {
    let (mut c, _peer) = unix_pair();
    assert!(c.wants_read(true));
    let e = c.set_paused(true);
    assert!(!e.ready && !c.replay);
    assert!(!c.wants_read(true) && !c.wants_read(false));
    let e = c.set_paused(true);
    assert!(!e.ready, "pausing twice is no resume");
    let e = c.set_paused(false);
    assert!(
        e.ready && c.replay,
        "resuming reads (and presents kept input) next tick"
    );
    assert!(c.wants_read(true));
    c.replay = false;
    let e = c.set_paused(false);
    assert!(
        !e.ready && !c.replay,
        "resuming what was not paused does nothing"
    );
    // Congestion pauses reading only when the config says so.
    c.congested = true;
    assert!(!c.wants_read(true));
    assert!(c.wants_read(false));
}

#[test]
fn reset_drops_the_queue_and_makes_close_an_rst() {
    let (mut c, mut peer) = tcp_pair();
    c.stream.sock().set_send_buffer_size(4096).unwrap();
    peer.set_nonblocking(false).unwrap();
    let e = c.send(&pattern(4 << 20), None, HIGH, MAX);
    assert!(e.close.is_none());
    assert!(!c.out.is_empty());
    c.reset();
    assert!(c.out.is_empty());
    assert_eq!(c.out.capacity(), 0);
    assert_eq!(c.stream.sock().linger().unwrap(), Some(Duration::ZERO));
    drop(c);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let end = loop {
        match peer.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => total += n,
            Err(e) => break Some(e.kind()),
        }
    };
    assert!(total < 4 << 20, "the queue was dropped");
    assert_eq!(end, Some(io::ErrorKind::ConnectionReset), "RST, not FIN");
}

#[test]
fn finish_connect_reports_connected_or_refused() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(8);
    for (i, target) in [addr, refused].into_iter().enumerate() {
        let stream = mio::net::TcpStream::connect(target).unwrap();
        let mut c = Conn::new(Stream::Tcp(stream), State::Connecting, None, Instant::now());
        let interest = c.interest();
        poll.registry()
            .register(c.stream.source(), mio::Token(i), interest)
            .unwrap();
        let end = Instant::now() + DEADLINE;
        let result = loop {
            // Wait for the connect's WRITABLE (or error); spurious wake-ups say "not yet".
            poll.poll(
                &mut events,
                Some(end.saturating_duration_since(Instant::now())),
            )
            .unwrap();
            assert!(Instant::now() < end, "connect never finished");
            match c.finish_connect() {
                Ok(false) => continue,
                other => break other,
            }
        };
        if target == addr {
            assert!(result.unwrap());
            assert_eq!(c.state, State::Open);
        } else {
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
            assert_eq!(c.state, State::Connecting);
        }
        poll.registry().deregister(c.stream.source()).unwrap();
    }
}
