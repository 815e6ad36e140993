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
use std::net::IpAddr;
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
    pub(crate) fn adopt(&mut self) {
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
/// it adopted get their default state and `on_open`. One flag to check when there is
/// nothing to do (every callback on the data path).
#[inline(always)]
pub(crate) fn settle<H: Handler>(core: &mut Core, user: &mut User<H>) {
    if core.unsettled {
        core.unsettled = false;
        settle_slow(core, user);
    }
}

#[cold]
#[inline(never)]
fn settle_slow<H: Handler>(core: &mut Core, user: &mut User<H>) {
    user.adopt();
    for key in std::mem::take(&mut core.adopted) {
        if core.conn_mut(key).is_some() {
            user.put_state(key, H::Conn::default());
            invoke_conn(core, user, key, |h, cx, st| h.on_open(cx, ConnId(key), st));
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
    // The clock is read only if an idle timeout needs the stamp.
    let stamp = core.config.idle_timeout.map(|_| core.now());
    loop {
        let Some(conn) = core.conn_mut(key) else {
            return;
        };
        #[cfg(feature = "tls")]
        if conn.tls.is_some() {
            return tls_read(core, user, buf, key);
        }
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
                if let Some(t) = stamp {
                    conn.last_active = t;
                }
                // Kept input is joined with the new bytes; otherwise they are handed over
                // straight from the read buffer, without a copy.
                let kept = (!conn.input.is_empty()).then(|| conn.input.take());
                core.stats.bytes_in += n as u64;
                match kept {
                    Some(input) => present_kept(core, user, key, input, &buf[..n]),
                    None => deliver(core, user, key, &buf[..n]),
                }
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

/// The read loop of a TLS connection: plaintext the session already holds goes to the
/// handler first (reading may have been paused), then ciphertext is read from the socket
/// into the first part of `buf` and fed to the session, whose plaintext comes out into the
/// last part and is delivered as on a plain connection (kept input and all). Records the
/// session answers with (handshake, alerts) leave through the output queue.
#[cfg(feature = "tls")]
#[inline(never)]
fn tls_read<H: Handler>(core: &mut Core, user: &mut User<H>, buf: &mut [u8], key: Key) {
    let pause = core.config.pause_read_when_congested;
    let mut budget = core.config.read_budget;
    let stamp = core.config.idle_timeout.map(|_| core.now());
    let plain_len = (buf.len() / 2).min(16 * 1024);
    let (cipher, plain) = buf.split_at_mut(buf.len() - plain_len);
    loop {
        // 1. Plaintext the session holds.
        if !tls_deliver(core, user, key, plain, pause) {
            return;
        }
        // 2. Ciphertext kept from a read that stopped part-way (reading was paused).
        let backlog = core
            .conn_mut(key)
            .and_then(|c| c.tls.as_deref_mut())
            .and_then(crate::tls::Tls::take_backlog);
        if let Some(backlog) = backlog {
            if !tls_feed(core, user, key, &backlog, plain, pause) {
                return;
            }
            continue;
        }
        // 3. Ciphertext from the socket.
        let Some(conn) = core.conn_mut(key) else {
            return;
        };
        let (n, drained) = match conn.read_step(cipher) {
            ReadStep::Data(n, drained) => (n, drained),
            ReadStep::Eof => {
                // The peer closed TCP (with or without close_notify first).
                invoke_conn(core, user, key, |h, cx, st| {
                    h.on_peer_eof(cx, ConnId(key), st)
                });
                return;
            }
            ReadStep::Blocked => return,
            ReadStep::Error(e) => return core.kill(key, CloseReason::Error(e)),
        };
        if let Some(t) = stamp {
            conn.last_active = t;
        }
        core.stats.bytes_in += n as u64;
        if !tls_feed(core, user, key, &cipher[..n], plain, pause) {
            return;
        }
        if drained {
            return;
        }
        budget = budget.saturating_sub(n);
        if budget == 0 {
            core.ready.push(key);
            return;
        }
    }
}

/// Feeds ciphertext into the session, sending what it answers and delivering plaintext as
/// it comes. False if reading must stop (closed, paused, at its end); ciphertext not yet
/// fed then is kept in the session for the next read, never dropped.
#[cfg(feature = "tls")]
fn tls_feed<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    key: Key,
    cipher: &[u8],
    plain: &mut [u8],
    pause: bool,
) -> bool {
    let mut at = 0;
    while at < cipher.len() {
        let Some(tls) = core.conn_mut(key).and_then(|c| c.tls.as_deref_mut()) else {
            return false;
        };
        let fed = tls.feed(&cipher[at..]);
        core.tls_flush_records(key);
        match fed {
            Ok(k) => at += k,
            Err(e) => {
                log::debug!("{}: TLS: {e}", ConnId(key));
                core.kill(key, CloseReason::Tls(e));
                return false;
            }
        }
        tls_handshake_done(core, user, key);
        if !tls_deliver(core, user, key, plain, pause) {
            if at < cipher.len() {
                if let Some(tls) = core.conn_mut(key).and_then(|c| c.tls.as_deref_mut()) {
                    tls.stash(&cipher[at..]);
                }
            }
            return false;
        }
    }
    true
}

/// The handshake just finished: a close asked for meanwhile happens now, after the held
/// plaintext; a producer paced by the held plaintext hears `on_drain` if it went out.
#[cfg(feature = "tls")]
fn tls_handshake_done<H: Handler>(core: &mut Core, user: &mut User<H>, key: Key) {
    let low = core.config.low_watermark;
    let Some(conn) = core.conn_mut(key) else {
        return;
    };
    let Some(deferred) = conn
        .tls
        .as_deref_mut()
        .and_then(crate::tls::Tls::just_finished)
    else {
        return;
    };
    let low = conn.limits.as_ref().map_or(low, |l| l.low);
    let drained = conn.congested && conn.out.len() <= low;
    if drained {
        conn.congested = false;
        conn.replay = true;
    }
    match deferred {
        Some(crate::tls::Deferred::Close) => core.conn_close(key),
        Some(crate::tls::Deferred::ShutdownWrite) => core.conn_shutdown_write(key),
        None => {}
    }
    if drained {
        invoke_conn(core, user, key, |h, cx, st| h.on_drain(cx, ConnId(key), st));
    }
}

/// Hands the session's plaintext to `on_data` while the connection wants input; false if
/// the connection is gone, closing, paused or at its end (stop reading).
#[cfg(feature = "tls")]
fn tls_deliver<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    key: Key,
    plain: &mut [u8],
    pause: bool,
) -> bool {
    loop {
        let Some(conn) = core.conn_mut(key) else {
            return false;
        };
        // A handshake must go on even while plaintext held for it congests the connection:
        // reading is what finishes it, and only then can the held bytes leave.
        let handshaking = conn
            .tls
            .as_deref()
            .is_some_and(crate::tls::Tls::is_handshaking);
        if !conn.wants_read(pause && !handshaking) {
            return false;
        }
        if conn.replay {
            conn.replay = false;
            if !conn.input.is_empty() {
                let input = conn.input.take();
                present_kept(core, user, key, input, &[]);
                continue;
            }
        }
        let Some(tls) = conn.tls.as_deref_mut() else {
            return false;
        };
        match tls.read_plain(plain) {
            Ok(0) => {
                // close_notify: the peer's end of the stream.
                conn.eof = true;
                invoke_conn(core, user, key, |h, cx, st| {
                    h.on_peer_eof(cx, ConnId(key), st)
                });
                return false;
            }
            Ok(m) => {
                let kept = (!conn.input.is_empty()).then(|| conn.input.take());
                match kept {
                    Some(input) => present_kept(core, user, key, input, &plain[..m]),
                    None => deliver(core, user, key, &plain[..m]),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                core.kill(key, CloseReason::Tls(e));
                return false;
            }
        }
    }
}

/// Hands freshly read bytes, with nothing kept before them, to `on_data`: borrowed from the
/// read buffer (no copy). Only what the handler leaves unconsumed is copied, to be kept.
#[inline]
fn deliver<H: Handler>(core: &mut Core, user: &mut User<H>, key: Key, data: &[u8]) {
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
            Accepted::Conn(stream, ip) => {
                l.failures = 0;
                if let Some(stream) = l.route(stream) {
                    open_accepted(core, user, stream, ip, id);
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

/// Registers an accepted connection and hands it to `on_open`; past `max_connections`, or
/// past `max_connections_per_ip` for its peer's address, it gets the refusal reply and is
/// closed.
fn open_accepted<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    stream: Stream,
    ip: Option<IpAddr>,
    origin: ListenerId,
) {
    let full = core.stats.connections_open >= core.config.max_connections as u64;
    if full || !core.ip_has_room(ip) {
        core.stats.refused += 1;
        log::debug!(
            "refused a connection from {ip:?}: {} open",
            core.stats.connections_open
        );
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
    #[cfg(feature = "tls")]
    let tls = match core.live_mut(origin.0) {
        Some(Kind::Listener(l)) => l.tls.clone(),
        _ => None,
    };
    match core.register_conn(stream, State::Open, Some(origin)) {
        Ok(key) => {
            core.stats.accepted += 1;
            core.count_ip(key, ip);
            #[cfg(feature = "tls")]
            if let Some(config) = tls {
                match crate::tls::Tls::server(config) {
                    Ok(session) => core.tls_attach(key, session),
                    Err(e) => core.kill(key, CloseReason::Tls(e)),
                }
            }
            user.put_state(key, H::Conn::default());
            invoke_conn(core, user, key, |h, cx, st| h.on_open(cx, ConnId(key), st));
        }
        Err(e) => log::error!("register accepted connection: {e}"),
    }
}

/// Receives datagrams on `key` until `WouldBlock` or the budget (`datagram_budget`
/// datagrams a tick), each to its own `on_datagram` with its sender. A datagram that fills
/// its whole buffer may have been cut short: dropped and counted, never handed over.
///
/// UDP sockets (with `udp_batch` > 1) receive in batches: one `recvmmsg` into the loop's
/// slots, GRO runs split again by their stride; what the batch's callbacks send is gathered
/// (the cork) and sent right after it, in batches (`Core::dgram_flush`). A short batch means
/// the socket is drained: on Linux a datagram that comes later raises a new edge. Unix
/// sockets, or `udp_batch` 1: one `recvfrom` at a time into the loop's read buffer, and
/// sends are written at once.
fn recv_datagrams<H: Handler>(core: &mut Core, user: &mut User<H>, buf: &mut [u8], key: Key) {
    let id = UdpId(key);
    let batch = core.config.udp_batch;
    let Some(Kind::Dgram(d)) = core.live_mut(key) else {
        return;
    };
    if batch <= 1 || d.udp_fd().is_none() {
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
        return;
    }
    let (slot, offload) = (core.config.read_buffer_size, core.config.udp_offload);
    let mut budget = core.config.datagram_budget;
    // The slots are lent out of `Core` while the callbacks get slices of them.
    let mut bufs = std::mem::take(&mut core.udp.recv);
    // Whether the budget ran out with datagrams maybe still waiting.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        loop {
            let Some(Kind::Dgram(d)) = core.live_mut(key) else {
                return false;
            };
            let want = batch.min(budget);
            let n = match d.recv_batch(&mut bufs, want, slot, offload) {
                Ok(n) => n,
                Err(e) if crate::stream::would_block(&e) => return false,
                Err(e) if crate::stream::interrupted(&e) => continue,
                // An ICMP error for an earlier send (ECONNREFUSED, ...): reading it cleared it.
                Err(e) => {
                    log::debug!("{id}: {e}");
                    budget -= 1;
                    if budget == 0 {
                        return true;
                    }
                    continue;
                }
            };
            core.udp.cork.active = true;
            'messages: for i in 0..n {
                let r = bufs.got[i];
                budget = budget.saturating_sub(1);
                let from = match r.from {
                    Some(from) if !r.truncated && r.len < slot => crate::Addr::Inet(from),
                    _ => {
                        core.stats.datagrams_dropped += 1;
                        let n = r.len;
                        log::warn!("{id}: datagram of {n}+ bytes may be truncated; dropped");
                        continue;
                    }
                };
                let data = bufs.data(i);
                // A GRO run: datagrams of `stride` bytes, the last maybe shorter. An empty
                // datagram is one datagram too.
                let stride = r.stride.max(1);
                let mut rest = data;
                loop {
                    let (one, next) = rest.split_at(stride.min(rest.len()));
                    core.stats.datagrams_in += 1;
                    invoke(core, user, None, |h, cx| h.on_datagram(cx, id, one, &from));
                    if core.live_mut(key).is_none() {
                        // Closed by the handler: the rest of the batch goes with it.
                        break 'messages;
                    }
                    if next.is_empty() {
                        break;
                    }
                    budget = budget.saturating_sub(1);
                    rest = next;
                }
            }
            core.udp.cork.active = false;
            if !core.udp.cork.is_empty() {
                core.dgram_flush(key);
            }
            if n < want || core.live_mut(key).is_none() {
                return false; // drained, or closed
            }
            if budget == 0 {
                return true;
            }
        }
    }));
    core.udp.recv = bufs;
    core.udp.cork.active = false;
    match outcome {
        Ok(true) => core.ready.push(key),
        Ok(false) => {}
        Err(panic) => {
            // A callback panicked with `catch_panics` off: send what was gathered, unwind on.
            core.dgram_flush(key);
            std::panic::resume_unwind(panic);
        }
    }
}

/// Fires the timers due at the tick's `now`. A callback may set a timer that is due at
/// once; the budget (timers pending at the start) leaves such ones to the next tick rather
/// than looping forever.
#[inline(always)]
pub(crate) fn fire_timers<H: Handler>(core: &mut Core, user: &mut User<H>) {
    if !core.timers.is_empty() {
        fire_due_timers(core, user);
    }
}

#[inline(never)]
fn fire_due_timers<H: Handler>(core: &mut Core, user: &mut User<H>) {
    let mut budget = core.timers.len();
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
            #[cfg(feature = "tls")]
            TimerKind::TlsHandshake(key) => core.tls_handshake_check(key),
            TimerKind::ShutdownDeadline => core.shutdown_deadline(),
        }
    }
}

/// Runs `on_close` for each entry marked dead this tick (and any its callbacks kill in
/// turn) and frees its slot. Each key is taken off the list, checked (same generation,
/// marked dead) and its slot freed *before* calling out, so a callback that panics out of
/// the loop can leave neither a second `on_close` nor a stale key behind.
pub(crate) fn reap<H: Handler>(core: &mut Core, user: &mut User<H>) {
    settle(core, user);
    while let Some(key) = core.closing.pop_front() {
        // An `on_close` may have started (and closed) connections: their states first.
        settle(core, user);
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
                core.uncount_ip(key);
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
