//! A client of the `chat` example: line reads with the support deadline, raw writes.

use super::DEADLINE;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

pub struct User {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl User {
    pub fn from_stream(s: TcpStream) -> User {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        s.set_nodelay(true).unwrap();
        User {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Connects and returns the user with its welcome line.
    pub fn connect(addr: SocketAddr) -> (User, String) {
        let mut u = User::from_stream(TcpStream::connect(addr).expect("connect"));
        let welcome = u.line();
        (u, welcome)
    }

    /// Connects and takes `nick`.
    pub fn join(addr: SocketAddr, nick: &str) -> User {
        let (mut u, welcome) = User::connect(addr);
        assert!(welcome.starts_with("* welcome, you are guest"), "{welcome}");
        u.say(&format!("/nick {nick}"));
        u.skip_until(&format!("* you are now {nick}"));
        u
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write");
    }

    pub fn say(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
    }

    /// The next line, without its "\n"; fails on EOF or after the deadline.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => panic!("EOF"),
            Ok(_) => line.strip_suffix('\n').expect("whole line").to_string(),
            Err(e) => panic!("no line within {DEADLINE:?}: {e}"),
        }
    }

    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    /// Reads lines until `want` (others are skipped).
    pub fn skip_until(&mut self, want: &str) {
        while self.line() != want {}
    }

    pub fn expect_err(&mut self) -> String {
        let line = self.line();
        assert!(
            line.starts_with("ERR "),
            "expected an ERR line, got {line:?}"
        );
        line
    }
}
