//! Binding Unix domain sockets (AF_UNIX) over stale socket files.
//!
//! A server that died leaves its socket file behind, and binding over it fails with
//! `AddrInUse`. The classic fix is to delete the file first, which also steals the path from
//! a server that is still alive. Here the path is probed instead: if connecting to it is
//! refused, nobody is listening and the file is replaced; if it connects, the path is in use
//! and binding fails. A path that is not a socket is never deleted.

use mio::net::{UnixDatagram, UnixListener};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

pub(crate) fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    bind_replacing_stale(
        path,
        |p: &Path| UnixListener::bind(p),
        // Non-blocking: a blocking connect to a live listener whose backlog is full waits
        // (on the loop thread) until it accepts; non-blocking it is `WouldBlock`, in use.
        |p: &Path| mio::net::UnixStream::connect(p).map(drop),
    )
}

pub(crate) fn bind_datagram(path: &Path) -> io::Result<UnixDatagram> {
    bind_replacing_stale(
        path,
        |p: &Path| UnixDatagram::bind(p),
        |p: &Path| std::os::unix::net::UnixDatagram::unbound()?.connect(p),
    )
}

fn bind_replacing_stale<S>(
    path: &Path,
    bind: impl Fn(&Path) -> io::Result<S>,
    probe: impl Fn(&Path) -> io::Result<()>,
) -> io::Result<S> {
    match bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
                return Err(e);
            }
            match probe(path) {
                Err(p) if p.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("replacing stale socket file {}", path.display());
                    std::fs::remove_file(path)?;
                    bind(path)
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a live socket", path.display()),
                )),
            }
        }
        other => other,
    }
}
