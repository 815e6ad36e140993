//! `Core`: the loop's state that a `Context` may change: the slab of entries, the registry,
//! timers, counters and the lists that carry work across a tick. It knows nothing of the
//! handler: callbacks are made by `dispatch.rs`, which owns the handler's side.
//!
//! Invariant: an entry is only ever *marked* dead while a tick runs (`kill`); the reaper at
//! the end of the tick runs its `on_close` and frees its slot. Everything that acts on a key
//! looks it up with `live_mut`, which checks slot, generation and liveness, so stale keys,
//! stale tokens and dead entries are all dropped in one place. Connections change only
//! through `Conn`'s operations, whose `Effects` are applied here, by `apply`.

use crate::conn::{Conn, Effects, Limits, State};
use crate::linger::Linger;
use crate::listener::ListenerEntry;
use crate::stream::Stream;
use crate::timers::{TimerId, Timers, deadline_after};
use crate::udp::Dgram;
use crate::{CloseReason, Config, ConnId, ListenerId, SendError, Stats, UdpId, token::Key};
use bytes::Bytes;
use mio::{Interest, Registry};
use slab::Slab;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub(crate) enum Kind {
    Listener(ListenerEntry),
    Conn(Conn),
    Dgram(Dgram),
    /// A cleanly closed connection's socket, half-closed, waiting for the peer's EOF.
    Linger(Linger),
}

pub(crate) struct Entry {
    pub(crate) generation: u32,
    /// Marked dead during a tick; freed by the reaper at its end.
    pub(crate) dead: bool,
    pub(crate) kind: Kind,
}

/// What a timer in the loop's store stands for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerKind {
    /// Set by the handler: fires `on_timer`.
    User,
    /// Set by the handler on a connection: fires `on_conn_timer`; cancelled when it closes.
    UserConn(Key),
    Idle(Key),
    Connect(Key),
    AcceptRetry(Key),
    Linger(Key),
    /// No write progress on a connection with bytes queued for `Config::send_timeout`?
    SendTimeout(Key),
    /// A TLS handshake still unfinished after `Config::tls_handshake_timeout`?
    #[cfg(feature = "tls")]
    TlsHandshake(Key),
    ShutdownDeadline,
}

/// Graceful shutdown under way.
pub(crate) struct Shutdown {
    /// The deadline timer: cancelled if the shutdown finishes first, so it cannot cut a
    /// later shutdown short.
    pub(crate) timer: Option<TimerId>,
}

pub(crate) struct Core {
    pub(crate) registry: Registry,
    pub(crate) slab: Slab<Entry>,
    next_generation: u32,
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    pub(crate) timers: Timers<TimerKind>,
    /// The tick's time, read from the clock the first time the tick needs it (see `now`).
    clock: Cell<Option<Instant>>,
    /// Entries whose budget ran out, or whose reading resumed: served next tick, and the
    /// poll does not sleep while any are waiting.
    pub(crate) ready: Vec<Key>,
    /// Connections whose flush stopped at the per-turn file budget: flushed again next tick,
    /// and the poll does not sleep while any are waiting.
    pub(crate) ready_write: Vec<Key>,
    /// Connections taken over by `Context::adopt`: `on_open` right after the callback.
    pub(crate) adopted: Vec<Key>,
    /// A callback started or adopted a connection (states pending, `adopted` non-empty):
    /// `dispatch::settle` has work. One flag, so the data path checks one byte.
    pub(crate) unsettled: bool,
    /// Entries marked dead this tick: `on_close`, then free, at the end of the tick.
    pub(crate) closing: VecDeque<Key>,
    /// Open accepted connections per peer IP, and each one's IP: kept only with
    /// `Config::max_connections_per_ip` (one hash per accept and close, none per message).
    per_ip: HashMap<IpAddr, u32>,
    ip_of: HashMap<Key, IpAddr>,
    /// Reused buffer for TLS records on their way to the output queue.
    #[cfg(feature = "tls")]
    tls_records: Vec<u8>,
    /// Lingering sockets, oldest first (keys of ones that already ended are skipped): the
    /// oldest is dropped when room is needed under `max_connections`.
    lingering: VecDeque<Key>,
    pub(crate) stopped: bool,
    pub(crate) shutdown: Option<Shutdown>,
    /// Batched UDP, one per loop: the receive slots lent to every UDP socket, and the cork
    /// that gathers what `on_datagram` callbacks send during one receive batch.
    pub(crate) udp: crate::udp::batch::Batch,
}

/// Refused connections may linger (so their refusal reply is not destroyed by an RST) up to
/// this many sockets beyond `max_connections`; past it they are closed at once.
const REFUSAL_SLACK: u64 = 16;

/// The entry `key` names in `slab`, if it is still that entry and not marked dead.
#[inline]
pub(crate) fn live_in(slab: &mut Slab<Entry>, key: Key) -> Option<&mut Kind> {
    match slab.get_mut(key.slot as usize) {
        Some(e) if e.generation == key.generation && !e.dead => Some(&mut e.kind),
        _ => None,
    }
}

impl Core {
    pub(crate) fn new(registry: Registry, config: Config) -> Core {
        Core {
            registry,
            slab: Slab::new(),
            next_generation: 1,
            config,
            stats: Stats::default(),
            timers: Timers::new(),
            clock: Cell::new(None),
            ready: Vec::new(),
            ready_write: Vec::new(),
            adopted: Vec::new(),
            unsettled: false,
            closing: VecDeque::new(),
            per_ip: HashMap::new(),
            ip_of: HashMap::new(),
            lingering: VecDeque::new(),
            #[cfg(feature = "tls")]
            tls_records: Vec::new(),
            stopped: false,
            shutdown: None,
            udp: Default::default(),
        }
    }

    /// The tick's time: the clock is read at most once a tick, and only if something needs
    /// it (timers, idle timeouts), so the echo path does without.
    pub(crate) fn now(&self) -> Instant {
        self.clock.get().unwrap_or_else(|| {
            let now = Instant::now();
            self.clock.set(Some(now));
            now
        })
    }

    /// A new tick starts: the next `now()` reads the clock again.
    pub(crate) fn new_tick(&self) {
        self.clock.set(None);
    }

    /// A timer due `after` from now ("never" if that is past what `Instant` can hold).
    pub(crate) fn set_timer(
        &mut self,
        after: Duration,
        period: Option<Duration>,
        kind: TimerKind,
    ) -> TimerId {
        let at = deadline_after(self.now(), after);
        self.timers.insert(at, period, kind)
    }

    /// Puts an entry in a free slot with a fresh generation (never 0).
    pub(crate) fn insert(&mut self, kind: Kind) -> Key {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.checked_add(1).unwrap_or(1);
        let slot = self.slab.insert(Entry {
            generation,
            dead: false,
            kind,
        });
        let slot = u32::try_from(slot).expect("more than 2^32 entries");
        Key { slot, generation }
    }

    /// The entry `key` names, if it is still that entry and not marked dead.
    #[inline]
    pub(crate) fn live_mut(&mut self, key: Key) -> Option<&mut Kind> {
        live_in(&mut self.slab, key)
    }

    #[inline]
    pub(crate) fn conn_mut(&mut self, key: Key) -> Option<&mut Conn> {
        match self.live_mut(key) {
            Some(Kind::Conn(c)) => Some(c),
            _ => None,
        }
    }

    /// Marks an entry dead; the first reason wins and later calls do nothing, which is what
    /// makes `on_close` run exactly once. The socket stays open until the reaper, so its
    /// events later in this tick are dropped by `live_mut`.
    pub(crate) fn kill(&mut self, key: Key, reason: CloseReason) {
        let Some(entry) = self.slab.get_mut(key.slot as usize) else {
            return;
        };
        if entry.generation != key.generation || entry.dead {
            return;
        }
        entry.dead = true;
        match &mut entry.kind {
            Kind::Conn(conn) => {
                let reason = match reason {
                    CloseReason::Error(e) if conn.state == State::Connecting => {
                        CloseReason::ConnectFailed(e)
                    }
                    reason => reason,
                };
                log::debug!("{}: {reason}", ConnId(key));
                // Bytes still queued (or a send cut short by the output limit) are lost: reset
                // rather than FIN, so the peer cannot take a cut-off stream for a whole one.
                let cut = !conn.out.is_empty() || matches!(reason, CloseReason::OutputLimit);
                if cut && conn.stream.is_tcp() {
                    let _ = conn.stream.sock().set_linger(Some(Duration::ZERO));
                }
                conn.out.clear();
                conn.input.clear();
                conn.reason = Some(reason);
                let timers = (conn.timer.take().into_iter())
                    .chain(conn.send_timer.take())
                    .chain(conn.user_timers.drain(..));
                for t in timers {
                    self.timers.cancel(t);
                }
            }
            Kind::Linger(l) => {
                if let Some(t) = l.timer.take() {
                    self.timers.cancel(t);
                }
            }
            Kind::Listener(_) | Kind::Dgram(_) => {}
        }
        self.closing.push_back(key);
    }

    /// Applies what an operation on connection `key` asks for; returns whether `on_drain`
    /// is due. The one place `Effects` take effect.
    #[inline]
    pub(crate) fn apply(&mut self, key: Key, effects: Effects) -> bool {
        if effects.written > 0 {
            self.stats.bytes_out += effects.written as u64;
            if self.config.idle_timeout.is_some() {
                let now = self.now();
                if let Some(conn) = self.conn_mut(key) {
                    conn.last_active = now;
                }
            }
        }
        if let Some(reason) = effects.close {
            self.kill(key, reason);
            return false;
        }
        if effects.reregister {
            self.reregister_conn(key);
            self.arm_send_timer(key);
        }
        if effects.ready {
            self.ready.push(key);
        }
        if effects.flush_again {
            self.ready_write.push(key);
        }
        effects.drained
    }

    fn reregister_conn(&mut self, key: Key) {
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return;
        };
        let interest = conn.interest();
        if let Err(e) = self
            .registry
            .reregister(conn.stream.source(), key.token(), interest)
        {
            self.kill(key, CloseReason::Error(e));
        }
    }

    /// The output limits of a connection: its own, or the config's.
    fn limits(&self, conn: &Conn) -> Limits {
        conn.limits.as_deref().copied().unwrap_or(Limits {
            high: self.config.high_watermark,
            low: self.config.low_watermark,
            max_output: self.config.max_output,
            max_input: self.config.max_input,
        })
    }

    /// Buffered sendall (see `Conn::send`). Inlined: the common case (open, nothing queued,
    /// the kernel takes it all) is one lookup, one `send(2)` and a counter; everything else
    /// goes through `Conn::send`'s effects, out of line.
    #[inline]
    pub(crate) fn conn_send(
        &mut self,
        key: Key,
        data: &[u8],
        shared: Option<&Bytes>,
    ) -> Result<(), SendError> {
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return Err(SendError::Closed);
        };
        conn.accepts_output()?;
        #[cfg(feature = "tls")]
        if conn.tls.is_some() {
            return self.tls_send(key, data);
        }
        match conn.send_now(data) {
            Ok(n) => {
                self.stats.bytes_out += n as u64;
                if self.config.idle_timeout.is_some() {
                    let now = self.now();
                    if let Some(conn) = self.conn_mut(key) {
                        conn.last_active = now;
                    }
                }
                Ok(())
            }
            Err(written) => self.conn_send_queued(key, data, written, shared),
        }
    }

    /// `conn_send` when the kernel did not take everything at once (`written` of `data` it
    /// did take), or bytes were queued.
    #[inline(never)]
    fn conn_send_queued(
        &mut self,
        key: Key,
        data: &[u8],
        written: usize,
        shared: Option<&Bytes>,
    ) -> Result<(), SendError> {
        let (high, max) = (self.config.high_watermark, self.config.max_output);
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return Err(SendError::Closed);
        };
        let (high, max) = match &conn.limits {
            Some(l) => (l.high, l.max_output),
            None => (high, max),
        };
        let shared = shared.map(|b| b.slice(written..));
        let mut effects = conn.send(&data[written..], shared.as_ref(), high, max);
        effects.written += written;
        let refused = match &effects.close {
            None => None,
            Some(CloseReason::OutputLimit) => {
                log::warn!("{}: output limit of {max} bytes reached", ConnId(key));
                Some(SendError::OutputLimit)
            }
            Some(_) => Some(SendError::Closed),
        };
        let _ = self.apply(key, effects);
        refused.map_or(Ok(()), Err)
    }

    /// `Context::send_file`: queues a file region on `key` and sends what the socket takes.
    pub(crate) fn conn_send_file(
        &mut self,
        key: Key,
        file: std::sync::Arc<std::fs::File>,
        offset: u64,
        len: usize,
    ) -> Result<(), SendError> {
        let config = &self.config;
        let (high, low, budget) = (
            config.high_watermark,
            config.low_watermark,
            config.send_file_chunk,
        );
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return Err(SendError::Closed);
        };
        conn.accepts_output()?;
        #[cfg(feature = "tls")]
        if conn.tls.is_some() {
            return self.tls_send_file(key, &file, offset, len);
        }
        let (high, low) = conn
            .limits
            .as_ref()
            .map_or((high, low), |l| (l.high, l.low));
        let effects = conn.send_file(file, offset, len, high, low, budget);
        let failed = effects.close.is_some();
        let _ = self.apply(key, effects);
        if failed {
            Err(SendError::Closed)
        } else {
            Ok(())
        }
    }

    /// Writes the queue of `key`; returns whether `on_drain` is due.
    pub(crate) fn conn_flush(&mut self, key: Key) -> bool {
        let low = self.config.low_watermark;
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return false;
        };
        let low = conn.limits.as_ref().map_or(low, |l| l.low);
        let effects = conn.flush(low, self.config.send_file_chunk);
        if effects.written > 0 && self.config.send_timeout.is_some() {
            let now = self.now();
            if let Some(conn) = self.conn_mut(key) {
                conn.last_write = now;
            }
        }
        self.apply(key, effects)
    }

    /// Bytes were just queued (WRITABLE armed): start the send deadline if it is not running.
    /// Only here, off the direct-send path, so sending without queueing reads no clock.
    fn arm_send_timer(&mut self, key: Key) {
        let Some(timeout) = self.config.send_timeout else {
            return;
        };
        let now = self.now();
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        if conn.send_timer.is_some() || conn.out.is_empty() {
            return;
        }
        conn.last_write = now;
        let timer = self.set_timer(timeout, None, TimerKind::SendTimeout(key));
        if let Some(conn) = self.conn_mut(key) {
            conn.send_timer = Some(timer);
        }
    }

    /// The send deadline fired: close if bytes are queued and none left for the whole
    /// period, re-arm for the rest of it if some did, stop if the queue is empty.
    pub(crate) fn send_check(&mut self, key: Key) {
        let (now, Some(timeout)) = (self.now(), self.config.send_timeout) else {
            return;
        };
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        conn.send_timer = None;
        if conn.out.is_empty() {
            return;
        }
        let due = deadline_after(conn.last_write, timeout);
        if due <= now {
            log::debug!("{}: no write progress for {timeout:?}", ConnId(key));
            self.kill(key, CloseReason::SendTimeout);
        } else {
            let timer = self.timers.insert(due, None, TimerKind::SendTimeout(key));
            if let Some(conn) = self.conn_mut(key) {
                conn.send_timer = Some(timer);
            }
        }
    }

    /// Graceful close: flush what is queued (over TLS, then close_notify), then FIN.
    pub(crate) fn conn_close(&mut self, key: Key) {
        #[cfg(feature = "tls")]
        if self.tls_defer(key, crate::tls::Deferred::Close) {
            return;
        }
        #[cfg(feature = "tls")]
        self.tls_close_notify(key);
        if let Some(reason) = self.conn_mut(key).and_then(Conn::close) {
            self.kill(key, reason);
        }
    }

    /// FIN after the queue drains (over TLS, close_notify first); reading goes on.
    pub(crate) fn conn_shutdown_write(&mut self, key: Key) {
        #[cfg(feature = "tls")]
        if self.tls_defer(key, crate::tls::Deferred::ShutdownWrite) {
            return;
        }
        #[cfg(feature = "tls")]
        self.tls_close_notify(key);
        if let Some(conn) = self.conn_mut(key) {
            conn.shutdown_write();
        }
    }

    /// Drops the queue and closes with RST.
    pub(crate) fn conn_reset(&mut self, key: Key, reason: CloseReason) {
        if let Some(conn) = self.conn_mut(key) {
            conn.reset();
            self.kill(key, reason);
        }
    }

    pub(crate) fn conn_set_paused(&mut self, key: Key, paused: bool) {
        if let Some(conn) = self.conn_mut(key) {
            let effects = conn.set_paused(paused);
            let _ = self.apply(key, effects);
        }
    }

    /// `Context::set_output_limits` / `set_input_limit`: the new marks apply from the next
    /// send or flush; a queue already above the new high mark is congested now (a WRITABLE
    /// edge is pending for it, so the flush that clears it will come).
    pub(crate) fn conn_set_limits(&mut self, key: Key, change: impl FnOnce(&mut Limits)) -> bool {
        let Some(Kind::Conn(conn)) = self.slab.get(key.slot as usize).map(|e| &e.kind) else {
            return false;
        };
        let mut limits = self.limits(conn);
        change(&mut limits);
        limits.low = limits.low.min(limits.high);
        let Some(conn) = self.conn_mut(key) else {
            return false;
        };
        if conn.out.len() > limits.high {
            conn.congested = true;
        }
        conn.limits = Some(Box::new(limits));
        true
    }

    /// The most input connection `key` may keep unconsumed; `None` if it is not live.
    pub(crate) fn max_input(&mut self, key: Key) -> Option<usize> {
        let default = self.config.max_input;
        let conn = self.conn_mut(key)?;
        Some(conn.limits.as_ref().map_or(default, |l| l.max_input))
    }

    /// Registers a new connection in the slab and the poll. Outbound ones start in
    /// `Connecting` with WRITABLE armed and a connect timer; accepted ones get the idle timer.
    pub(crate) fn register_conn(
        &mut self,
        stream: Stream,
        state: State,
        origin: Option<ListenerId>,
    ) -> io::Result<Key> {
        if self.config.nodelay && stream.is_tcp() {
            stream.sock().set_tcp_nodelay(true)?;
        }
        let conn = Conn::new(stream, state, origin, self.now());
        let interest = conn.interest();
        let key = self.insert(Kind::Conn(conn));
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            unreachable!("just inserted")
        };
        if let Err(e) = self
            .registry
            .register(conn.stream.source(), key.token(), interest)
        {
            self.slab.remove(key.slot as usize);
            return Err(e);
        }
        self.stats.connections_open += 1;
        let timer = match state {
            State::Connecting => {
                self.stats.connects_started += 1;
                self.config
                    .connect_timeout
                    .map(|t| self.set_timer(t, None, TimerKind::Connect(key)))
            }
            _ => self.idle_timer(key),
        };
        if let Some(conn) = self.conn_mut(key) {
            conn.timer = timer;
        }
        Ok(key)
    }

    /// Registers a listener or datagram socket entry for READABLE.
    pub(crate) fn register_entry(&mut self, kind: Kind) -> io::Result<Key> {
        let key = self.insert(kind);
        let source = match live_in(&mut self.slab, key) {
            Some(Kind::Listener(l)) => l.socket.source(),
            Some(Kind::Dgram(d)) => d.socket.source(),
            _ => unreachable!("listeners and datagram sockets only"),
        };
        if let Err(e) = self
            .registry
            .register(source, key.token(), Interest::READABLE)
        {
            self.slab.remove(key.slot as usize);
            return Err(e);
        }
        Ok(key)
    }

    /// A new idle timer for `key`, if idle timeouts are on.
    fn idle_timer(&mut self, key: Key) -> Option<TimerId> {
        let idle = self.config.idle_timeout?;
        Some(self.set_timer(idle, None, TimerKind::Idle(key)))
    }

    /// An outbound connect finished: the connect timer gives way to the idle timer.
    pub(crate) fn connected(&mut self, key: Key) {
        if let Some(t) = self.conn_mut(key).and_then(|c| c.timer.take()) {
            self.timers.cancel(t);
        }
        let timer = self.idle_timer(key);
        if let Some(conn) = self.conn_mut(key) {
            conn.timer = timer;
        }
    }

    /// The idle timer fired: close if there was no traffic since, else re-arm it for the
    /// rest of the period. (Traffic only stamps `last_active`; the timer is never moved on
    /// the data path.)
    pub(crate) fn idle_check(&mut self, key: Key) {
        let (now, Some(idle)) = (self.now(), self.config.idle_timeout) else {
            return;
        };
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        let due = deadline_after(conn.last_active, idle);
        if due <= now {
            conn.timer = None;
            self.kill(key, CloseReason::IdleTimeout);
        } else {
            let timer = self.timers.insert(due, None, TimerKind::Idle(key));
            if let Some(conn) = self.conn_mut(key) {
                conn.timer = Some(timer);
            }
        }
    }

    pub(crate) fn connect_timed_out(&mut self, key: Key) {
        if let Some(conn) = self.conn_mut(key) {
            if conn.state == State::Connecting {
                conn.timer = None;
                self.kill(key, CloseReason::ConnectTimeout);
            }
        }
    }

    /// A handler timer on connection `key`; `None` if it is not open.
    pub(crate) fn set_conn_timer(
        &mut self,
        key: Key,
        after: Duration,
        period: Option<Duration>,
    ) -> Option<TimerId> {
        self.conn_mut(key)?;
        let id = self.set_timer(after, period, TimerKind::UserConn(key));
        self.conn_mut(key)?.user_timers.push(id);
        Some(id)
    }

    /// A connection timer fired: a one-shot one is no longer the connection's to cancel.
    pub(crate) fn conn_timer_fired(&mut self, key: Key, id: TimerId) {
        let still_pending = self.timers.contains(id);
        if let Some(conn) = self.conn_mut(key) {
            if !still_pending {
                conn.user_timers.retain(|&t| t != id);
            }
        }
    }

    /// `Context::cancel_timer`: only the handler's own timers (ids of the loop's internal
    /// timers are never handed out, but a forged one must not cancel them either).
    pub(crate) fn cancel_user_timer(&mut self, id: TimerId) -> bool {
        match self.timers.get(id).copied() {
            Some(TimerKind::User) => self.timers.cancel(id).is_some(),
            Some(TimerKind::UserConn(key)) => {
                if let Some(conn) = self.conn_mut(key) {
                    conn.user_timers.retain(|&t| t != id);
                }
                self.timers.cancel(id).is_some()
            }
            _ => false,
        }
    }

    /// Whether a connection from `ip` fits under `max_connections_per_ip`.
    pub(crate) fn ip_has_room(&self, ip: Option<IpAddr>) -> bool {
        match (self.config.max_connections_per_ip, ip) {
            (Some(cap), Some(ip)) => self.per_ip.get(&ip).map_or(0, |&n| n as usize) < cap,
            _ => true,
        }
    }

    /// Counts an accepted connection against its peer's IP (with a per-IP cap only).
    pub(crate) fn count_ip(&mut self, key: Key, ip: Option<IpAddr>) {
        if let (Some(_), Some(ip)) = (self.config.max_connections_per_ip, ip) {
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.ip_of.insert(key, ip);
        }
    }

    /// A counted connection is gone.
    pub(crate) fn uncount_ip(&mut self, key: Key) {
        if self.ip_of.is_empty() {
            return;
        }
        if let Some(ip) = self.ip_of.remove(&key) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }

    /// Whether another socket fits: connections and lingering sockets together stay under
    /// `max_connections` (+ `slack`); the oldest lingering sockets are dropped to make room.
    /// So whatever peers do, descriptors stay bounded by `max_connections` + a constant.
    pub(crate) fn make_room(&mut self, slack: u64) -> bool {
        let max = self.config.max_connections as u64 + slack;
        while self.stats.connections_open + self.stats.lingering >= max {
            if !self.drop_oldest_linger() {
                return false;
            }
        }
        true
    }

    /// Closes the oldest live lingering socket now (its slot is freed at once: the entry is
    /// invisible to the handler, and stale keys to it are rejected by generation).
    fn drop_oldest_linger(&mut self) -> bool {
        while let Some(key) = self.lingering.pop_front() {
            match self.slab.get(key.slot as usize) {
                Some(e) if e.generation == key.generation && !e.dead => {}
                _ => continue,
            }
            if let Kind::Linger(mut l) = self.slab.remove(key.slot as usize).kind {
                if let Some(t) = l.timer.take() {
                    self.timers.cancel(t);
                }
            }
            self.stats.lingering -= 1;
            self.stats.lingering_dropped += 1;
            return true;
        }
        false
    }

    /// Drops every lingering socket: the shutdown deadline.
    fn drop_lingering(&mut self) {
        while self.drop_oldest_linger() {}
    }

    /// A refused connection's socket, after its reply: linger if there is room for it
    /// (within a small slack over `max_connections`), else close it at once.
    pub(crate) fn linger_refused(&mut self, stream: Stream) {
        if self.make_room(REFUSAL_SLACK) {
            self.linger(stream, false);
        }
    }

    /// Takes over the socket of a connection that closed cleanly before the peer's EOF, or
    /// of one refused for `max_connections` (see linger.rs).
    pub(crate) fn linger(&mut self, stream: Stream, registered: bool) {
        let Some(linger) = Linger::start(stream, self.config.read_budget) else {
            return;
        };
        if self.config.linger.is_zero() {
            return;
        }
        // Keys of sockets that ended by themselves leave the front as they come to it.
        while let Some(&front) = self.lingering.front() {
            match self.slab.get(front.slot as usize) {
                Some(e) if e.generation == front.generation && !e.dead => break,
                _ => self.lingering.pop_front(),
            };
        }
        let key = self.insert(Kind::Linger(linger));
        let Some(Kind::Linger(l)) = live_in(&mut self.slab, key) else {
            unreachable!("just inserted")
        };
        if l.register(&self.registry, key.token(), registered).is_err() {
            self.slab.remove(key.slot as usize);
            return;
        }
        let timer = self.set_timer(self.config.linger, None, TimerKind::Linger(key));
        if let Some(Kind::Linger(l)) = live_in(&mut self.slab, key) {
            l.timer = Some(timer);
        }
        self.lingering.push_back(key);
        self.stats.lingering += 1;
    }

    /// Input on a lingering socket: read it away; close on EOF.
    pub(crate) fn linger_readable(&mut self, buf: &mut [u8], key: Key) {
        let budget = self.config.read_budget;
        let Some(Kind::Linger(l)) = live_in(&mut self.slab, key) else {
            return;
        };
        match l.discard(buf, budget) {
            crate::linger::Discard::Done => self.kill(key, CloseReason::Local),
            crate::linger::Discard::Drained => {}
            // Edge-triggered: no new edge for what is left, so come back next tick.
            crate::linger::Discard::Budget => self.ready.push(key),
        }
    }

    /// `send_to` on datagram socket `key`. While the loop delivers a receive batch (the
    /// cork is active), a UDP datagram that may be gathered (`Dgram::can_gather`) is copied
    /// into the cork and sent with the others right after the batch (`dgram_flush`); errors
    /// then are counted and logged there. Anything else is sent now, after what this socket
    /// gathered (order holds), and its error, if any, is returned.
    pub(crate) fn dgram_send_to(
        &mut self,
        key: Key,
        data: &[u8],
        to: &crate::Addr,
    ) -> io::Result<()> {
        let limit = self.config.datagram_queue_limit;
        let Some(Kind::Dgram(d)) = live_in(&mut self.slab, key) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if self.udp.cork.active {
            if let Some(to) = d.can_gather(data, to) {
                if self.udp.cork.push(key, data, to) {
                    // Full: what is gathered goes now, the batch goes on.
                    self.dgram_flush(key);
                }
                return Ok(());
            }
            if self.udp.cork.holds(key) {
                self.dgram_flush(key);
            }
        }
        let Some(Kind::Dgram(d)) = live_in(&mut self.slab, key) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let (result, rearm) = d.send_to(data, to, limit);
        match &result {
            Ok(true) => self.stats.datagrams_out += 1,
            Ok(false) => {}
            Err(_) => self.stats.datagrams_dropped += 1,
        }
        if rearm {
            self.reregister_dgram(key);
        }
        result.map(drop)
    }

    /// Sends what the cork gathered (every socket's, each in order, in batches), then what
    /// `key` has queued (WRITABLE); drops WRITABLE once that queue is empty. A socket closed
    /// during the batch still sends what it gathered: it stays open until the reaper.
    pub(crate) fn dgram_flush(&mut self, key: Key) {
        let (batch, offload) = (self.config.udp_batch, self.config.udp_offload);
        let limit = self.config.datagram_queue_limit;
        let mut just_blocked = false;
        if !self.udp.cork.is_empty() {
            let active = self.udp.cork.active;
            let mut cork = std::mem::take(&mut self.udp.cork);
            for k in cork.keys() {
                let (d, closed) = match self.slab.get_mut(k.slot as usize) {
                    Some(Entry {
                        generation,
                        dead,
                        kind: Kind::Dgram(d),
                    }) if *generation == k.generation => (d, *dead),
                    _ => continue,
                };
                let run = cork.of(k);
                let (sent, dropped, rearm) =
                    d.send_gathered(UdpId(k), &run, batch, offload, limit, closed);
                just_blocked |= k == key && !d.queue.is_empty();
                self.stats.datagrams_out += sent;
                self.stats.datagrams_dropped += dropped;
                if rearm {
                    self.reregister_dgram(k);
                }
            }
            cork.clear();
            cork.active = active;
            self.udp.cork = cork;
        }
        let Some(Kind::Dgram(d)) = live_in(&mut self.slab, key) else {
            return;
        };
        if just_blocked || (d.queue.is_empty() && !d.writable_armed) {
            return;
        }
        let (sent, dropped, rearm) = d.flush(UdpId(key), batch, offload);
        self.stats.datagrams_out += sent;
        self.stats.datagrams_dropped += dropped;
        if rearm {
            self.reregister_dgram(key);
        }
    }

    fn reregister_dgram(&mut self, key: Key) {
        if let Some(Kind::Dgram(d)) = live_in(&mut self.slab, key) {
            let interest = d.interest();
            if let Err(e) = self
                .registry
                .reregister(d.socket.source(), key.token(), interest)
            {
                log::error!("{}: reregister: {e}", UdpId(key));
            }
        }
    }

    /// Keys of the live entries whose kind matches: O(n), for shutdown only.
    pub(crate) fn live_keys(&self, wanted: impl Fn(&Kind) -> bool) -> Vec<Key> {
        let live = self.slab.iter().filter(|(_, e)| !e.dead && wanted(&e.kind));
        live.map(|(slot, e)| Key {
            slot: slot as u32,
            generation: e.generation,
        })
        .collect()
    }

    /// Starts a graceful shutdown: listeners and datagram sockets close now, connections
    /// flush and FIN, and whatever is left at the deadline is reset.
    /// Called again while one is under way, an earlier deadline brings it forward (a second
    /// SIGINT, or `deadline` zero: cut off what is left now); a later one changes nothing.
    pub(crate) fn begin_shutdown(&mut self, deadline: Duration) {
        if let Some(timer) = self.shutdown.as_ref().map(|s| s.timer) {
            let at = deadline_after(self.now(), deadline);
            let current = timer.and_then(|t| self.timers.deadline(t));
            if current.is_none_or(|c| at < c) {
                if let Some(t) = timer {
                    self.timers.cancel(t);
                }
                let timer = self.timers.insert(at, None, TimerKind::ShutdownDeadline);
                self.shutdown = Some(Shutdown { timer: Some(timer) });
            }
            return;
        }
        log::info!("graceful shutdown: {deadline:?} for peers to take their bytes");
        for key in self.live_keys(|k| matches!(k, Kind::Conn(_))) {
            self.conn_close(key);
        }
        for key in self.live_keys(|k| matches!(k, Kind::Listener(_) | Kind::Dgram(_))) {
            self.dgram_flush(key);
            self.kill(key, CloseReason::Local);
        }
        let timer = self.set_timer(deadline, None, TimerKind::ShutdownDeadline);
        self.shutdown = Some(Shutdown { timer: Some(timer) });
    }

    /// The shutdown deadline: reset every connection still open, drop lingering sockets.
    pub(crate) fn shutdown_deadline(&mut self) {
        if self.shutdown.is_none() {
            return;
        }
        let keys = self.live_keys(|k| matches!(k, Kind::Conn(_)));
        if !keys.is_empty() {
            log::warn!("shutdown deadline: cutting off {} connections", keys.len());
        }
        for key in keys {
            self.conn_reset(key, CloseReason::Shutdown);
        }
        self.drop_lingering();
    }

    /// A graceful shutdown is over when no connection is open and no socket lingers (a
    /// lingering socket's peer may still be reading our reply's tail).
    pub(crate) fn shutdown_done(&self) -> bool {
        self.shutdown.is_some() && self.stats.connections_open == 0 && self.stats.lingering == 0
    }
}

/// TLS connections (feature `tls`): plaintext in, records out through the ordinary queue.
#[cfg(feature = "tls")]
impl Core {
    /// A TLS connection is registered: its handshake has `tls_handshake_timeout` to finish.
    pub(crate) fn tls_attach(&mut self, key: Key, session: crate::tls::Tls) {
        let timeout = self.config.tls_handshake_timeout;
        if let Some(conn) = self.conn_mut(key) {
            conn.tls = Some(Box::new(session));
        }
        self.set_timer(timeout, None, TimerKind::TlsHandshake(key));
        // A client's first flight (ClientHello) is ready at once.
        self.tls_flush_records(key);
    }

    /// A close or write shutdown while the handshake runs waits for its end (the plaintext
    /// rustls holds goes out first), bounded by the handshake timeout. True if deferred.
    fn tls_defer(&mut self, key: Key, what: crate::tls::Deferred) -> bool {
        let Some(conn) = self.conn_mut(key) else {
            return false;
        };
        // After the peer's EOF the handshake cannot finish: close now.
        let eof = conn.eof;
        let Some(tls) = conn.tls.as_deref_mut() else {
            return false;
        };
        if eof || !tls.is_handshaking() {
            return false;
        }
        tls.defer(what);
        true
    }

    /// Plaintext rustls holds until the handshake ends; 0 on a plain connection.
    pub(crate) fn tls_held(conn: &Conn) -> usize {
        conn.tls.as_ref().map_or(0, |t| t.early())
    }

    /// The handshake timer: close a connection still handshaking.
    pub(crate) fn tls_handshake_check(&mut self, key: Key) {
        let handshaking = self
            .conn_mut(key)
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.is_handshaking());
        if handshaking {
            self.conn_reset(key, CloseReason::TlsHandshakeTimeout);
        }
    }

    /// `send` on a TLS connection: encrypt, then send or queue the records. Before the
    /// handshake finishes rustls keeps the plaintext, counted toward `max_output`.
    #[inline(never)]
    fn tls_send(&mut self, key: Key, plain: &[u8]) -> Result<(), SendError> {
        let max = self.config.max_output;
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return Err(SendError::Closed);
        };
        let (max, high) = conn
            .limits
            .as_ref()
            .map_or((max, self.config.high_watermark), |l| {
                (l.max_output, l.high)
            });
        let tls = conn.tls.as_deref_mut().expect("a TLS connection");
        if tls.deferred().is_some() {
            return Err(SendError::Closing);
        }
        if (tls.early() + conn.out.in_memory()).saturating_add(plain.len()) > max {
            log::warn!("{}: output limit of {max} bytes reached", ConnId(key));
            self.conn_reset(key, CloseReason::OutputLimit);
            return Err(SendError::OutputLimit);
        }
        let mut records = std::mem::take(&mut self.tls_records);
        let encrypted = tls.encrypt(plain, &mut records);
        // Plaintext held until the handshake ends counts toward the watermarks too.
        if tls.early() + conn.out.len() > high {
            conn.congested = true;
        }
        let result = match encrypted {
            Ok(()) => self.write_records(key, &records),
            Err(e) => {
                self.kill(key, CloseReason::Tls(e));
                Err(SendError::Closed)
            }
        };
        records.clear();
        self.tls_records = records;
        result
    }

    /// `send_file` over TLS: sendfile(2) cannot encrypt, so the region is read and sent
    /// through the session like any bytes (bounded by `max_output` like them). A file that
    /// ends early closes the connection with an error that says so.
    fn tls_send_file(
        &mut self,
        key: Key,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Result<(), SendError> {
        use std::os::unix::fs::FileExt;
        let mut chunk = vec![0u8; len.min(64 * 1024)];
        let mut done = 0;
        while done < len {
            let want = (len - done).min(chunk.len());
            match file.read_at(&mut chunk[..want], offset + done as u64) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ended {} bytes before its region did", len - done),
                    );
                    self.conn_reset(key, CloseReason::Error(e));
                    return Err(SendError::Closed);
                }
                Ok(n) => {
                    self.tls_send(key, &chunk[..n])?;
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.conn_reset(key, CloseReason::Error(e));
                    return Err(SendError::Closed);
                }
            }
        }
        Ok(())
    }

    /// Sends whatever records the session has ready (handshake, alerts, data released by
    /// the handshake's end).
    pub(crate) fn tls_flush_records(&mut self, key: Key) {
        self.tls_emit(key, |tls, records| tls.take_records(records));
    }

    /// close_notify, once, ahead of the FIN.
    fn tls_close_notify(&mut self, key: Key) {
        self.tls_emit(key, |tls, records| tls.close_notify(records));
    }

    /// Lets the session produce records into the reused buffer and sends or queues them.
    fn tls_emit(&mut self, key: Key, produce: impl FnOnce(&mut crate::tls::Tls, &mut Vec<u8>)) {
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return;
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return;
        };
        let mut records = std::mem::take(&mut self.tls_records);
        produce(tls, &mut records);
        if !records.is_empty() {
            let _ = self.write_records(key, &records);
        }
        records.clear();
        self.tls_records = records;
    }

    /// Ciphertext to the socket: sent now if nothing is queued, else queued in order.
    fn write_records(&mut self, key: Key, records: &[u8]) -> Result<(), SendError> {
        let Some(conn) = self.conn_mut(key) else {
            return Err(SendError::Closed);
        };
        match conn.send_now(records) {
            Ok(n) => {
                self.stats.bytes_out += n as u64;
                Ok(())
            }
            Err(written) => self.conn_send_queued(key, records, written, None),
        }
    }
}
