//! Memory of a broadcast to congested readers: 1,000 connections that never read get the same
//! 1 MiB, sent once per connection with `send` (each congested queue holds its own copy) and
//! once with `broadcast` (the queues share one reference-counted buffer). Each mode runs in a
//! child process of its own so their RSS figures do not mix.
//!
//! ```text
//! cargo bench --bench broadcast            # both modes, prints the RSS growth of each
//! ```

use evloop::{Config, ConnId, Context, EventLoop, Handler};
use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const RECEIVERS: usize = 1000;
const MESSAGE: usize = 1 << 20;

#[derive(Default)]
struct Room {
    members: Vec<ConnId>,
}

impl Handler for Room {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        // A small kernel buffer, so almost all of the megabyte waits in the loop's queue.
        let _ = cx.set_send_buffer_size(conn, 4096);
        self.members.push(conn);
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One mode, in this process: prints "MODE rss_growth_kib queued_bytes".
fn child(mode: &str) {
    let mut el = EventLoop::with_config(Room::default(), Config::default()).unwrap();
    let l = el.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let mut clients = Vec::with_capacity(RECEIVERS);
    for _ in 0..RECEIVERS {
        let c = TcpStream::connect(addr).unwrap();
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(4096)
            .unwrap();
        clients.push(c);
        el.run_once(Some(Duration::ZERO)).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(30);
    while el.handler().members.len() < RECEIVERS {
        assert!(Instant::now() < end, "not all receivers connected");
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let message = vec![b'x'; MESSAGE];
    let before = rss_kib();
    let members = el.handler().members.clone();
    let mut cx = el.context();
    match mode {
        "copy" => {
            for &m in &members {
                cx.send(m, &message).unwrap();
            }
        }
        "shared" => assert_eq!(cx.broadcast(members.iter().copied(), &message), RECEIVERS),
        _ => unreachable!(),
    }
    let queued: usize = members.iter().map(|&m| cx.queued(m).unwrap()).sum();
    drop(message);
    let after = rss_kib();
    println!("{mode} {} {queued}", after.saturating_sub(before));
    // The receivers read nothing; show they are still connected (not cut off).
    let mut probe = [0u8; 1];
    clients[0].set_nonblocking(true).unwrap();
    let _ = clients[0].read(&mut probe);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode) = args.iter().skip_while(|a| *a != "--child").nth(1) {
        return child(mode);
    }
    let me = std::env::current_exe().unwrap();
    println!("broadcast of {MESSAGE} bytes to {RECEIVERS} receivers that never read");
    println!("| mode | RSS growth | bytes queued |\n|---|---:|---:|");
    for mode in ["copy", "shared"] {
        let out = Command::new(&me).args(["--child", mode]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut f = text.split_whitespace();
        let (_, kib, queued) = (f.next(), f.next().unwrap(), f.next().unwrap());
        let kib: u64 = kib.parse().unwrap();
        let label = if mode == "copy" {
            "`send` to each (a copy per queue)"
        } else {
            "`broadcast` (one shared buffer)"
        };
        println!(
            "| {label} | {:.1} MiB | {:.1} MiB |",
            kib as f64 / 1024.0,
            queued.parse::<f64>().unwrap() / 1048576.0
        );
    }
}
