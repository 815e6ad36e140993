//! The echo data path allocates nothing in steady state: ticks of a loop echoing ping-pong
//! traffic are measured with a counting global allocator (allocation-counter, which counts
//! per thread, so the client thread's allocations don't count).

mod support;

use evloop::{ConnId, Context, EventLoop, Handler};
use std::io::{Read, Write};
use std::time::Duration;
use support::*;

struct Echo;
impl Handler for Echo {
    type Conn = ();
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let _ = cx.send(conn, data);
        data.len()
    }
}

#[test]
fn steady_state_echo_allocates_nothing() {
    let mut el = EventLoop::new(Echo).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    const ROUNDS: usize = 2000;
    let client = std::thread::spawn(move || {
        let mut c = client(addr);
        let mut buf = [0u8; 64];
        for i in 0..2 * ROUNDS {
            let msg = [(i % 251) as u8; 64];
            c.write_all(&msg).unwrap();
            c.read_exact(&mut buf).unwrap();
            assert_eq!(buf, msg);
        }
        // Tell the loop we're done by closing.
    });
    // Warm up: accept, first reads, lists and buffers reach their steady sizes.
    while el.stats().bytes_out < (ROUNDS as u64) * 64 {
        el.run_once(Some(Duration::from_millis(100))).unwrap();
    }
    let before = el.stats().bytes_out;
    let info = allocation_counter::measure(|| {
        while el.stats().bytes_out < before + (ROUNDS as u64 / 2) * 64 {
            el.run_once(Some(Duration::from_millis(100))).unwrap();
        }
    });
    let echoed = (el.stats().bytes_out - before) / 64;
    assert!(echoed >= ROUNDS as u64 / 2);
    assert_eq!(
        info.count_total, 0,
        "{} allocations over {echoed} echoed messages",
        info.count_total
    );
    // Let the client finish and the connection close.
    while el.stats().connections_open > 0 || el.stats().accepted == 0 {
        el.run_once(Some(Duration::from_millis(100))).unwrap();
    }
    client.join().unwrap();
}
