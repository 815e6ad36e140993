//! Echo server: TCP and UDP on the same port, like the classic echo service (RFC 862).
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:7000
//! nc 127.0.0.1 7000              # TCP: type a line, get it back
//! nc -u 127.0.0.1 7000           # UDP: each line is a datagram, echoed to the sender
//! RUST_LOG=debug cargo run --example echo    # see connections come and go
//! ```
//!
//! Options: `--addr ADDR` (default 127.0.0.1:7000), `--unix PATH` (also listen on a Unix
//! stream socket), `--idle-timeout SECS`, `--max-conns N`. SIGINT/SIGTERM shut it down
//! gracefully: it stops accepting, flushes what each client is owed, and exits.

mod common;

use evloop::{Addr, CloseReason, Config, ConnId, Context, EventLoop, Handler, UdpId};
use std::time::Duration;

struct Echo;

impl Handler for Echo {
    type Conn = ();

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        if let Ok(peer) = cx.peer_addr(conn) {
            log::debug!("{conn} open from {peer}");
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        // Refused only if the connection is closing, or was just closed at its output limit
        // (a client that sends but does not read): either way there is no one to echo to.
        let _ = cx.send(conn, data);
        data.len()
    }

    fn on_close(&mut self, _: &mut Context<'_, Self>, conn: ConnId, _: (), reason: &CloseReason) {
        log::debug!("{conn} closed: {reason}");
    }

    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        if let Err(e) = cx.send_to(socket, data, from) {
            log::debug!("echo to {from}: {e}");
        }
    }
}

struct Args {
    addr: std::net::SocketAddr,
    unix: Option<String>,
    idle_timeout: Option<Duration>,
    max_conns: Option<usize>,
}

const USAGE: &str = "usage: echo [--addr ADDR] [--unix PATH] [--idle-timeout SECS] [--max-conns N]";

fn parse_args() -> Args {
    let mut parsed = Args {
        addr: "127.0.0.1:7000".parse().unwrap(),
        unix: None,
        idle_timeout: None,
        max_conns: None,
    };
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => parsed.addr = args.value(&arg),
            "--unix" => parsed.unix = Some(args.value(&arg)),
            "--idle-timeout" => {
                let secs: f64 = args.value(&arg);
                let timeout = Duration::try_from_secs_f64(secs);
                parsed.idle_timeout = Some(timeout.unwrap_or_else(|e| args.fail(e)));
            }
            "--max-conns" => parsed.max_conns = Some(args.value(&arg)),
            _ => args.unexpected(&arg),
        }
    }
    parsed
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let args = parse_args();
    let mut config = Config::default();
    config.idle_timeout = args.idle_timeout;
    if let Some(n) = args.max_conns {
        config.max_connections = n;
        config.refusal_reply = Some(b"ERR server full\n".to_vec());
    }
    let mut el = EventLoop::with_config(Echo, config)?;
    let tcp = el.listen(args.addr)?;
    let addr = el.context().listener_addr(tcp)?;
    let udp = el.bind_udp(addr.as_inet().expect("inet"))?;
    log::info!(
        "echo listening on {addr} (tcp) and {} (udp)",
        el.context().udp_addr(udp)?
    );
    if let Some(path) = &args.unix {
        el.listen_unix(path)?;
        log::info!("echo listening on unix:{path}");
    }
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()?;
    log::info!("echo stopped: {:?}", el.stats());
    Ok(())
}
