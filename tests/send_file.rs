//! `Context::send_file`: file regions sent with sendfile(2), in order with queued bytes,
//! resuming at the right offset through partial sends, a per-turn cap that keeps other
//! connections served, and a clear close when the file is truncated while sending.

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler};
use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use support::*;

fn file_with(bytes: &[u8], name: &str) -> (File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("evloop-sendfile-{}-{name}", std::process::id()));
    let mut f = File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    (File::open(&path).unwrap(), path)
}

/// On a request line, sends: a header, two regions of the file (out of order), a trailer.
struct Server {
    file: Arc<File>,
    tx: Sender<String>,
}

impl Handler for Server {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        cx.set_send_buffer_size(conn, 4096).unwrap();
    }
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        input: &[u8],
    ) -> usize {
        if input.starts_with(b"echo") {
            cx.send(conn, input).unwrap();
            return input.len();
        }
        cx.send(conn, b"<header>").unwrap();
        cx.send_file(conn, self.file.clone(), 1 << 20, 3 << 20)
            .unwrap();
        cx.send(conn, b"<middle>").unwrap();
        cx.send_file(conn, self.file.clone(), 0, 1 << 20).unwrap();
        cx.send(conn, b"<trailer>").unwrap();
        cx.close(conn);
        input.len()
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
        let _ = self.tx.send(reason.to_string());
    }
}

#[test]
fn file_regions_arrive_in_order_with_queued_bytes_through_a_small_buffer() {
    let content = random_bytes(4 << 20, 11);
    let (file, path) = file_with(&content, "order");
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Server {
        file: Arc::new(file),
        tx,
    })
    .unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let mut c = client(addr);
    c.write_all(b"go").unwrap();
    let got = read_to_end(&mut c).unwrap();
    let mut expected = b"<header>".to_vec();
    expected.extend_from_slice(&content[1 << 20..4 << 20]);
    expected.extend_from_slice(b"<middle>");
    expected.extend_from_slice(&content[..1 << 20]);
    expected.extend_from_slice(b"<trailer>");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
    assert_eq!(recv(&rx), "closed");
    let el = server.stop();
    assert_eq!(el.stats().bytes_out, expected.len() as u64);
    std::fs::remove_file(path).unwrap();
}

/// A 256 MiB download does not hold the loop: a round trip on another connection finishes
/// while the download is still under way.
#[test]
fn a_big_download_leaves_room_for_other_connections() {
    let path = std::env::temp_dir().join(format!("evloop-sendfile-{}-big", std::process::id()));
    let f = File::create(&path).unwrap();
    f.set_len(256 << 20).unwrap(); // sparse: zeros from the page cache
    struct Big(Arc<File>);
    impl Handler for Big {
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            input: &[u8],
        ) -> usize {
            if input.starts_with(b"echo") {
                cx.send(conn, input).unwrap();
            } else {
                cx.send_file(conn, self.0.clone(), 0, 256 << 20).unwrap();
                cx.close(conn);
            }
            input.len()
        }
    }
    let mut config = Config::default();
    config.send_file_chunk = 64 * 1024;
    let mut el = EventLoop::with_config(Big(Arc::new(File::open(&path).unwrap())), config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr2 = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let mut download = client(addr2);
    download.write_all(b"get").unwrap();
    let (done_tx, done_rx) = channel();
    let reader = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let mut first = true;
        loop {
            let n = download.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if first {
                first = false;
                done_tx.send(()).unwrap(); // the download is under way
            }
            total += n;
        }
        total
    });
    recv(&done_rx);
    let mut other = client(addr2);
    assert_eq!(round_trip(&mut other, b"echo 1"), b"echo 1");
    let finished_first = reader.is_finished();
    let total = reader.join().unwrap();
    assert_eq!(total, 256 << 20);
    assert!(
        !finished_first,
        "the round trip waited for the whole download"
    );
    server.stop();
    std::fs::remove_file(path).unwrap();
}

/// A file truncated while it is being sent closes the connection with a clear error.
#[test]
fn a_file_truncated_while_sending_closes_the_connection_with_a_clear_reason() {
    let content = random_bytes(8 << 20, 5);
    let (file, path) = file_with(&content, "truncated");
    struct Once(Arc<File>, Sender<String>);
    impl Handler for Once {
        type Conn = ();
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
            cx.set_send_buffer_size(conn, 4096).unwrap();
            cx.send_file(conn, self.0.clone(), 0, 8 << 20).unwrap();
            cx.close(conn);
        }
        fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
            let _ = self.1.send(reason.to_string());
        }
    }
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Once(Arc::new(file), tx)).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let mut c = client(addr);
    let mut first = vec![0u8; 1024];
    c.read_exact(&mut first).unwrap();
    assert_eq!(first, content[..1024]);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 * 1024)
        .unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest); // EOF or a reset: either way, short
    assert!(1024 + rest.len() < 8 << 20);
    let reason = recv(&rx);
    assert!(reason.contains("before its queued region"), "{reason}");
    server.stop();
    std::fs::remove_file(path).unwrap();
}
