//! Creating listening and datagram sockets with the options mio lacks, through socket2.

use crate::Config;
use mio::net::{TcpListener, UdpSocket};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Options for a TCP listener, on top of the loop's [`Config`].
///
/// Defaults: SO_REUSEADDR on (a restarted server can bind while old connections sit in
/// TIME_WAIT), SO_REUSEPORT off, the backlog from [`Config::backlog`], and for an IPv6
/// address IPV6_V6ONLY left at the system default.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ListenOptions {
    /// Listen backlog; `None` takes [`Config::backlog`].
    pub backlog: Option<i32>,
    /// SO_REUSEPORT: several sockets (threads, processes) share the port.
    pub reuse_port: bool,
    /// Turn SO_REUSEADDR off (it is on by default).
    pub no_reuse_addr: bool,
    /// IPV6_V6ONLY for an IPv6 address; `None` leaves the system default.
    pub only_v6: Option<bool>,
}

/// Options for a UDP socket. Defaults: all off (SO_REUSEADDR off, SO_REUSEPORT off,
/// SO_BROADCAST off).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct UdpOptions {
    /// SO_REUSEADDR.
    pub reuse_addr: bool,
    /// SO_REUSEPORT.
    pub reuse_port: bool,
    /// SO_BROADCAST: allow sending to broadcast addresses.
    pub broadcast: bool,
    /// SO_RCVBUF in bytes; `None` leaves the system default.
    pub recv_buffer_size: Option<usize>,
    /// SO_SNDBUF in bytes; `None` leaves the system default.
    pub send_buffer_size: Option<usize>,
}

fn new_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

pub(crate) fn tcp_listener(
    addr: SocketAddr,
    opts: &ListenOptions,
    config: &Config,
) -> io::Result<TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(!opts.no_reuse_addr)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if let (SocketAddr::V6(_), Some(only)) = (addr, opts.only_v6) {
        socket.set_only_v6(only)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(opts.backlog.unwrap_or(config.backlog))?;
    Ok(TcpListener::from_std(socket.into()))
}

pub(crate) fn udp_socket(addr: SocketAddr, opts: &UdpOptions) -> io::Result<UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    socket.set_reuse_address(opts.reuse_addr)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_broadcast(opts.broadcast)?;
    if let Some(size) = opts.recv_buffer_size {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = opts.send_buffer_size {
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}
