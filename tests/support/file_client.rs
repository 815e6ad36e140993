//! A client of the `file_server` example: one buffered reader, raw writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub struct Client(pub BufReader<TcpStream>);

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let s = super::client(addr);
        s.set_nodelay(true).unwrap();
        Client(BufReader::new(s))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).expect("write request");
    }

    /// Reads one reply: `Ok(body)` after `OK <size>`, `Err(reason)` after `ERR <reason>`.
    pub fn reply(&mut self) -> Result<Vec<u8>, String> {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("read reply header");
        let line = line.strip_suffix('\n').expect("a whole header line");
        if let Some(reason) = line.strip_prefix("ERR ") {
            return Err(reason.to_string());
        }
        let size: usize = line.strip_prefix("OK ").expect(line).parse().unwrap();
        let mut body = vec![0; size];
        self.0.read_exact(&mut body).expect("read body");
        Ok(body)
    }

    pub fn get(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.send(format!("GET {path}\n").as_bytes());
        self.reply()
    }
}
