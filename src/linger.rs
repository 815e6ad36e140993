//! Lingering close: after a graceful close has handed every queued byte to the kernel, send
//! FIN and keep reading (and discarding) until the peer's EOF or a timeout, then close.
//!
//! Why: a socket closed with unread input, or one that receives input after it was closed,
//! is answered by the kernel with RST, and an RST makes the peer's kernel throw away what it
//! has received but not yet read: the tail of our reply would be lost. So a connection that
//! closed cleanly without having seen the peer's EOF is kept open, half-closed, in a slab
//! entry of its own (nginx and Apache call this lingering close). The handler has already had
//! `on_close`; the entry is invisible to it and to `EventLoop::slab_len`, and is counted in
//! `Stats::lingering`. `Core::linger` puts one in the slab; this file is the socket side.

use crate::stream::Stream;
use crate::stream::{interrupted, would_block};
use crate::timers::TimerId;
use mio::{Interest, Registry, Token};
use std::io;
use std::net::Shutdown;

pub(crate) struct Linger {
    pub(crate) stream: Stream,
    pub(crate) timer: Option<TimerId>,
}

/// What reading away the peer's input came to.
pub(crate) enum Discard {
    /// The peer closed (EOF) or the socket failed: nothing left to wait for.
    Done,
    /// Nothing more to read for now.
    Drained,
    /// The budget ran out with input still coming.
    Budget,
}

impl Linger {
    /// Sends FIN on a cleanly closed connection's socket and reads away input already
    /// there. `None` if there is nothing to wait for (the peer already closed, or the
    /// socket failed): the caller drops the socket.
    pub(crate) fn start(mut stream: Stream, budget: usize) -> Option<Linger> {
        stream.shutdown(Shutdown::Write).ok()?;
        // Rare enough for a small buffer of its own.
        match discard(&mut stream, &mut [0; 4096], budget) {
            Discard::Done => None,
            Discard::Drained | Discard::Budget => Some(Linger {
                stream,
                timer: None,
            }),
        }
    }

    /// Registers under the lingering entry's own token (`registered`: the socket is in the
    /// poll set already, under its connection's token). epoll reports input already waiting.
    pub(crate) fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        registered: bool,
    ) -> io::Result<()> {
        let source = self.stream.source();
        if registered {
            registry.reregister(source, token, Interest::READABLE)
        } else {
            registry.register(source, token, Interest::READABLE)
        }
    }

    /// Reads input away until drained, EOF or the budget.
    pub(crate) fn discard(&mut self, buf: &mut [u8], budget: usize) -> Discard {
        discard(&mut self.stream, buf, budget)
    }
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
