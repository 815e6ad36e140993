//! Accepting: a TCP or Unix listener, drained until `WouldBlock` or the per-tick budget.
//!
//! Edge-triggered readiness does not repeat itself, so a listener whose budget ran out is put
//! on the ready list and accepted from again next tick without waiting for a new edge. On
//! EMFILE/ENFILE the listener waits for a retry timer instead of spinning on an accept that
//! keeps failing (the pending connection keeps the listener readable, and nothing else would
//! wake it once descriptors free up).

use crate::core::{Core, Kind, TimerKind, interrupted, would_block};
use crate::{Addr, Handler, ListenerId, stream::Stream, token::Key};
use mio::event::Source;
use mio::net::{TcpListener, UnixListener};
use std::io;
use std::path::PathBuf;

pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The path is removed again when the listener closes.
    Unix(UnixListener, PathBuf),
}

pub(crate) struct ListenerEntry {
    pub(crate) socket: Listener,
    /// Waiting for the retry timer after EMFILE/ENFILE.
    pub(crate) backing_off: bool,
}

impl Listener {
    pub(crate) fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l, _) => l,
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Addr::Inet),
            Listener::Unix(l, _) => l.local_addr().map(Addr::Unix),
        }
    }
}

/// Out of descriptors: the process (EMFILE) or the system (ENFILE).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Errors about one failed incoming connection, not about the listener: skip it, go on.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts from listener `key` until `WouldBlock` or the budget; each new connection is
/// registered and handed to `on_open`.
pub(crate) fn accept<H: Handler>(core: &mut Core, handler: &mut H, key: Key) {
    for _ in 0..core.config.accept_budget {
        let Some(Kind::Listener(l)) = core.live_mut(key) else {
            return;
        };
        if l.backing_off {
            return;
        }
        match l.socket.accept() {
            Ok(stream) => core.open_conn(handler, stream, Some(ListenerId(key))),
            // Drained: the next connection raises a new edge.
            Err(e) if would_block(&e) => return,
            Err(e) if interrupted(&e) => {}
            Err(e) if out_of_descriptors(&e) => {
                l.backing_off = true;
                core.stats.accept_descriptor_errors += 1;
                let at = core.now() + core.config.accept_retry;
                core.timers.insert(at, None, TimerKind::AcceptRetry(key));
                log::warn!(
                    "accept on {}: {e}; retrying in {:?}",
                    ListenerId(key),
                    core.config.accept_retry
                );
                return;
            }
            Err(e) if transient(&e) => log::debug!("accept on {}: {e}", ListenerId(key)),
            Err(e) => {
                log::error!("accept on {}: {e}", ListenerId(key));
                return;
            }
        }
    }
    // Budget spent with connections maybe still waiting: no new edge will come for them.
    core.ready.push(key);
}

/// The EMFILE retry timer fired: try accepting again.
pub(crate) fn retry<H: Handler>(core: &mut Core, handler: &mut H, key: Key) {
    if let Some(Kind::Listener(l)) = core.live_mut(key) {
        l.backing_off = false;
        accept(core, handler, key);
    }
}
