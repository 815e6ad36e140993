//! `Addr`: a socket address of either family the loop serves (internet or Unix).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::Path;

/// The address of a peer or of a local socket: IPv4/IPv6, or a Unix socket path.
///
/// Unnamed Unix sockets (a client that never bound, a socketpair) have no path; they compare
/// equal to each other.
#[derive(Clone)]
pub enum Addr {
    /// An IPv4 or IPv6 address and port (TCP, UDP).
    Inet(SocketAddr),
    /// A Unix domain socket address (stream or datagram).
    Unix(UnixAddr),
}

impl Addr {
    /// The internet address, if this is one.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Addr::Inet(addr) => Some(*addr),
            Addr::Unix(_) => None,
        }
    }

    /// The Unix socket path, if this is a named Unix socket.
    pub fn as_pathname(&self) -> Option<&Path> {
        match self {
            Addr::Inet(_) => None,
            Addr::Unix(addr) => addr.as_pathname(),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Addr {
        Addr::Inet(addr)
    }
}

impl From<UnixAddr> for Addr {
    fn from(addr: UnixAddr) -> Addr {
        Addr::Unix(addr)
    }
}

impl PartialEq for Addr {
    fn eq(&self, other: &Addr) -> bool {
        match (self, other) {
            (Addr::Inet(a), Addr::Inet(b)) => a == b,
            (Addr::Unix(a), Addr::Unix(b)) => a.as_pathname() == b.as_pathname(),
            _ => false,
        }
    }
}

impl Eq for Addr {}

impl Hash for Addr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Addr::Inet(addr) => addr.hash(state),
            Addr::Unix(addr) => addr.as_pathname().hash(state),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet(addr) => addr.fmt(f),
            Addr::Unix(addr) => match addr.as_pathname() {
                Some(path) => write!(f, "unix:{}", path.display()),
                None => f.write_str("unix:(unnamed)"),
            },
        }
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
