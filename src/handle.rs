//! `Handle`: reaching the loop from other threads (a mio `Waker` plus a queue of closures).

use crate::{Context, Handler};
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Work posted from another thread, run on the loop thread with the handler and a context.
pub(crate) type Task<H> = Box<dyn FnOnce(&mut H, &mut Context<'_, H>) + Send>;

pub(crate) struct Shared<H: Handler> {
    pub(crate) waker: mio::Waker,
    pub(crate) tasks: Mutex<Vec<Task<H>>>,
}

/// A `Send + Clone` handle to an [`EventLoop`](crate::EventLoop) for other threads: post
/// work to run on the loop thread, stop the loop, or shut it down gracefully.
///
/// Posting takes a lock and, when the queue was empty, one `write` to wake the loop; the
/// loop runs everything posted at the end of the tick the wake-up lands in, in order.
///
/// ```no_run
/// # use evloop::{EventLoop, Handler, ConnId};
/// # struct App; impl Handler for App { type Conn = (); }
/// let mut el = EventLoop::new(App)?;
/// let handle = el.handle();
/// std::thread::spawn(move || {
///     handle.post(|_app, cx| cx.stop()).ok();
/// });
/// el.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Handle<H: Handler> {
    shared: Weak<Shared<H>>,
}

impl<H: Handler> Clone for Handle<H> {
    fn clone(&self) -> Self {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl<H: Handler> Handle<H> {
    pub(crate) fn new(shared: &Arc<Shared<H>>) -> Handle<H> {
        Handle {
            shared: Arc::downgrade(shared),
        }
    }

    /// Runs `task` on the loop thread with the handler and a [`Context`], e.g. to send to a
    /// connection: `handle.post(move |_, cx| { let _ = cx.send(conn, &bytes); })`. Fails with
    /// `NotConnected` if the loop is gone.
    pub fn post(
        &self,
        task: impl FnOnce(&mut H, &mut Context<'_, H>) + Send + 'static,
    ) -> io::Result<()> {
        let shared = self
            .shared
            .upgrade()
            .ok_or(io::Error::from(io::ErrorKind::NotConnected))?;
        let was_empty = {
            let mut tasks = shared.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.push(Box::new(task));
            tasks.len() == 1
        };
        if was_empty {
            shared.waker.wake()?;
        }
        Ok(())
    }

    /// Makes `run()` return at the end of the current or next tick.
    pub fn stop(&self) -> io::Result<()> {
        self.post(|_, cx| cx.stop())
    }

    /// Starts a graceful shutdown (see [`Context::shutdown`]).
    pub fn shutdown(&self, deadline: Duration) -> io::Result<()> {
        self.post(move |_, cx| cx.shutdown(deadline))
    }
}

impl<H: Handler> Shared<H> {
    pub(crate) fn take_tasks(&self) -> Vec<Task<H>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
