//! Lingering close: after a graceful close has handed every queued byte to the kernel, send
//! FIN and keep reading (and discarding) until the peer's EOF or a timeout, then close.
//!
//! Why: a socket closed with unread input, or one that receives input after it was closed,
//! is answered by the kernel with RST, and an RST makes the peer's kernel throw away what it
//! has received but not yet read: the tail of our reply would be lost. So a connection that
//! closed cleanly without having seen the peer's EOF is kept open, half-closed, in a slab
//! entry of its own (nginx and Apache call this lingering close). The handler has already had
//! `on_close`; the entry is invisible to it and to `EventLoop::slab_len`, and is counted in
//! `Stats::lingering`.

use crate::core::{Core, Kind, TimerKind, interrupted, live_in, would_block};
use crate::stream::Stream;
use crate::timers::TimerId;
use crate::token::Key;
use mio::Interest;
use std::net::Shutdown;

pub(crate) struct Linger {
    pub(crate) stream: Stream,
    pub(crate) timer: Option<TimerId>,
}

/// What reading away the peer's input came to.
enum Discard {
    /// The peer closed (EOF) or the socket failed: nothing left to wait for.
    Done,
    /// Nothing more to read for now.
    Drained,
    /// The budget ran out with input still coming.
    Budget,
}

fn discard(stream: &mut Stream, buf: &mut [u8], mut budget: usize) -> Discard {
    loop {
        match stream.read(buf) {
            Ok(0) => return Discard::Done,
            Ok(n) if n >= budget => return Discard::Budget,
            Ok(n) => budget -= n,
            Err(e) if would_block(&e) => return Discard::Drained,
            Err(e) if interrupted(&e) => {}
            Err(_) => return Discard::Done,
        }
    }
}

/// Takes over the socket of a connection that closed cleanly before the peer's EOF, or of
/// one refused for `max_connections` after its reply (`registered` says whether the socket
/// is in the poll set yet). With `Config::linger` zero, or if the peer has already closed,
/// the socket is simply dropped.
pub(crate) fn start(core: &mut Core, mut stream: Stream, registered: bool) {
    let linger = core.config.linger;
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    // Even without lingering, input already here is read away before the close. Rare
    // enough for a small buffer of its own.
    let first = discard(&mut stream, &mut [0; 4096], core.config.read_budget);
    if matches!(first, Discard::Done) || linger.is_zero() {
        return;
    }
    let at = core.now() + linger;
    let key = core.insert(Kind::Linger(Linger {
        stream,
        timer: None,
    }));
    let Some(Kind::Linger(l)) = live_in(&mut core.slab, key) else {
        unreachable!("just inserted")
    };
    // A new token (or a first registration); epoll reports input already waiting.
    let (registry, source, token) = (&core.registry, l.stream.source(), key.token());
    let result = if registered {
        registry.reregister(source, token, Interest::READABLE)
    } else {
        registry.register(source, token, Interest::READABLE)
    };
    if result.is_err() {
        core.slab.remove(key.slot as usize);
        return;
    }
    l.timer = Some(core.timers.insert(at, None, TimerKind::Linger(key)));
    core.stats.lingering += 1;
}

/// Input on a lingering socket: read it away; close on EOF.
pub(crate) fn readable(core: &mut Core, buf: &mut [u8], key: Key) {
    let budget = core.config.read_budget;
    let Some(Kind::Linger(l)) = live_in(&mut core.slab, key) else {
        return;
    };
    match discard(&mut l.stream, buf, budget) {
        Discard::Done => core.kill(key, crate::CloseReason::Local),
        Discard::Drained => {}
        // Edge-triggered: no new edge for what is left, so come back next tick.
        Discard::Budget => core.ready.push(key),
    }
}
