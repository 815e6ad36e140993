//! A panic inside a callback closes only the connection it was handling (logged), and the
//! loop keeps serving; with `Config::catch_panics` off it unwinds out of `run()` instead.

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler};
use std::io::{Read, Write};
use std::sync::mpsc::{Sender, channel};
use support::*;

struct Fragile(Sender<String>);

impl Handler for Fragile {
    type Conn = ();
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        if data.starts_with(b"boom") {
            let _ = cx.send(conn, b"queued before the panic");
            panic!("handler bug triggered by input");
        }
        let _ = cx.send(conn, data);
        data.len()
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        _: (),
        reason: &CloseReason,
    ) {
        let _ = self.0.send(format!("{reason:?}"));
    }
}

fn start(
    config: Config,
) -> (
    Running<Fragile>,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let (tx, rx) = channel();
    let mut el = EventLoop::with_config(Fragile(tx), config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr, rx)
}

#[test]
fn a_panicking_callback_closes_only_its_connection() {
    let (server, addr, rx) = start(Config::default());
    let mut good = client(addr);
    assert_eq!(round_trip(&mut good, b"before"), b"before");
    let mut bad = client(addr);
    bad.write_all(b"boom").unwrap();
    assert_eq!(recv(&rx), "Panicked");
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest); // EOF or reset; never the queued reply in full
    assert_eq!(round_trip(&mut good, b"after"), b"after");
    let el = server.stop();
    assert_eq!(el.stats().panics, 1);
    assert_eq!(el.stats().closed.panicked, 1);
}

#[test]
fn with_catch_panics_off_the_panic_leaves_run() {
    let mut config = Config::default();
    config.catch_panics = false;
    let (tx, _rx) = channel();
    let mut el = EventLoop::with_config(Fragile(tx), config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let thread = std::thread::spawn(move || el.run());
    let mut bad = client(addr);
    bad.write_all(b"boom").unwrap();
    let joined = thread.join();
    assert!(joined.is_err(), "run() unwound with the handler's panic");
}
