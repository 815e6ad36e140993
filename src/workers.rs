//! `Workers`: N independent event loops on N threads, shared-nothing (as nginx workers,
//! Seastar shards and actix workers do). Each loop has its own handler value, its own
//! connections and its own listener; loops talk only by posting work through `Peers`
//! (a `Handle` per loop: a mutex-guarded queue and a waker, never touched on the data path).
//!
//! Connections are spread with one listener per loop on the same address with SO_REUSEPORT:
//! the kernel hashes each connection's addresses to one of the listeners, so accepting needs
//! no hand-off between threads. ARCHITECTURE.md ("Several cores") says why this and not one
//! acceptor handing sockets out, and what SO_REUSEPORT costs.

use crate::{Config, Context, EventLoop, Handle, Handler, ListenOptions, Stats};
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The other loops of a [`Workers`] group, as one loop's handler sees them: post work to one
/// loop or to all. Given to the handler factory; usable once [`Workers::run`] has started.
pub struct Peers<H: Handler> {
    handles: Arc<OnceLock<Vec<Handle<H>>>>,
    index: usize,
    count: usize,
}

impl<H: Handler> Clone for Peers<H> {
    fn clone(&self) -> Self {
        Peers {
            handles: self.handles.clone(),
            index: self.index,
            count: self.count,
        }
    }
}

impl<H: Handler> Peers<H> {
    /// This loop's index, `0..len()`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many loops the group has.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the group is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn handles(&self) -> io::Result<&[Handle<H>]> {
        self.handles
            .get()
            .map(Vec::as_slice)
            .ok_or_else(|| io::Error::other("the loops are not running yet"))
    }

    /// Runs `task` on loop `to` (which may be this one: then it runs at the end of a later
    /// tick). Work posted from one loop to another runs in the order it was posted.
    pub fn post(
        &self,
        to: usize,
        task: impl FnOnce(&mut H, &mut Context<'_, H>) + Send + 'static,
    ) -> io::Result<()> {
        match self.handles()?.get(to) {
            Some(h) => h.post(task),
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "no such loop")),
        }
    }

    /// Runs `task` on every loop but this one (a chat line for the other loops' users, a
    /// shared counter's update). One clone of the `Arc`'d task per loop.
    pub fn post_others(
        &self,
        task: impl Fn(&mut H, &mut Context<'_, H>) + Send + Sync + 'static,
    ) -> io::Result<()> {
        let task = Arc::new(task);
        for (i, h) in self.handles()?.iter().enumerate() {
            if i != self.index {
                let task = task.clone();
                h.post(move |h, cx| task(h, cx))?;
            }
        }
        Ok(())
    }
}

/// N event loops on N threads, one handler value each, listening on the same address.
///
/// ```no_run
/// use evloop::{ConnId, Context, Handler, Workers, Config};
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
/// let mut workers = Workers::new(2, Config::default(), |_peers| Echo)?;
/// workers.listen("127.0.0.1:7000".parse().unwrap())?;
/// workers.shutdown_on_signals(std::time::Duration::from_secs(5));
/// let loops = workers.run()?; // until SIGINT/SIGTERM: every loop drains, then returns
/// let total = evloop::Stats::sum(loops.iter().map(|l| l.stats()));
/// println!("{total:?}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Workers<H: Handler> {
    loops: Vec<EventLoop<H>>,
    handles: Arc<OnceLock<Vec<Handle<H>>>>,
    signal_deadline: Option<Duration>,
}

impl<H> Workers<H>
where
    H: Handler + Send + 'static,
    H::Conn: Send,
{
    /// Builds `threads` loops (at least 1) with the same config; `factory` makes each
    /// loop's handler from its [`Peers`].
    pub fn new(
        threads: usize,
        config: Config,
        mut factory: impl FnMut(Peers<H>) -> H,
    ) -> io::Result<Workers<H>> {
        let count = threads.max(1);
        let handles = Arc::new(OnceLock::new());
        let mut loops = Vec::with_capacity(count);
        for index in 0..count {
            let peers = Peers {
                handles: handles.clone(),
                index,
                count,
            };
            loops.push(EventLoop::with_config(factory(peers), config.clone())?);
        }
        Ok(Workers {
            loops,
            handles,
            signal_deadline: None,
        })
    }

    /// Listens on `addr` in every loop: one SO_REUSEPORT listener each, so the kernel
    /// spreads connections over the loops. Port 0 picks a free port (the first loop's;
    /// the others bind the same one). Returns the address bound.
    ///
    /// SO_REUSEPORT hashes each connection's address and port pair: with many clients the
    /// loops get even shares, with a handful one loop may get most of them. Connections
    /// queued in one loop's backlog are lost (reset) if that loop's listener closes while
    /// the others stay open; a graceful shutdown closes all of them at once.
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let opts = ListenOptions {
            reuse_port: true,
            ..ListenOptions::default()
        };
        let mut bound = addr;
        for (i, el) in self.loops.iter_mut().enumerate() {
            let mut cx = el.context();
            let id = cx.listen_with(bound, &opts)?;
            if i == 0 {
                bound = cx
                    .listener_addr(id)?
                    .as_inet()
                    .ok_or_else(|| io::Error::other("not an internet address"))?;
            }
        }
        Ok(bound)
    }

    /// Listens on `addr` in the first loop only, which hands accepted connections to the
    /// loops in turn (itself included) through their handles: even shares whatever the
    /// clients' addresses, at the cost of a cross-thread hand-off per connection and one
    /// loop doing all the accepting. Returns the address bound. The alternative to
    /// [`listen`](Self::listen); BENCHMARKS.md compares the two.
    pub fn listen_round_robin(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let count = self.loops.len();
        let handles = self.handles.clone();
        let mut next = 0usize;
        let hand_off = move |stream: std::net::TcpStream| {
            let to = next % count;
            next = next.wrapping_add(1);
            match handles.get().and_then(|h| h.get(to)) {
                Some(h) if to != 0 => {
                    let posted = h.post(move |_, cx| {
                        if let Err(e) = cx.adopt(stream) {
                            log::warn!("loop {to}: adopting a connection: {e}");
                        }
                    });
                    if let Err(e) = posted {
                        log::warn!("handing a connection to loop {to}: {e}");
                    }
                    None
                }
                _ => Some(stream),
            }
        };
        let el = &mut self.loops[0];
        let mut cx = el.context();
        let id = cx.listen(addr)?;
        let bound = cx.listener_addr(id)?;
        cx.set_hand_off(id, Box::new(hand_off));
        bound
            .as_inet()
            .ok_or_else(|| io::Error::other("not an internet address"))
    }

    /// The loops, for set-up of each (bind a UDP socket, connect, set a timer).
    pub fn loops_mut(&mut self) -> &mut [EventLoop<H>] {
        &mut self.loops
    }

    /// Handles to every loop, by index, for other threads.
    pub fn handles(&self) -> Vec<Handle<H>> {
        self.loops.iter().map(EventLoop::handle).collect()
    }

    /// SIGINT and SIGTERM start a graceful shutdown of every loop with this deadline; a
    /// second one cuts off what is left. Signals are caught in one place (a thread of
    /// [`run`](Self::run)'s), not per loop.
    pub fn shutdown_on_signals(&mut self, deadline: Duration) {
        self.signal_deadline = Some(deadline);
    }

    /// Runs every loop on a thread of its own until all have finished (stopped, or a graceful
    /// shutdown ended), and gives them back for their stats. If a loop panics or fails,
    /// the others are stopped (a graceful shutdown with a 1 s deadline) and the failure is
    /// returned: a group never keeps serving a port with one loop missing.
    pub fn run(self) -> io::Result<Vec<EventLoop<H>>> {
        let handles = self.handles();
        let _ = self.handles.set(handles.clone());
        let signals = match self.signal_deadline {
            Some(deadline) => Some(watch_signals(handles.clone(), deadline)?),
            None => None,
        };
        let (done_tx, done_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(self.loops.len());
        for (index, mut el) in self.loops.into_iter().enumerate() {
            let done = done_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("evloop-{index}"))
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        el.run().map(|()| el)
                    }));
                    let report = match &result {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("event loop {index} failed: {e}")),
                        Err(panic) => Err(format!(
                            "event loop {index} panicked: {}",
                            panic_message(panic.as_ref())
                        )),
                    };
                    let _ = done.send((index, report));
                    result.ok().and_then(Result::ok)
                })?;
            threads.push(thread);
        }
        drop(done_tx);
        let mut failure = None;
        for _ in 0..threads.len() {
            let Ok((index, report)) = done_rx.recv() else {
                break;
            };
            if let Err(why) = report {
                log::error!("{why}; stopping the other loops");
                for (i, h) in handles.iter().enumerate() {
                    if i != index {
                        let _ = h.shutdown(Duration::from_secs(1));
                    }
                }
                failure.get_or_insert(why);
            }
        }
        let loops: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().ok().flatten())
            .collect();
        if let Some(s) = signals {
            s.close();
        }
        match failure {
            Some(why) => Err(io::Error::other(why)),
            None => Ok(loops),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(not a string)".into(),
    }
}

/// SIGINT/SIGTERM caught on one thread for the whole group: the first starts a graceful
/// shutdown of every loop, the next cuts off what is left.
fn watch_signals<H: Handler + 'static>(
    handles: Vec<Handle<H>>,
    deadline: Duration,
) -> io::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])?;
    let close = signals.handle();
    std::thread::Builder::new()
        .name("evloop-signals".into())
        .spawn(move || {
            let mut first = true;
            for signal in signals.forever() {
                let name = crate::Signal::from_number(signal).map_or("?".into(), |s| s.to_string());
                log::info!(
                    "{name}: {}",
                    if first {
                        "graceful shutdown"
                    } else {
                        "cutting off"
                    }
                );
                for h in &handles {
                    let _ = if first {
                        h.shutdown(deadline)
                    } else {
                        h.shutdown(Duration::ZERO)
                    };
                }
                first = false;
            }
        })?;
    Ok(close)
}

impl Stats {
    /// The counters of several loops added up (`max_events_per_tick`: the largest).
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Stats>) -> Stats {
        let mut total = Stats::default();
        for s in all {
            total.add(s);
        }
        total
    }
}
