//! Deterministic tests of the tick that need the loop's insides: events are injected by
//! token, as if poll had returned them, so orderings that real sockets make rare are exact.

use super::*;
use crate::Config;
use crate::conn::State;
use crate::stream::Stream;
use crate::{CloseReason, ConnId, SendError, TimerId};
use std::io::{Read, Write};
use std::net::TcpStream;

#[derive(Default)]
struct Rec {
    opens: Vec<ConnId>,
    data: Vec<(ConnId, Vec<u8>)>,
    closes: Vec<ConnId>,
}

impl Handler for Rec {
    type Conn = ();
    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        self.opens.push(conn);
    }
    fn on_data(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        self.data.push((conn, data.to_vec()));
        data.len()
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: (),
        _reason: &CloseReason,
    ) {
        self.closes.push(conn);
    }
}

fn tick_until(el: &mut EventLoop<Rec>, mut done: impl FnMut(&Rec) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done(el.handler()) {
        assert!(Instant::now() < end, "condition not reached");
        el.run_once(Some(Duration::from_millis(50))).unwrap();
    }
}

/// B is closed by a callback; C takes B's slot; an event still carrying B's token (as a
/// poll batch gathered before B closed would) reaches nobody, and C's bytes go to C only.
#[test]
fn stale_token_never_reaches_the_entry_that_reused_its_slot() {
    let mut el = EventLoop::new(Rec::default()).unwrap();
    let l = el.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();

    let _b_client = TcpStream::connect(addr).unwrap();
    tick_until(&mut el, |h| h.opens.len() == 1);
    let b = el.handler().opens[0];
    el.context().send(b, b"queued for B").unwrap();
    el.context().abort(b);
    el.run_once(Some(Duration::ZERO)).unwrap(); // reaps B, frees its slot
    assert_eq!(el.handler().closes, [b]);

    let mut c_client = TcpStream::connect(addr).unwrap();
    c_client.write_all(b"C's bytes").unwrap();
    tick_until(&mut el, |h| h.opens.len() == 2);
    let c = el.handler().opens[1];
    assert_eq!(c.slot(), b.slot(), "slab reuses the freed slot");
    assert_ne!(c.generation(), b.generation());

    let everything = Ready {
        readable: true,
        writable: true,
        read_closed: true,
        error: true,
    };
    el.inject(b.0.token(), everything);
    assert!(el.handler().data.is_empty(), "B's stale event read nothing");
    assert_eq!(el.handler().closes, [b], "and closed nothing");

    tick_until(&mut el, |h| !h.data.is_empty());
    assert!(el.handler().data.iter().all(|(id, _)| *id == c));
    let mut c_client = c_client;
    c_client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(c_client.read(&mut buf).is_err(), "C got none of B's queue");
}

/// Calls with a dead id do nothing, even after the slot is reused.
#[test]
fn dead_ids_are_inert() {
    let mut el = EventLoop::new(Rec::default()).unwrap();
    let l = el.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let _b = TcpStream::connect(addr).unwrap();
    tick_until(&mut el, |h| h.opens.len() == 1);
    let b = el.handler().opens[0];
    el.context().close(b);
    el.run_once(Some(Duration::ZERO)).unwrap();
    let _c = TcpStream::connect(addr).unwrap();
    tick_until(&mut el, |h| h.opens.len() == 2);
    let mut cx = el.context();
    assert_eq!(cx.send(b, b"x"), Err(SendError::Closed));
    assert!(cx.peer_addr(b).is_err());
    assert_eq!(cx.queued(b), None);
    cx.close(b);
    cx.abort(b);
    el.run_once(Some(Duration::ZERO)).unwrap();
    assert_eq!(el.handler().closes, [b], "C was not closed through B's id");
}

/// WRITABLE is in the interest set exactly while bytes are queued.
#[test]
fn writable_interest_only_while_bytes_are_queued() {
    let mut el = EventLoop::new(Rec::default()).unwrap();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let stream = Stream::Unix(mio::net::UnixStream::from_std(ours));
    let key = el.core().register_conn(stream, State::Open, None).unwrap();
    // As an outbound connect does: the state goes beside the connection (on_drain needs it).
    el.user.pending.states.push((key, ()));
    el.user.adopt();
    let id = ConnId(key);
    assert!(!el.core().conn_mut(key).unwrap().writable_armed);

    el.context().send(id, &vec![5u8; 4 << 20]).unwrap();
    let queued = el.context().queued(id).unwrap();
    assert!(queued > 0, "a socketpair can't take 4 MiB at once");
    assert!(el.core().conn_mut(key).unwrap().writable_armed);

    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < 4 << 20 {
        got += theirs.read(&mut buf).unwrap();
        let writable = Ready {
            writable: true,
            ..Ready::default()
        };
        el.inject(key.token(), writable);
    }
    assert_eq!(el.context().queued(id), Some(0));
    assert!(!el.core().conn_mut(key).unwrap().writable_armed);
}

/// An idle connection costs its slab slot and nothing else in user space (no read buffer,
/// no output buffer): keep the slot within the 256-byte budget.
#[test]
fn idle_connection_fits_the_memory_budget() {
    let slot = std::mem::size_of::<crate::core::Entry>() + std::mem::size_of::<usize>();
    assert!(slot <= 256, "a slab slot is {slot} bytes");
    assert_eq!(crate::outbuf::OutBuf::new().capacity(), 0);
}

/// Accepts one connection on a fresh loop with `config`; returns the loop, the client and
/// the listener's address.
fn one_accepted(config: Config) -> (EventLoop<Rec>, TcpStream, std::net::SocketAddr, ConnId) {
    let mut el = EventLoop::with_config(Rec::default(), config).unwrap();
    let l = el.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let client = TcpStream::connect(addr).unwrap();
    tick_until(&mut el, |h| h.opens.len() == 1);
    let conn = el.handler().opens[0];
    (el, client, addr, conn)
}

/// `cancel_timer` cancels the handler's own timers only: ids of the loop's idle, connect,
/// send-deadline, linger and shutdown-deadline timers (which a handler is never given, but
/// could forge or guess: ids are sequential) are refused, and those timers stay armed.
#[test]
fn cancel_timer_cannot_cancel_the_loops_own_timers() {
    let config = Config {
        idle_timeout: Some(Duration::from_secs(60)),
        ..Config::default()
    };
    let (mut el, _client, addr, conn) = one_accepted(config);
    let idle: TimerId = el
        .core()
        .conn_mut(conn.0)
        .unwrap()
        .timer
        .expect("idle timer");
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = el.connect(elsewhere.local_addr().unwrap(), ()).unwrap();
    let connect: TimerId = el
        .core()
        .conn_mut(out.0)
        .unwrap()
        .timer
        .expect("connect timer");
    // A queue the client does not read: the send deadline runs.
    el.context().set_send_buffer_size(conn, 4096).unwrap();
    el.context().send(conn, &vec![0u8; 4 << 20]).unwrap();
    let send: TimerId = el
        .core()
        .conn_mut(conn.0)
        .unwrap()
        .send_timer
        .expect("send timer");
    let user = el.context().set_timer(Duration::from_secs(60));
    assert!(user.as_u64() > idle.as_u64() && user.as_u64() > connect.as_u64());
    for internal in [idle, connect, send] {
        assert!(!el.context().cancel_timer(internal), "{internal:?}");
        assert!(
            el.core().timers.contains(internal),
            "{internal:?} still armed"
        );
    }
    // A clean close before the peer's EOF lingers, on a timer of its own.
    el.context().abort(conn);
    el.context().close(out);
    let _c2 = TcpStream::connect(addr).unwrap();
    tick_until(&mut el, |h| h.opens.len() == 2 && h.closes.len() == 2);
    let second = el.handler().opens[1];
    el.context().close(second);
    el.run_once(Some(Duration::ZERO)).unwrap();
    let linger: Vec<TimerId> = el
        .core()
        .slab
        .iter()
        .filter_map(|(_, e)| match &e.kind {
            crate::core::Kind::Linger(l) => l.timer,
            _ => None,
        })
        .collect();
    assert!(!linger.is_empty(), "a lingering socket with its timer");
    for internal in linger {
        assert!(!el.context().cancel_timer(internal), "{internal:?}");
        assert!(
            el.core().timers.contains(internal),
            "{internal:?} still armed"
        );
    }
    el.context().shutdown(Duration::from_secs(60));
    let deadline = el.core().shutdown.as_ref().unwrap().timer.unwrap();
    assert!(!el.context().cancel_timer(deadline));
    assert!(el.core().timers.contains(deadline));
    assert!(el.context().cancel_timer(user), "the handler's own timer");
    assert!(!el.context().cancel_timer(user), "only once");
}

/// A connection's timers are cancelled when it closes: gone from the store at once, not
/// cancellable afterwards, and no new one can be set on the dead id.
#[test]
fn conn_timers_are_cancelled_when_the_connection_closes() {
    let (mut el, _client, _, conn) = one_accepted(Config::default());
    let mut cx = el.context();
    let once = cx.set_conn_timer(conn, Duration::from_secs(60)).unwrap();
    let every = cx.set_conn_interval(conn, Duration::from_secs(60)).unwrap();
    let cancelled = cx.set_conn_timer(conn, Duration::from_secs(60)).unwrap();
    assert!(cx.cancel_timer(cancelled));
    assert!(!cx.cancel_timer(cancelled));
    assert_eq!(
        el.core().conn_mut(conn.0).unwrap().user_timers,
        [once, every]
    );
    el.context().close(conn);
    assert!(!el.core().timers.contains(once) && !el.core().timers.contains(every));
    el.run_once(Some(Duration::ZERO)).unwrap();
    assert_eq!(el.handler().closes, [conn]);
    let mut cx = el.context();
    assert!(!cx.cancel_timer(once));
    assert!(!cx.cancel_timer(every));
    assert_eq!(cx.set_conn_timer(conn, Duration::from_secs(1)), None);
    assert_eq!(cx.set_conn_interval(conn, Duration::from_secs(1)), None);
}

/// A stale event for a connection closed earlier in the tick neither reads nor presents
/// its kept input, and `kept_input` of a dead id is `None`.
#[test]
fn kept_input_dies_with_its_connection() {
    #[derive(Default)]
    struct Keeper(Vec<Vec<u8>>);
    impl Handler for Keeper {
        type Conn = ();
        fn on_data(
            &mut self,
            _: &mut Context<'_, Self>,
            _: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            self.0.push(data.to_vec());
            0 // keeps everything
        }
    }
    let mut el = EventLoop::new(Keeper::default()).unwrap();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let stream = Stream::Unix(mio::net::UnixStream::from_std(ours));
    let key = el.core().register_conn(stream, State::Open, None).unwrap();
    el.user.pending.states.push((key, ()));
    el.user.adopt();
    let id = ConnId(key);
    theirs.write_all(b"abc").unwrap();
    el.inject(key.token(), Ready::READABLE);
    assert_eq!(el.handler().0, [b"abc".to_vec()]);
    assert_eq!(el.context().kept_input(id), Some(3));
    theirs.write_all(b"def").unwrap();
    el.inject(key.token(), Ready::READABLE);
    assert_eq!(el.handler().0[1], b"abcdef", "kept bytes come first");
    assert_eq!(el.context().kept_input(id), Some(6));
    el.context().abort(id);
    theirs.write_all(b"ghi").unwrap();
    el.inject(key.token(), Ready::READABLE);
    assert_eq!(el.handler().0.len(), 2, "a dead connection reads nothing");
    assert_eq!(el.context().kept_input(id), None);
    el.run_once(Some(Duration::ZERO)).unwrap();
    assert_eq!(el.slab_len(), 0);
}
