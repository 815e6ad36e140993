//! `Signal`: the process signals a loop can watch, by name (no raw numbers in user code).

/// A process signal the loop can deliver to [`Handler::on_signal`](crate::Handler::on_signal)
/// (see [`EventLoop::watch_signals`](crate::EventLoop::watch_signals) and
/// [`EventLoop::shutdown_on_signals`](crate::EventLoop::shutdown_on_signals)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: the polite "please stop" of `kill` and service managers.
    Terminate,
    /// SIGHUP: the terminal went away; by convention also "reload your configuration".
    Hangup,
    /// SIGQUIT.
    Quit,
    /// SIGUSR1.
    User1,
    /// SIGUSR2.
    User2,
}

impl Signal {
    const ALL: [Signal; 6] = [
        Signal::Interrupt,
        Signal::Terminate,
        Signal::Hangup,
        Signal::Quit,
        Signal::User1,
        Signal::User2,
    ];

    /// The signal's number on this platform (`libc::SIGINT`, ...).
    pub fn number(self) -> i32 {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Hangup => libc::SIGHUP,
            Signal::Quit => libc::SIGQUIT,
            Signal::User1 => libc::SIGUSR1,
            Signal::User2 => libc::SIGUSR2,
        }
    }

    /// The signal with this number, if it is one of these.
    pub fn from_number(number: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == number)
    }

    /// Whether this signal asks the process to stop (SIGINT, SIGTERM).
    pub fn is_stop(self) -> bool {
        matches!(self, Signal::Interrupt | Signal::Terminate)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
            Signal::User1 => "SIGUSR1",
            Signal::User2 => "SIGUSR2",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for s in Signal::ALL {
            assert_eq!(Signal::from_number(s.number()), Some(s));
        }
        assert_eq!(Signal::from_number(0), None);
        assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
    }
}
