//! `Core`: the loop's state that callbacks may change through a `Context`: the slab of
//! entries, the registry, timers, counters and the lists that carry work across a tick.
//!
//! Invariant: an entry is only ever *marked* dead while a tick runs (`kill`); the reaper at
//! the end of the tick runs its `on_close` and frees its slot. Everything that acts on a key
//! looks it up with `live_mut`, which checks slot, generation and liveness, so stale keys,
//! stale tokens and dead entries are all dropped in one place.

use crate::conn::{Conn, State};
use crate::linger::Linger;
use crate::listener::ListenerEntry;
use crate::stream::Stream;
use crate::timers::Timers;
use crate::udp::Dgram;
use crate::{CloseReason, Config, ConnId, Context, Handler, ListenerId, Stats, token::Key};
use mio::{Interest, Registry};
use slab::Slab;
use std::cell::Cell;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(crate) fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// `Core::live_mut` on the slab alone, for code that also needs the registry or counters.
#[inline]
pub(crate) fn live_in(slab: &mut Slab<Entry>, key: Key) -> Option<&mut Kind> {
    match slab.get_mut(key.slot as usize) {
        Some(e) if e.generation == key.generation && !e.dead => Some(&mut e.kind),
        _ => None,
    }
}

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
    Idle(Key),
    Connect(Key),
    AcceptRetry(Key),
    Linger(Key),
    ShutdownDeadline,
}

/// Graceful shutdown under way.
pub(crate) struct Shutdown {
    /// The deadline timer: cancelled if the shutdown finishes first, so it cannot cut a
    /// later shutdown short.
    pub(crate) timer: Option<crate::timers::TimerId>,
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
    /// Entries marked dead this tick: `on_close`, then free, at the end of the tick.
    pub(crate) closing: Vec<Key>,
    pub(crate) stopped: bool,
    pub(crate) shutdown: Option<Shutdown>,
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
            closing: Vec::new(),
            stopped: false,
            shutdown: None,
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

    /// The time to stamp as a connection's last activity; `None` (no clock read) when no
    /// idle timeout needs it.
    #[inline]
    pub(crate) fn activity_stamp(&self) -> Option<Instant> {
        self.config.idle_timeout.map(|_| self.now())
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
        if let Kind::Conn(conn) = &mut entry.kind {
            let reason = match reason {
                CloseReason::Error(e) if conn.state == State::Connecting => {
                    CloseReason::ConnectFailed(e)
                }
                reason => reason,
            };
            log::debug!("{}: {reason}", ConnId(key));
            conn.out.clear();
            conn.reason = Some(reason);
            if let Some(t) = conn.timer.take() {
                self.timers.cancel(t);
            }
        }
        if let Kind::Linger(l) = &mut entry.kind {
            if let Some(t) = l.timer.take() {
                self.timers.cancel(t);
            }
        }
        self.closing.push(key);
    }

    /// Runs one handler callback. With `catch_panics`, a panic is logged, counted, and
    /// closes the connection the callback was about (`blame`); the loop goes on.
    #[inline]
    pub(crate) fn invoke<H: Handler>(
        &mut self,
        handler: &mut H,
        blame: Option<Key>,
        f: impl FnOnce(&mut H, &mut Context<'_>),
    ) {
        if !self.config.catch_panics {
            return f(handler, &mut Context { core: self });
        }
        let result = catch_unwind(AssertUnwindSafe(|| f(handler, &mut Context { core: self })));
        if result.is_err() {
            self.stats.panics += 1;
            match blame {
                Some(key) => {
                    log::error!("handler panicked; closing {}", ConnId(key));
                    self.conn_reset(key, CloseReason::Panicked);
                }
                None => log::error!("handler panicked"),
            }
        }
    }

    /// Registers a new connection and hands it to `on_open` (accepted ones) or waits for
    /// the connect to finish (outbound ones). Accepted connections past `max_connections`
    /// get the refusal reply and are closed.
    pub(crate) fn open_conn<H: Handler>(
        &mut self,
        handler: &mut H,
        stream: Stream,
        origin: Option<ListenerId>,
    ) {
        if self.stats.connections_open >= self.config.max_connections as u64 {
            self.stats.refused += 1;
            log::debug!("refused a connection: {} open", self.stats.connections_open);
            if let Some(reply) = &self.config.refusal_reply {
                let _ = stream.send(reply);
                // As after any clean close: FIN, and linger so the client's input cannot
                // turn the close into an RST that destroys the reply.
                crate::linger::start(self, stream, false);
            }
            return;
        }
        match self.register_conn(stream, State::Open, origin) {
            Ok(key) => {
                self.stats.accepted += 1;
                self.arm_idle_timer(key);
                self.invoke(handler, Some(key), |h, cx| h.on_open(cx, ConnId(key)));
            }
            Err(e) => log::error!("register accepted connection: {e}"),
        }
    }

    /// Slab + registry for a new connection. Outbound ones start in `Connecting` with
    /// WRITABLE armed and a connect timer.
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
        if state == State::Connecting {
            self.stats.connects_started += 1;
            if let Some(t) = self.config.connect_timeout {
                let timer = self
                    .timers
                    .insert(self.now() + t, None, TimerKind::Connect(key));
                if let Some(conn) = self.conn_mut(key) {
                    conn.timer = Some(timer);
                }
            }
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
}
