//! Where the loop calls the handler: routing one event to its entry, the read, accept and
//! datagram loops, firing timers, and the reaper. `User` is the handler's side of the loop:
//! the handler value and each connection's state, kept by slot beside the slab (outside
//! `Core`, so a callback can hold `&mut` to its connection's state and a `Context` at once).

use crate::conn::{ReadStep, State};
use crate::context::Pending;
use crate::core::{Core, Kind, TimerKind};
use crate::listener::Accepted;
use crate::stream::Stream;
use crate::token::Key;
use crate::{CloseReason, ConnId, Context, Handler, ListenerId, UdpId};
use mio::event::Event;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Readiness of one event, as the dispatcher reads it (mio's `Event` can't be built by hand,
/// so tests feed this).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    pub(crate) read_closed: bool,
    pub(crate) error: bool,
}

impl Ready {
    pub(crate) fn of(event: &Event) -> Ready {
        Ready {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            error: event.is_error(),
        }
    }
    pub(crate) const READABLE: Ready = Ready {
        readable: true,
        writable: false,
        read_closed: false,
        error: false,
    };
    pub(crate) const WRITABLE: Ready = Ready {
        readable: false,
        writable: true,
        read_closed: false,
        error: false,
    };
}

/// The handler and what belongs to it.
pub(crate) struct User<H: Handler> {
    pub(crate) handler: H,
    /// Each connection's state, indexed by its slab slot; `None` for other entries.
    pub(crate) states: Vec<Option<H::Conn>>,
    pub(crate) pending: Pending<H>,
}

impl<H: Handler> User<H> {
    pub(crate) fn new(handler: H) -> User<H> {
        User {
            handler,
            states: Vec::new(),
            pending: Pending::default(),
        }
    }

    fn put_state(&mut self, key: Key, state: H::Conn) {
        let slot = key.slot as usize;
        if self.states.len() <= slot {
            self.states.resize_with(slot + 1, || None);
        }
        self.states[slot] = Some(state);
    }

    /// Moves the states of connections started by the last callback beside them.
    #[inline]
    pub(crate) fn adopt(&mut self) {
        if self.pending.states.is_empty() {
            return;
        }
        let mut states = std::mem::take(&mut self.pending.states);
        for (key, state) in states.drain(..) {
            self.put_state(key, state);
        }
        self.pending.states = states;
    }
}

/// Runs one callback that is not about a connection's state. With `catch_panics`, a panic
/// is logged, counted, and closes the connection the callback was about (`blame`).
pub(crate) fn invoke<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    blame: Option<Key>,
    f: impl FnOnce(&mut H, &mut Context<'_, H>),
) {
    let User {
        handler, pending, ..
    } = user;
    let mut cx = Context {
        core: &mut *core,
        pending,
    };
    if !cx.core.config.catch_panics {
        f(handler, &mut cx);
    } else if catch_unwind(AssertUnwindSafe(|| f(handler, &mut cx))).is_err() {
        panicked(core, blame);
    }
    settle(core, user);
}

/// Runs one callback about connection `key`, lending it the connection's state.
#[inline]
pub(crate) fn invoke_conn<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    key: Key,
    f: impl FnOnce(&mut H, &mut Context<'_, H>, &mut H::Conn),
) {
    let User {
        handler,
        states,
        pending,
    } = user;
    let Some(Some(state)) = states.get_mut(key.slot as usize) else {
        debug_assert!(false, "a live connection without its state");
        return;
    };
    let mut cx = Context {
        core: &mut *core,
        pending,
    };
    if !cx.core.config.catch_panics {
        f(handler, &mut cx, state);
    } else if catch_unwind(AssertUnwindSafe(|| f(handler, &mut cx, state))).is_err() {
        panicked(core, Some(key));
    }
    settle(core, user);
}

/// After a callback: the states of connections it started go beside them, and connections
/// it adopted get their default state and `on_open`.
#[inline]
pub(crate) fn settle<H: Handler>(core: &mut Core, user: &mut User<H>) {
    user.adopt();
    if !core.adopted.is_empty() {
        for key in std::mem::take(&mut core.adopted) {
            if core.conn_mut(key).is_some() {
                user.put_state(key, H::Conn::default());
                invoke_conn(core, user, key, |h, cx, st| h.on_open(cx, ConnId(key), st));
            }
        }
    }
}

#[cold]
fn panicked(core: &mut Core, blame: Option<Key>) {
    core.stats.panics += 1;
    match blame {
        Some(key) => {
            log::error!("handler panicked; closing {}", ConnId(key));
            core.conn_reset(key, CloseReason::Panicked);
        }
        None => log::error!("handler panicked"),
    }
}

/// Routes one event to the entry `key` names, if that entry is still live. The common
/// case, a connection that is only readable, goes straight to the read loop; everything
/// else is out of line in `dispatch_other`.
#[inline]
pub(crate) fn dispatch<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    buf: &mut [u8],
    key: Key,
    ready: Ready,
) {
    let only_readable = ready.readable && !ready.writable && !ready.read_closed && !ready.error;
    if only_readable && matches!(core.live_mut(key), Some(Kind::Conn(_))) {
        read(core, user, buf, key);
    } else {
        dispatch_other(core, user, buf, key, ready);
    }
}

#[inline(never)]
fn dispatch_other<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    buf: &mut [u8],
    key: Key,
    ready: Ready,
) {
    match core.live_mut(key) {
        Some(Kind::Listener(_)) => accept(core, user, key),
        Some(Kind::Dgram(_)) => {
            if ready.writable {
                core.dgram_flush(key);
            }
            if ready.readable || ready.error {
                recv_datagrams(core, user, buf, key);
            }
        }
        Some(Kind::Linger(_)) => core.linger_readable(buf, key),
        Some(Kind::Conn(c)) => {
            if ready.read_closed {
                c.read_closed = true;
            }
            if ready.error {
                if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                    core.kill(key, CloseReason::Error(e));
                    return;
                }
            }
            if ready.writable || ready.read_closed {
                writable(core, user, key);
            }
            if ready.readable || ready.read_closed {
                read(core, user, buf, key);
            }
        }
        // Stale generation, freed slot, or marked dead earlier in this tick.
        None => {}
    }
}

/// Reads from connection `key` until drained, EOF, an error, or the per-tick budget, and
/// hands the input to `on_data`. Inlined into the dispatcher: the hottest path of the loop.
#[inline]
pub(crate) fn read<H: Handler>(core: &mut Core, user: &mut User<H>, buf: &mut [u8], key: Key) {
    let pause = core.config.pause_read_when_congested;
    let mut budget = core.config.read_budget;
    loop {
        let Some(conn) = core.conn_mut(key) else {
            return;
        };
        if !conn.wants_read(pause) {
            return;
        }
        if conn.replay {
            // Reading resumed: what was kept is presented again, even without new bytes.
            conn.replay = false;
            if !conn.input.is_empty() {
                let input = conn.input.take();
                present_kept(core, user, key, input, &[]);
                continue;
            }
        }
        match conn.read_step(buf) {
            ReadStep::Data(n, drained) => {
                core.stats.bytes_in += n as u64;
                if core.config.idle_timeout.is_some() {
                    let now = core.now();
                    if let Some(conn) = core.conn_mut(key) {
                        conn.last_active = now;
                    }
                }
                deliver(core, user, key, &buf[..n]);
                if drained {
                    return;
                }
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    // Others' turn; edge-triggered readiness will not remind us, the list will.
                    core.ready.push(key);
                    return;
                }
            }
            ReadStep::Eof => {
                invoke_conn(core, user, key, |h, cx, st| {
                    h.on_peer_eof(cx, ConnId(key), st)
                });
                return;
            }
            // Drained: the next byte raises a new edge.
            ReadStep::Blocked => return,
            ReadStep::Error(e) => {
                core.kill(key, CloseReason::Error(e));
                return;
            }
        }
    }
}

/// Hands freshly read bytes to `on_data`: straight from the read buffer when nothing was
/// kept (no copy), else joined to the kept input.
#[inline]
fn deliver<H: Handler>(core: &mut Core, user: &mut User<H>, key: Key, data: &[u8]) {
    let Some(conn) = core.conn_mut(key) else {
        return;
    };
    if !conn.input.is_empty() {
        let input = conn.input.take();
        return present_kept(core, user, key, input, data);
    }
    let mut consumed = data.len();
    invoke_conn(core, user, key, |h, cx, st| {
        consumed = h.on_data(cx, ConnId(key), st, data);
    });
    if consumed < data.len() {
        keep(core, key, &data[consumed..]);
    }
}

/// The handler left `rest` unconsumed: keep it, within the connection's input bound.
#[cold]
#[inline(never)]
fn keep(core: &mut Core, key: Key, rest: &[u8]) {
    let Some(max) = core.max_input(key) else {
        return;
    };
    if rest.len() > max {
        return core.kill(key, CloseReason::InputLimit);
    }
    if let Some(conn) = core.conn_mut(key) {
        conn.input.append(rest);
    }
}

/// Presents kept input (joined with `data`) to `on_data` and keeps what is left of it.
#[cold]
#[inline(never)]
fn present_kept<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    key: Key,
    mut input: crate::input::Input,
    data: &[u8],
) {
    input.append(data);
    let mut consumed = input.len();
    invoke_conn(core, user, key, |h, cx, st| {
        consumed = h.on_data(cx, ConnId(key), st, input.as_slice());
    });
    input.consume(consumed);
    let Some(max) = core.max_input(key) else {
        return;
    };
    if input.len() > max {
        return core.kill(key, CloseReason::InputLimit);
    }
    if let Some(conn) = core.conn_mut(key) {
        conn.input.restore(input);
    }
}

/// WRITABLE on connection `key`: finish a connect, or flush the queue.
fn writable<H: Handler>(core: &mut Core, user: &mut User<H>, key: Key) {
    let Some(conn) = core.conn_mut(key) else {
        return;
    };
    if conn.state == State::Connecting {
        match conn.finish_connect() {
            Ok(false) => return,
            Err(e) => return core.kill(key, CloseReason::ConnectFailed(e)),
            Ok(true) => {
                core.connected(key);
                invoke_conn(core, user, key, |h, cx, st| h.on_open(cx, ConnId(key), st));
            }
        }
    }
    // Sends made while connecting or in on_open; drops WRITABLE if nothing is left.
    if core.conn_flush(key) {
        invoke_conn(core, user, key, |h, cx, st| h.on_drain(cx, ConnId(key), st));
    }
}

/// Accepts from listener `key` until `WouldBlock` or the budget; each new connection gets
/// a default state and `on_open`.
pub(crate) fn accept<H: Handler>(core: &mut Core, user: &mut User<H>, key: Key) {
    let id = ListenerId(key);
    for _ in 0..core.config.accept_budget {
        let Some(Kind::Listener(l)) = core.live_mut(key) else {
            return;
        };
        if l.backing_off {
            return;
        }
        match l.accept() {
            Accepted::Conn(stream) => {
                l.failures = 0;
                if let Some(stream) = l.route(stream) {
                    open_accepted(core, user, stream, id);
                }
            }
            Accepted::Blocked => return,
            Accepted::Skip(e) => log::debug!("accept on {id}: {e}; skipped"),
            Accepted::BackOff(e) => {
                l.backing_off = true;
                l.failures += 1;
                core.stats.accept_descriptor_errors += 1;
                let retry = core.config.accept_retry;
                core.set_timer(retry, None, TimerKind::AcceptRetry(key));
                log::warn!("accept on {id}: {e}; retrying in {retry:?}");
                return invoke(core, user, None, |h, cx| h.on_listener_error(cx, id, &e));
            }
            Accepted::Failed(e) => {
                log::error!("accept on {id}: {e}");
                return invoke(core, user, None, |h, cx| h.on_listener_error(cx, id, &e));
            }
        }
    }
    // Budget spent with connections maybe still waiting: no new edge will come for them.
    core.ready.push(key);
}

/// The back-off retry timer fired: try accepting again.
pub(crate) fn accept_retry<H: Handler>(core: &mut Core, user: &mut User<H>, key: Key) {
    if let Some(Kind::Listener(l)) = core.live_mut(key) {
        l.backing_off = false;
        accept(core, user, key);
    }
}

/// Registers an accepted connection and hands it to `on_open`; past `max_connections` it
/// gets the refusal reply and is closed.
fn open_accepted<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    stream: Stream,
    origin: ListenerId,
) {
    if core.stats.connections_open >= core.config.max_connections as u64 {
        core.stats.refused += 1;
        log::debug!("refused a connection: {} open", core.stats.connections_open);
        if let Some(reply) = &core.config.refusal_reply {
            let _ = stream.send(reply);
            // As after any clean close: FIN, and linger (within bounds) so the client's
            // input cannot turn the close into an RST that destroys the reply.
            core.linger_refused(stream);
        }
        return;
    }
    // Lingering sockets count toward the limit: the oldest gives way to a new connection.
    core.make_room(0);
    match core.register_conn(stream, State::Open, Some(origin)) {
        Ok(key) => {
            core.stats.accepted += 1;
            user.put_state(key, H::Conn::default());
            invoke_conn(core, user, key, |h, cx, st| h.on_open(cx, ConnId(key), st));
        }
        Err(e) => log::error!("register accepted connection: {e}"),
    }
}

/// Receives datagrams on `key` until `WouldBlock` or the budget, each to `on_datagram`.
/// A datagram that fills the whole buffer may have been cut short: dropped, not handed over.
fn recv_datagrams<H: Handler>(core: &mut Core, user: &mut User<H>, buf: &mut [u8], key: Key) {
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
                invoke(core, user, None, |h, cx| {
                    h.on_datagram(cx, id, &buf[..n], &from)
                });
            }
            // Drained.
            Err(e) if crate::stream::would_block(&e) => return,
            Err(e) if crate::stream::interrupted(&e) => {}
            // An ICMP error for an earlier send (ECONNREFUSED, ...): reading it cleared it.
            Err(e) => log::debug!("{id}: {e}"),
        }
    }
    core.ready.push(key);
}

/// Fires the timers due at the tick's `now`. A callback may set a timer that is due at
/// once; the budget (timers pending at the start) leaves such ones to the next tick rather
/// than looping forever.
pub(crate) fn fire_timers<H: Handler>(core: &mut Core, user: &mut User<H>) {
    let mut budget = core.timers.len();
    if budget == 0 {
        return;
    }
    let now = core.now();
    while budget > 0 {
        budget -= 1;
        let Some((id, kind)) = core.timers.pop_expired(now) else {
            break;
        };
        match kind {
            TimerKind::User => invoke(core, user, None, |h, cx| h.on_timer(cx, id)),
            TimerKind::UserConn(key) => {
                core.conn_timer_fired(key, id);
                if core.conn_mut(key).is_some() {
                    invoke_conn(core, user, key, |h, cx, st| {
                        h.on_conn_timer(cx, ConnId(key), st, id)
                    });
                }
            }
            TimerKind::Idle(key) => core.idle_check(key),
            TimerKind::Connect(key) => core.connect_timed_out(key),
            TimerKind::AcceptRetry(key) => accept_retry(core, user, key),
            TimerKind::Linger(key) => {
                if let Some(Kind::Linger(_)) = core.live_mut(key) {
                    core.kill(key, CloseReason::Local);
                }
            }
            TimerKind::SendTimeout(key) => core.send_check(key),
            TimerKind::ShutdownDeadline => core.shutdown_deadline(),
        }
    }
}

/// Runs `on_close` for each entry marked dead this tick (and any its callbacks kill in
/// turn) and frees its slot. Each key is taken off the list, checked (same generation,
/// marked dead) and its slot freed *before* calling out, so a callback that panics out of
/// the loop can leave neither a second `on_close` nor a stale key behind.
pub(crate) fn reap<H: Handler>(core: &mut Core, user: &mut User<H>) {
    while let Some(key) = core.closing.pop_front() {
        match core.slab.get(key.slot as usize) {
            Some(e) if e.generation == key.generation && e.dead => {}
            _ => continue,
        }
        let entry = core.slab.remove(key.slot as usize);
        match entry.kind {
            Kind::Conn(mut c) => {
                let reason = c.reason.take().unwrap_or(CloseReason::Local);
                // Closed cleanly before the peer's EOF: FIN and linger (see linger.rs).
                let linger = reason.is_clean() && !c.eof;
                core.stats.connections_open -= 1;
                core.stats.closed.count(&reason);
                let state = user
                    .states
                    .get_mut(key.slot as usize)
                    .and_then(Option::take);
                if let Some(state) = state {
                    invoke(core, user, None, |h, cx| {
                        h.on_close(cx, ConnId(key), state, &reason)
                    });
                }
                if linger {
                    core.linger(c.stream, true);
                }
            }
            Kind::Linger(_) => core.stats.lingering -= 1,
            Kind::Listener(l) => {
                if let crate::listener::Listener::Unix(_, path) = &l.socket {
                    let _ = std::fs::remove_file(path);
                }
            }
            Kind::Dgram(d) => {
                if let crate::udp::DgramSocket::Unix(_, Some(path)) = &d.socket {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}
