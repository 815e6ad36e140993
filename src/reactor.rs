//! `EventLoop`: the reactor. It owns the mio `Poll`, its `Events`, the handler, the one read
//! buffer and the `Core`; `run_once` is one tick, `run` ticks until stopped.

use crate::core::{Core, Kind, Shutdown, TimerKind};
use crate::handle::{Handle, Shared};
use crate::token::{Key, SIGNALS, WAKER};
use crate::{
    Config, ConnId, Context, Handler, ListenerId, Stats, UdpId, conn, linger, listener, udp,
};
use mio::event::Event;
use mio::{Events, Interest, Poll};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    fn of(event: &Event) -> Ready {
        Ready {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            error: event.is_error(),
        }
    }
    const READABLE: Ready = Ready {
        readable: true,
        writable: false,
        read_closed: false,
        error: false,
    };
}

/// A single-threaded reactor serving TCP, UDP and Unix sockets to one [`Handler`].
///
/// ```no_run
/// use evloop::{ConnId, Context, EventLoop, Handler};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
///         cx.send(conn, data);
///     }
/// }
///
/// let mut el = EventLoop::new(Echo)?;
/// el.listen("127.0.0.1:7000".parse().unwrap())?;
/// el.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # One tick
/// `run_once` waits for readiness (not at all if work was left over, otherwise until the
/// next timer or the given timeout), serves what last tick's budgets left, dispatches each
/// event to its live entry, fires due timers, runs work posted from other threads, and
/// finally runs `on_close` for every entry closed during the tick and frees its slot.
///
/// # Errors
/// A failure of one connection never escapes: it closes that connection with a
/// [`CloseReason`](crate::CloseReason). Only a failure of the poll itself is returned.
pub struct EventLoop<H> {
    poll: Poll,
    events: Events,
    core: Core,
    handler: H,
    /// The one read buffer, lent to every read: idle connections hold none.
    buf: Vec<u8>,
    /// Spare list swapped with `core.ready` each tick, to keep both allocations.
    ready_spare: Vec<Key>,
    shared: Arc<Shared<H>>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
}

impl<H: Handler> EventLoop<H> {
    /// A loop with the default [`Config`].
    pub fn new(handler: H) -> io::Result<EventLoop<H>> {
        EventLoop::with_config(handler, Config::default())
    }

    /// A loop with the given settings.
    pub fn with_config(handler: H, config: Config) -> io::Result<EventLoop<H>> {
        let poll = Poll::new()?;
        let shared = Arc::new(Shared {
            waker: mio::Waker::new(poll.registry(), WAKER)?,
            tasks: Mutex::new(Vec::new()),
        });
        let registry = poll.registry().try_clone()?;
        Ok(EventLoop {
            events: Events::with_capacity(config.events_capacity.max(1)),
            buf: vec![0; config.read_buffer_size.max(1)],
            core: Core::new(registry, config),
            poll,
            handler,
            ready_spare: Vec::new(),
            shared,
            signals: None,
        })
    }

    /// A context to act on the loop from outside a callback: listen, bind, connect, send.
    pub fn context(&mut self) -> Context<'_> {
        self.core.new_tick();
        Context {
            core: &mut self.core,
        }
    }

    /// Listens on a TCP address; see [`Context::listen`].
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<ListenerId> {
        self.context().listen(addr)
    }

    /// Listens on a Unix stream socket; see [`Context::listen_unix`].
    pub fn listen_unix(&mut self, path: impl AsRef<Path>) -> io::Result<ListenerId> {
        self.context().listen_unix(path)
    }

    /// Binds a UDP socket; see [`Context::bind_udp`].
    pub fn bind_udp(&mut self, addr: SocketAddr) -> io::Result<UdpId> {
        self.context().bind_udp(addr)
    }

    /// Starts an outbound TCP connect; see [`Context::connect`].
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        self.context().connect(addr)
    }

    /// A handle for other threads: post work, stop, shut down.
    pub fn handle(&self) -> Handle<H> {
        Handle::new(&self.shared)
    }

    /// Delivers these signals (e.g. `libc::SIGINT`, `libc::SIGTERM`) to
    /// [`Handler::on_signal`], whose default starts a graceful shutdown. Uses signal-hook's
    /// mio source: the signal handler only writes to a pipe the loop polls.
    pub fn watch_signals(&mut self, signals: &[i32]) -> io::Result<()> {
        let mut source = signal_hook_mio::v1_0::Signals::new(signals)?;
        self.poll
            .registry()
            .register(&mut source, SIGNALS, Interest::READABLE)?;
        self.signals = Some(source);
        Ok(())
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably (between ticks).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Entries in the slab (listeners, connections, datagram sockets), dead ones included
    /// until the end of their tick; lingering closed sockets (`Stats::lingering`) are not
    /// counted. Tests use it to check that nothing leaks.
    pub fn slab_len(&self) -> usize {
        self.core.slab.len() - self.core.stats.lingering as usize
    }

    /// Runs ticks until [`Context::stop`], [`Handle::stop`], or a graceful shutdown finishes.
    pub fn run(&mut self) -> io::Result<()> {
        self.core.stopped = false;
        while !self.core.stopped {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// Runs one tick, waiting at most `timeout` for readiness (`None`: until an event or the
    /// next timer). For embedding in a program with its own loop.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // 1. Wait for readiness: not at all if work was left over; at most until the next timer.
        self.poll_events(timeout)?;
        let core = &mut self.core;
        core.new_tick();
        core.stats.ticks += 1;
        // 2. Serve what budgets left over last tick (edges won't repeat for them).
        if !core.ready.is_empty() {
            std::mem::swap(&mut core.ready, &mut self.ready_spare);
            for key in self.ready_spare.drain(..) {
                dispatch(core, &mut self.handler, &mut self.buf, key, Ready::READABLE);
            }
        }
        // 3. Dispatch each event to its live entry; stale and dead tokens are dropped.
        let mut woken = false;
        let mut count = 0;
        for event in self.events.iter() {
            count += 1;
            match event.token() {
                WAKER => woken = true,
                SIGNALS => {
                    let pending: Vec<i32> = match &mut self.signals {
                        Some(s) => s.pending().collect(),
                        None => Vec::new(),
                    };
                    for signal in pending {
                        let h = &mut self.handler;
                        core.invoke(h, None, |h, cx| h.on_signal(cx, signal));
                    }
                }
                token => {
                    let key = Key::from_token(token);
                    dispatch(
                        core,
                        &mut self.handler,
                        &mut self.buf,
                        key,
                        Ready::of(event),
                    );
                }
            }
        }
        core.stats.events += count;
        core.stats.max_events_per_tick = core.stats.max_events_per_tick.max(count);
        // 4. Fire due timers.
        fire_timers(core, &mut self.handler);
        // 5. Run work posted from other threads.
        if woken {
            for task in self.shared.take_tasks() {
                core.invoke(&mut self.handler, None, task);
            }
        }
        // 6. Reap: `on_close` for everything closed this tick, then free the slots.
        if !core.closing.is_empty() {
            reap(core, &mut self.handler);
        }
        // 7. A graceful shutdown ends when the last connection has gone.
        if core.shutdown.is_some() && core.stats.connections_open == 0 {
            if let Some(t) = core.shutdown.take().and_then(|s| s.timer) {
                core.timers.cancel(t);
            }
            core.stopped = true;
        }
        Ok(())
    }

    fn poll_events(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        loop {
            // The clock is read only when a timer is pending.
            let mut wait = match self.core.timers.next_deadline() {
                Some(at) => {
                    let t = at.saturating_duration_since(Instant::now());
                    Some(timeout.map_or(t, |u| u.min(t)))
                }
                None => timeout,
            };
            if !self.core.ready.is_empty() || !self.core.closing.is_empty() {
                wait = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut self.events, wait) {
                // A signal interrupted the wait: wait again (the timeout is recomputed).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// Test hook: dispatch a readiness event for an arbitrary token, as if poll returned it.
    #[cfg(test)]
    pub(crate) fn inject(&mut self, token: mio::Token, ready: Ready) {
        let key = Key::from_token(token);
        dispatch(&mut self.core, &mut self.handler, &mut self.buf, key, ready);
    }

    #[cfg(test)]
    pub(crate) fn core(&mut self) -> &mut Core {
        &mut self.core
    }
}

/// Routes one event to the entry `key` names, if that entry is still live. The common
/// case, a connection that is only readable, goes straight to the read loop; everything
/// else is out of line in `dispatch_other`.
#[inline]
fn dispatch<H: Handler>(core: &mut Core, h: &mut H, buf: &mut [u8], key: Key, ready: Ready) {
    let only_readable = ready.readable && !ready.writable && !ready.read_closed && !ready.error;
    if only_readable && matches!(core.live_mut(key), Some(Kind::Conn(_))) {
        conn::read(core, h, buf, key);
    } else {
        dispatch_other(core, h, buf, key, ready);
    }
}

#[inline(never)]
fn dispatch_other<H: Handler>(core: &mut Core, h: &mut H, buf: &mut [u8], key: Key, ready: Ready) {
    match core.live_mut(key) {
        Some(Kind::Listener(_)) => listener::accept(core, h, key),
        Some(Kind::Dgram(_)) => {
            if ready.writable {
                core.dgram_flush(key);
            }
            if ready.readable || ready.error {
                udp::recv(core, h, buf, key);
            }
        }
        Some(Kind::Linger(_)) => linger::readable(core, buf, key),
        Some(Kind::Conn(c)) => {
            if ready.read_closed {
                c.read_closed = true;
            }
            if ready.error {
                if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                    core.kill(key, crate::CloseReason::Error(e));
                    return;
                }
            }
            if ready.writable || ready.read_closed {
                conn::writable(core, h, key);
            }
            if ready.readable || ready.read_closed {
                conn::read(core, h, buf, key);
            }
        }
        // Stale generation, freed slot, or marked dead earlier in this tick.
        None => {}
    }
}

/// Fires the timers due at the tick's `now`. A callback may set a timer that is due at
/// once; the budget (timers pending at the start) leaves such ones to the next tick rather
/// than looping forever.
fn fire_timers<H: Handler>(core: &mut Core, h: &mut H) {
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
            TimerKind::User => core.invoke(h, None, |h, cx| h.on_timer(cx, id)),
            TimerKind::Idle(key) => core.idle_check(key),
            TimerKind::Connect(key) => core.connect_timed_out(key),
            TimerKind::AcceptRetry(key) => listener::retry(core, h, key),
            TimerKind::Linger(key) => {
                if let Some(Kind::Linger(_)) = core.live_mut(key) {
                    core.kill(key, crate::CloseReason::Local);
                }
            }
            TimerKind::ShutdownDeadline => core.shutdown_deadline(),
        }
    }
}

/// Runs `on_close` for each entry marked dead this tick (and any its callbacks kill in
/// turn), then frees the slot, which closes the socket.
fn reap<H: Handler>(core: &mut Core, h: &mut H) {
    let mut i = 0;
    while i < core.closing.len() {
        let key = core.closing[i];
        i += 1;
        let Some(entry) = core.slab.get_mut(key.slot as usize) else {
            continue;
        };
        match &mut entry.kind {
            Kind::Conn(c) => {
                let reason = c.reason.take().unwrap_or(crate::CloseReason::Local);
                // Closed cleanly before the peer's EOF: FIN and linger (see linger.rs).
                let linger = reason.is_clean() && !c.eof;
                core.stats.connections_open -= 1;
                core.stats.closed.count(&reason);
                core.invoke(h, None, |h, cx| h.on_close(cx, ConnId(key), &reason));
                if linger {
                    if let Kind::Conn(c) = core.slab.remove(key.slot as usize).kind {
                        linger::start(core, c.stream, true);
                    }
                    continue;
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
        core.slab.remove(key.slot as usize);
    }
    core.closing.clear();
}

impl Core {
    /// Keys of the live entries whose kind matches: O(n), for shutdown only.
    fn live_keys(&self, wanted: impl Fn(&Kind) -> bool) -> Vec<Key> {
        let live = self.slab.iter().filter(|(_, e)| !e.dead && wanted(&e.kind));
        live.map(|(slot, e)| Key {
            slot: slot as u32,
            generation: e.generation,
        })
        .collect()
    }

    pub(crate) fn begin_shutdown(&mut self, deadline: Duration) {
        if self.shutdown.is_some() {
            return;
        }
        log::info!("graceful shutdown: {deadline:?} for peers to take their bytes");
        self.shutdown = Some(Shutdown { timer: None });
        for key in self.live_keys(|k| matches!(k, Kind::Conn(_))) {
            self.conn_close(key);
        }
        for key in self.live_keys(|k| matches!(k, Kind::Listener(_) | Kind::Dgram(_))) {
            self.dgram_flush(key);
            self.kill(key, crate::CloseReason::Local);
        }
        let at = self.now() + deadline;
        let timer = self.timers.insert(at, None, TimerKind::ShutdownDeadline);
        if let Some(s) = &mut self.shutdown {
            s.timer = Some(timer);
        }
    }

    fn shutdown_deadline(&mut self) {
        if self.shutdown.is_none() {
            return;
        }
        let keys = self.live_keys(|k| matches!(k, Kind::Conn(_)));
        if !keys.is_empty() {
            log::warn!("shutdown deadline: cutting off {} connections", keys.len());
        }
        for key in keys {
            self.conn_reset(key, crate::CloseReason::Shutdown);
        }
    }
}

#[cfg(test)]
#[path = "reactor_tests.rs"]
mod tests;
