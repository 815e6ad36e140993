//! `EventLoop`: the reactor. It owns the mio `Poll`, its `Events`, the handler, the one read
//! buffer and the `Core`; `run_once` is one tick, `run` ticks until stopped.

use crate::core::Core;
use crate::dispatch::{self, Ready, User};
use crate::handle::{Handle, Shared};
use crate::token::{Key, SIGNALS, WAKER};
use crate::{Config, ConnId, Context, Handler, ListenerId, Signal, Stats, UdpId};
use mio::{Events, Interest, Poll};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A single-threaded reactor serving TCP, UDP and Unix sockets to one [`Handler`].
///
/// ```no_run
/// use evloop::{ConnId, Context, EventLoop, Handler};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Conn = ();
///     fn on_data(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut (), data: &[u8]) -> usize {
///         let _ = cx.send(conn, data);
///         data.len()
///     }
/// }
///
/// let mut el = EventLoop::new(Echo)?;
/// el.listen("127.0.0.1:7000".parse().unwrap())?;
/// el.shutdown_on_signals(std::time::Duration::from_secs(5))?;
/// el.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # One tick
/// `run_once` waits for readiness (not at all if work was left over, otherwise until the
/// next timer or the given timeout), serves what last tick's budgets left and work deferred
/// to this tick, dispatches each event to its live entry, fires due timers, runs work posted
/// from other threads, and finally runs `on_close` for every entry closed during the tick
/// and frees its slot.
///
/// # Errors
/// A failure of one connection never escapes: it closes that connection with a
/// [`CloseReason`](crate::CloseReason). Only a failure of the poll itself is returned.
pub struct EventLoop<H: Handler> {
    poll: Poll,
    events: Events,
    core: Core,
    user: User<H>,
    /// The one read buffer, lent to every read: idle connections hold none.
    buf: Vec<u8>,
    /// Spare list swapped with `core.ready` each tick, to keep both allocations.
    ready_spare: Vec<Key>,
    shared: Arc<Shared<H>>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// `shutdown_on_signals`: SIGINT/SIGTERM start a graceful shutdown with this deadline.
    signal_shutdown: Option<Duration>,
}

impl<H: Handler> EventLoop<H> {
    /// A loop with the default [`Config`].
    pub fn new(handler: H) -> io::Result<EventLoop<H>> {
        EventLoop::with_config(handler, Config::default())
    }

    /// A loop with the given settings; an invalid setting (see [`Config::validate`]) is an
    /// `InvalidInput` error.
    pub fn with_config(handler: H, config: Config) -> io::Result<EventLoop<H>> {
        config.validate()?;
        let poll = Poll::new()?;
        let shared = Arc::new(Shared {
            waker: mio::Waker::new(poll.registry(), WAKER)?,
            tasks: Mutex::new(Vec::new()),
        });
        let registry = poll.registry().try_clone()?;
        Ok(EventLoop {
            events: Events::with_capacity(config.events_capacity),
            buf: vec![0; config.read_buffer_size],
            core: Core::new(registry, config),
            poll,
            user: User::new(handler),
            ready_spare: Vec::new(),
            shared,
            signals: None,
            signal_shutdown: None,
        })
    }

    /// A context to act on the loop from outside a callback: listen, bind, connect, send.
    pub fn context(&mut self) -> Context<'_, H> {
        self.core.new_tick();
        dispatch::settle(&mut self.core, &mut self.user);
        Context {
            core: &mut self.core,
            pending: &mut self.user.pending,
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

    /// Listens with TLS; see [`Context::listen_tls`].
    #[cfg(feature = "tls")]
    pub fn listen_tls(
        &mut self,
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<ListenerId> {
        self.context().listen_tls(addr, config)
    }

    /// Starts an outbound TCP connect with its connection state; see [`Context::connect`].
    pub fn connect(&mut self, addr: SocketAddr, state: H::Conn) -> io::Result<ConnId> {
        let id = self.context().connect(addr, state);
        self.user.adopt();
        id
    }

    /// A handle for other threads: post work, stop, shut down.
    pub fn handle(&self) -> Handle<H> {
        Handle::new(&self.shared)
    }

    /// Delivers these signals to [`Handler::on_signal`]. Uses signal-hook's mio source: the
    /// signal handler only writes to a pipe the loop polls. Calling it again replaces the
    /// set.
    pub fn watch_signals(&mut self, signals: &[Signal]) -> io::Result<()> {
        let numbers: Vec<i32> = signals.iter().map(|s| s.number()).collect();
        let mut source = signal_hook_mio::v1_0::Signals::new(numbers)?;
        if let Some(mut old) = self.signals.take() {
            let _ = self.poll.registry().deregister(&mut old);
        }
        self.poll
            .registry()
            .register(&mut source, SIGNALS, Interest::READABLE)?;
        self.signals = Some(source);
        Ok(())
    }

    /// Stops gracefully on SIGINT and SIGTERM: the first one starts a graceful shutdown
    /// (see [`Context::shutdown`]) with this deadline, a second one cuts off what is left at
    /// once. Opt-in: without it signals keep their default action. `on_signal` still runs
    /// first.
    pub fn shutdown_on_signals(&mut self, deadline: Duration) -> io::Result<()> {
        self.watch_signals(&[Signal::Interrupt, Signal::Terminate])?;
        self.signal_shutdown = Some(deadline);
        Ok(())
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.user.handler
    }

    /// The handler, mutably (between ticks).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.user.handler
    }

    /// The state of connection `conn`, if it is open (between ticks).
    pub fn conn_state(&mut self, conn: ConnId) -> Option<&mut H::Conn> {
        dispatch::settle(&mut self.core, &mut self.user);
        self.core.conn_mut(conn.0)?;
        self.user.states.get_mut(conn.slot())?.as_mut()
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
        let (core, user) = (&mut self.core, &mut self.user);
        core.new_tick();
        core.stats.ticks += 1;
        dispatch::settle(core, user);
        // 2. Serve what budgets left over last tick (edges won't repeat for them), and
        // work deferred to this tick.
        if !core.ready.is_empty() {
            std::mem::swap(&mut core.ready, &mut self.ready_spare);
            for key in self.ready_spare.drain(..) {
                dispatch::dispatch(core, user, &mut self.buf, key, Ready::READABLE);
            }
        }
        if !core.ready_write.is_empty() {
            for key in std::mem::take(&mut core.ready_write) {
                dispatch::dispatch(core, user, &mut self.buf, key, Ready::WRITABLE);
            }
        }
        if !user.pending.deferred.is_empty() {
            for work in std::mem::take(&mut user.pending.deferred) {
                dispatch::invoke(core, user, None, work);
            }
        }
        // 3. Dispatch each event to its live entry; stale and dead tokens are dropped.
        let mut woken = false;
        let mut count = 0;
        for event in self.events.iter() {
            count += 1;
            match event.token() {
                WAKER => woken = true,
                SIGNALS => signalled(core, user, &mut self.signals, self.signal_shutdown),
                token => {
                    let key = Key::from_token(token);
                    dispatch::dispatch(core, user, &mut self.buf, key, Ready::of(event));
                }
            }
        }
        core.stats.events += count;
        core.stats.max_events_per_tick = core.stats.max_events_per_tick.max(count);
        // 4. Fire due timers.
        dispatch::fire_timers(core, user);
        // 5. Run work posted from other threads.
        if woken {
            for task in self.shared.take_tasks() {
                dispatch::invoke(core, user, None, task);
            }
        }
        // 6. Reap: `on_close` for everything closed this tick, then free the slots.
        if !core.closing.is_empty() {
            dispatch::reap(core, user);
        }
        // 7. A graceful shutdown ends when the last connection and lingering socket have gone
        // (and no deferred work is left).
        if core.shutdown_done() && user.pending.deferred.is_empty() {
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
            if !self.core.ready.is_empty()
                || !self.core.ready_write.is_empty()
                || !self.core.closing.is_empty()
                || !self.user.pending.deferred.is_empty()
            {
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
        dispatch::dispatch(&mut self.core, &mut self.user, &mut self.buf, key, ready);
    }

    #[cfg(test)]
    pub(crate) fn core(&mut self) -> &mut Core {
        &mut self.core
    }
}

/// The signal source is readable: each pending signal goes to `on_signal`; with
/// `shutdown_on_signals`, SIGINT/SIGTERM then start a graceful shutdown, or, if one is
/// already under way, cut it short.
fn signalled<H: Handler>(
    core: &mut Core,
    user: &mut User<H>,
    source: &mut Option<signal_hook_mio::v1_0::Signals>,
    shutdown: Option<Duration>,
) {
    let pending: Vec<Signal> = match source {
        Some(s) => s.pending().filter_map(Signal::from_number).collect(),
        None => Vec::new(),
    };
    for signal in pending {
        dispatch::invoke(core, user, None, |h, cx| h.on_signal(cx, signal));
        match shutdown {
            Some(_) if signal.is_stop() && core.shutdown.is_some() => {
                log::warn!("{signal} again: cutting off what is left");
                core.shutdown_deadline();
            }
            Some(deadline) if signal.is_stop() => core.begin_shutdown(deadline),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "reactor_tests.rs"]
mod tests;
