//! The `kv` example (a Redis-protocol key-value server) as a real process, driven by a real
//! Redis client library (the `redis` crate) and by raw sockets where the bytes on the wire
//! are the point: pipelines cut at every byte, malformed frames, inline commands, limits.
//! No sleeps: every wait polls with a deadline, every read has one.

mod support;

use redis::{Commands, RedisError, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Once;
use std::time::Instant;
use support::*;

fn kv(args: &[&str]) -> Example {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| build_examples(&["kv"]));
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    start_example("kv", &all)
}

fn connect_url(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("client");
    let con = client
        .get_connection_with_timeout(DEADLINE)
        .expect("connect");
    con.set_read_timeout(Some(DEADLINE)).unwrap();
    con.set_write_timeout(Some(DEADLINE)).unwrap();
    con
}

fn connect(ex: &Example) -> redis::Connection {
    connect_url(&format!("redis://{}/", ex.addr))
}

/// A raw client; Nagle off, so that small writes leave as they are written.
fn raw(ex: &Example) -> TcpStream {
    let s = client(ex.addr);
    s.set_nodelay(true).unwrap();
    s
}

/// The error line a server sent (`WRONGTYPE Operation ...`), from the client's error.
fn error_line(e: &RedisError) -> String {
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or(""))
}

/// Runs a command that must fail and returns its error line.
fn fails(con: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    match cmd.query::<Value>(con) {
        Ok(v) => panic!("{args:?} succeeded with {v:?}"),
        Err(e) => error_line(&e),
    }
}

/// The length of the first whole RESP2 reply in `buf`, or `None` if it is not whole yet.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = |from: usize| {
        buf[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let end = line_end(0)?;
    let number = || -> i64 {
        std::str::from_utf8(&buf[1..end])
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("bad reply header {:?}", String::from_utf8_lossy(buf)))
    };
    match buf.first()? {
        b'+' | b'-' | b':' => Some(end + 2),
        b'$' => {
            let n = number();
            if n < 0 {
                return Some(end + 2);
            }
            let total = end + 2 + n as usize + 2;
            (buf.len() >= total).then_some(total)
        }
        b'*' => {
            let n = number();
            let mut at = end + 2;
            for _ in 0..n.max(0) {
                at += reply_len(&buf[at..])?;
            }
            Some(at)
        }
        other => panic!(
            "not a reply: {other:?} in {:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

/// Splits a stream of whole replies into its replies.
fn split_replies(mut buf: &[u8]) -> Vec<Vec<u8>> {
    let mut replies = Vec::new();
    while !buf.is_empty() {
        let n = reply_len(buf).expect("whole replies");
        replies.push(buf[..n].to_vec());
        buf = &buf[n..];
    }
    replies
}

/// Reads from `s` until `buf` (whole replies so far) holds `count` whole replies more.
fn read_replies(s: &mut impl Read, buf: &mut Vec<u8>, count: usize) {
    let mut parsed = 0;
    let mut at = buf.len();
    let mut chunk = vec![0u8; 64 * 1024];
    while parsed < count {
        match reply_len(&buf[at..]) {
            Some(n) => {
                at += n;
                parsed += 1;
            }
            None => {
                let n = s.read(&mut chunk).expect("read replies");
                assert!(n > 0, "EOF after {parsed} of {count} replies");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Writes `chunks` one write each (on a thread, so that a server that answers while we
/// write never waits for us) and reads `count` replies; returns their bytes.
fn exchange(s: &TcpStream, chunks: Vec<Vec<u8>>, count: usize) -> Vec<u8> {
    let mut writer = s.try_clone().unwrap();
    let wrote = std::thread::spawn(move || {
        for chunk in chunks {
            writer.write_all(&chunk).expect("write");
        }
    });
    let mut replies = Vec::new();
    read_replies(&mut &*s, &mut replies, count);
    wrote.join().unwrap();
    replies
}

/// Cuts `bytes` into pieces of pseudo-random sizes from 1 to `max`.
fn cut_randomly(bytes: &[u8], max: usize, seed: u64) -> Vec<Vec<u8>> {
    let sizes = random_bytes(bytes.len(), seed);
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let size = 1 + (usize::from(sizes[i]) * 17 + i) % max;
        let end = (at + size).min(bytes.len());
        pieces.push(bytes[at..end].to_vec());
        at = end;
        i += 1;
    }
    pieces
}

/// Polls `check` until it holds, failing the test after `DEADLINE`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "not within {DEADLINE:?}: {what}");
        std::thread::yield_now();
    }
}

/// One `field:value` line of INFO.
fn info_field(con: &mut redis::Connection, field: &str) -> String {
    let info: String = redis::cmd("INFO").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .to_string()
}

/// A figure of the server process from /proc (e.g. VmHWM, VmRSS), in kB.
fn proc_status_kb(ex: &Example, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", ex.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

// ---- commands through a real client ----

#[test]
fn strings_and_set_options() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = con.set("greeting", "hello").unwrap();
    assert_eq!(con.get::<_, String>("greeting").unwrap(), "hello");
    assert_eq!(con.get::<_, Option<String>>("nope").unwrap(), None);
    assert_eq!(con.append::<_, _, i64>("greeting", " world").unwrap(), 11);
    assert_eq!(con.strlen::<_, i64>("greeting").unwrap(), 11);
    assert_eq!(
        con.getset::<_, _, String>("greeting", "bye").unwrap(),
        "hello world"
    );
    // Binary-safe values, empty and with CR LF and NUL inside.
    let binary = b"a\r\nb\0c\xff".to_vec();
    let _: () = con.set("bin", &binary).unwrap();
    assert_eq!(con.get::<_, Vec<u8>>("bin").unwrap(), binary);
    let _: () = con.set("empty", "").unwrap();
    assert_eq!(con.get::<_, Vec<u8>>("empty").unwrap(), b"");

    // NX / XX: nil when refused.
    let set = |con: &mut redis::Connection, args: &[&str]| -> Option<String> {
        let mut cmd = redis::cmd("SET");
        for a in args {
            cmd.arg(*a);
        }
        cmd.query(con).unwrap()
    };
    assert_eq!(set(&mut con, &["k", "1", "NX"]).as_deref(), Some("OK"));
    assert_eq!(set(&mut con, &["k", "2", "NX"]), None);
    assert_eq!(set(&mut con, &["k", "3", "XX"]).as_deref(), Some("OK"));
    assert_eq!(set(&mut con, &["missing", "3", "XX"]), None);
    assert_eq!(con.get::<_, String>("k").unwrap(), "3");
    // GET: the old value (nil if none).
    assert_eq!(set(&mut con, &["k", "4", "GET"]).as_deref(), Some("3"));
    assert_eq!(set(&mut con, &["fresh", "1", "get"]), None);
    // EX / PX set a TTL, KEEPTTL keeps it, a plain SET drops it.
    set(&mut con, &["t", "v", "EX", "100"]);
    let ttl: i64 = con.ttl("t").unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    set(&mut con, &["t", "w", "KEEPTTL"]);
    assert!(con.pttl::<_, i64>("t").unwrap() > 90_000);
    set(&mut con, &["t", "x", "PX", "100000"]);
    assert!(con.pttl::<_, i64>("t").unwrap() > 90_000);
    set(&mut con, &["t", "y"]);
    assert_eq!(con.ttl::<_, i64>("t").unwrap(), -1);
    assert_eq!(con.ttl::<_, i64>("nope").unwrap(), -2);
    // Bad option combinations and values, in Redis's words.
    assert_eq!(
        fails(&mut con, &["SET", "k", "v", "NX", "XX"]),
        "ERR syntax error"
    );
    assert_eq!(
        fails(&mut con, &["SET", "k", "v", "EX", "1", "KEEPTTL"]),
        "ERR syntax error"
    );
    assert_eq!(
        fails(&mut con, &["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        fails(&mut con, &["SET", "k", "v", "PX", "soon"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        fails(&mut con, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        fails(&mut con, &["NOSUCH", "a", "b"]),
        "ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' "
    );
    // Case does not matter for names and options.
    assert_eq!(
        set(&mut con, &["k", "5", "xx", "px", "5000"]).as_deref(),
        Some("OK")
    );
    let got: String = redis::cmd("gEt").arg("k").query(&mut con).unwrap();
    assert_eq!(got, "5");
}

#[test]
fn counters_and_their_errors() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    assert_eq!(con.incr::<_, _, i64>("n", 1).unwrap(), 1);
    let n: i64 = redis::cmd("INCR").arg("n").query(&mut con).unwrap();
    assert_eq!(n, 2);
    let n: i64 = redis::cmd("INCRBY")
        .arg("n")
        .arg(40)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 42);
    let n: i64 = redis::cmd("DECR").arg("n").query(&mut con).unwrap();
    assert_eq!(n, 41);
    let n: i64 = redis::cmd("DECRBY")
        .arg("n")
        .arg(-9)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 50);
    assert_eq!(con.get::<_, String>("n").unwrap(), "50");
    let _: () = con.set("s", "abc").unwrap();
    let not_int = "ERR value is not an integer or out of range";
    assert_eq!(fails(&mut con, &["INCR", "s"]), not_int);
    assert_eq!(fails(&mut con, &["INCRBY", "n", "x"]), not_int);
    assert_eq!(fails(&mut con, &["INCRBY", "n", "1.5"]), not_int);
    let _: () = con.set("spaced", " 1").unwrap();
    assert_eq!(fails(&mut con, &["INCR", "spaced"]), not_int);
    let _: () = con.set("max", i64::MAX).unwrap();
    assert_eq!(
        fails(&mut con, &["INCR", "max"]),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        fails(&mut con, &["DECRBY", "n", "-9223372036854775808"]),
        "ERR decrement would overflow"
    );
    let _: () = con.rpush("list", "x").unwrap();
    assert_eq!(
        fails(&mut con, &["INCR", "list"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    // INCR keeps a TTL.
    let _: () = redis::cmd("SET")
        .arg("ttl")
        .arg(1)
        .arg("EX")
        .arg(100)
        .query(&mut con)
        .unwrap();
    assert_eq!(con.incr::<_, _, i64>("ttl", 1).unwrap(), 2);
    assert!(con.ttl::<_, i64>("ttl").unwrap() > 0);
}

#[test]
fn lists_hashes_and_wrongtype() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    assert_eq!(con.rpush::<_, _, i64>("l", &["b", "c"]).unwrap(), 2);
    assert_eq!(con.lpush::<_, _, i64>("l", "a").unwrap(), 3);
    assert_eq!(con.llen::<_, i64>("l").unwrap(), 3);
    assert_eq!(
        con.lrange::<_, Vec<String>>("l", 0, -1).unwrap(),
        ["a", "b", "c"]
    );
    assert_eq!(
        con.lrange::<_, Vec<String>>("l", -2, 10).unwrap(),
        ["b", "c"]
    );
    assert_eq!(
        con.lrange::<_, Vec<String>>("l", 5, 10).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(con.lpop::<_, String>("l", None).unwrap(), "a");
    assert_eq!(con.rpop::<_, String>("l", None).unwrap(), "c");
    let popped: Vec<String> = redis::cmd("LPOP").arg("l").arg(5).query(&mut con).unwrap();
    assert_eq!(popped, ["b"]);
    // The emptied list is gone.
    assert_eq!(con.exists::<_, i64>("l").unwrap(), 0);
    assert_eq!(con.lpop::<_, Option<String>>("l", None).unwrap(), None);

    assert_eq!(con.hset::<_, _, _, i64>("h", "f1", "v1").unwrap(), 1);
    let created: i64 = redis::cmd("HSET")
        .arg("h")
        .arg("f1")
        .arg("v1b")
        .arg("f2")
        .arg("v2")
        .query(&mut con)
        .unwrap();
    assert_eq!(created, 1);
    assert_eq!(con.hget::<_, _, String>("h", "f1").unwrap(), "v1b");
    assert_eq!(con.hget::<_, _, Option<String>>("h", "nope").unwrap(), None);
    assert_eq!(con.hlen::<_, i64>("h").unwrap(), 2);
    let mut all: Vec<(String, String)> = con.hgetall("h").unwrap();
    all.sort();
    assert_eq!(
        all,
        [("f1".into(), "v1b".into()), ("f2".into(), "v2".into())]
    );
    assert_eq!(con.hdel::<_, _, i64>("h", &["f1", "nope"]).unwrap(), 1);
    assert_eq!(
        fails(&mut con, &["HSET", "h", "f"]),
        "ERR wrong number of arguments for 'hset' command"
    );

    // Every type-bound command against every other type.
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    let _: () = con.set("s", "v").unwrap();
    let _: () = con.rpush("l", "x").unwrap();
    for args in [
        &["GET", "l"][..],
        &["APPEND", "h", "x"],
        &["STRLEN", "l"],
        &["LPUSH", "s", "x"],
        &["RPUSH", "h", "x"],
        &["LPOP", "s"],
        &["RPOP", "h"],
        &["LRANGE", "s", "0", "-1"],
        &["LLEN", "h"],
        &["HSET", "s", "f", "v"],
        &["HGET", "l", "f"],
        &["HDEL", "s", "f"],
        &["HGETALL", "l"],
        &["HLEN", "s"],
        &["GETSET", "h", "x"],
    ] {
        assert_eq!(fails(&mut con, args), wrongtype, "{args:?}");
    }
    // MGET gives nil for keys of other types; SET and DEL work on any type.
    let got: Vec<Option<String>> = con.mget(&["s", "l", "h"]).unwrap();
    assert_eq!(got, [Some("v".to_string()), None, None]);
    let _: () = con.set("l", "now a string").unwrap();
    assert_eq!(con.get::<_, String>("l").unwrap(), "now a string");
    let t: String = redis::cmd("TYPE").arg("h").query(&mut con).unwrap();
    assert_eq!(t, "hash");
}

#[test]
fn mget_mset_del_exists() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    let _: () = con.mset(&[("a", "1"), ("b", "2"), ("c", "3")]).unwrap();
    let got: Vec<Option<String>> = con.mget(&["a", "x", "c"]).unwrap();
    assert_eq!(got, [Some("1".into()), None, Some("3".into())]);
    assert_eq!(
        fails(&mut con, &["MSET", "a", "1", "b"]),
        "ERR wrong number of arguments for 'mset' command"
    );
    // EXISTS counts every argument, repeats too.
    let n: i64 = redis::cmd("EXISTS")
        .arg("a")
        .arg("a")
        .arg("x")
        .arg("b")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(con.del::<_, i64>(&["a", "x", "b"]).unwrap(), 2);
    assert_eq!(con.exists::<_, i64>("a").unwrap(), 0);
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 1);
    let ok: String = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    assert_eq!(ok, "OK");
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 0);
    let ok: String = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(
        fails(&mut con, &["SELECT", "1"]),
        "ERR DB index is out of range"
    );
}

#[test]
fn keys_expire_on_access_and_on_the_timer() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    // Lazily: a key set with PX 50 reads as missing once its time is past.
    let _: () = redis::cmd("SET")
        .arg("short")
        .arg("v")
        .arg("PX")
        .arg(50)
        .query(&mut con)
        .unwrap();
    let pttl: i64 = con.pttl("short").unwrap();
    assert!((-2..=50).contains(&pttl), "{pttl}");
    eventually("GET short gives nil", || {
        con.get::<_, Option<String>>("short").unwrap().is_none()
    });
    assert_eq!(con.ttl::<_, i64>("short").unwrap(), -2);

    // EXPIRE, PEXPIRE, PERSIST, and an EXPIRE in the past deletes.
    let _: () = con.set("k", "v").unwrap();
    assert_eq!(con.expire::<_, i64>("k", 100).unwrap(), 1);
    assert!(con.pttl::<_, i64>("k").unwrap() > 90_000);
    assert_eq!(con.persist::<_, i64>("k").unwrap(), 1);
    assert_eq!(con.ttl::<_, i64>("k").unwrap(), -1);
    assert_eq!(con.persist::<_, i64>("k").unwrap(), 0);
    assert_eq!(con.pexpire::<_, i64>("k", 100_000).unwrap(), 1);
    assert_eq!(con.expire::<_, i64>("nope", 100).unwrap(), 0);
    let in_the_past: i64 = redis::cmd("EXPIREAT")
        .arg("k")
        .arg(1)
        .query(&mut con)
        .unwrap();
    assert_eq!(in_the_past, 1);
    assert_eq!(con.exists::<_, i64>("k").unwrap(), 0);

    // Actively: 1,000 keys with PX 50 and nothing touching them; DBSIZE (which counts keys
    // not yet deleted, as in Redis) drops to the one key without a TTL.
    let _: () = con.set("forever", "v").unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET")
            .arg(format!("tmp:{i}"))
            .arg(i)
            .arg("PX")
            .arg(50)
            .ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    eventually("DBSIZE drops to 1 without the keys being touched", || {
        redis::cmd("DBSIZE").query::<i64>(&mut con).unwrap() == 1
    });
    let expired: u64 = info_field(&mut con, "expired_keys").parse().unwrap();
    // `short` and the 1,000 (a key EXPIREAT deletes at once is deleted, not expired).
    assert_eq!(expired, 1001);
    assert_eq!(con.get::<_, String>("forever").unwrap(), "v");
}

// ---- pipelines ----

/// A pipeline of 10,001 commands through the client, then its bytes over a raw socket in one
/// write, one byte per write and in pieces of random sizes: the replies are identical.
#[test]
fn a_pipeline_of_ten_thousand_commands_in_any_cut() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    let n = 2000;
    let mut pipe = redis::pipe();
    pipe.cmd("FLUSHALL").ignore();
    for i in 0..n {
        pipe.cmd("SET")
            .arg(format!("key:{i}"))
            .arg(format!("value {i}"));
        pipe.cmd("GET").arg(format!("key:{}", i / 2));
        pipe.cmd("INCR").arg("counter");
        pipe.cmd("RPUSH").arg("list").arg(i);
        pipe.cmd("HSET")
            .arg("hash")
            .arg(format!("f{}", i % 10))
            .arg(i);
    }
    let results: Vec<Value> = pipe.query(&mut con).unwrap();
    assert_eq!(results.len(), 5 * n);
    for (i, r) in results.chunks(5).enumerate() {
        assert_eq!(r[0], Value::Okay);
        assert_eq!(
            r[1],
            Value::BulkString(format!("value {}", i / 2).into_bytes())
        );
        assert_eq!(r[2], Value::Int(i as i64 + 1));
        assert_eq!(r[3], Value::Int(i as i64 + 1));
        assert_eq!(r[4], Value::Int(i64::from(i < 10)));
    }
    let bytes = pipe.get_packed_pipeline();
    let count = 5 * n + 1;
    let s = raw(&ex);
    let whole = exchange(&s, vec![bytes.clone()], count);
    assert_eq!(split_replies(&whole).len(), count);
    assert!(whole.starts_with(b"+OK\r\n+OK\r\n$7\r\nvalue 0\r\n:1\r\n:1\r\n:1\r\n"));
    let bytewise: Vec<Vec<u8>> = bytes.iter().map(|&b| vec![b]).collect();
    assert!(exchange(&s, bytewise, count) == whole, "one byte per write");
    for seed in 1..=3 {
        let pieces = cut_randomly(&bytes, 4096, seed);
        assert!(
            exchange(&s, pieces, count) == whole,
            "random pieces, seed {seed}"
        );
    }
    // The client library still agrees on its own connection.
    let results: Vec<Value> = pipe.query(&mut con).unwrap();
    assert_eq!(results.len(), 5 * n);
}

/// A pipeline of RESP and inline commands with every cut: the first part is written and the
/// replies to the commands it completes are read before the rest is written, so the server
/// really sees the cut. The replies never change.
#[test]
fn every_cut_of_a_pipeline_gives_the_same_replies() {
    let ex = kv(&[]);
    let mut stream = Vec::new();
    let mut ends = Vec::new(); // where each command ends in `stream`
    let mut add = |cmd: &[u8]| {
        stream.extend_from_slice(cmd);
        ends.push(stream.len());
    };
    let resp = |args: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.get_packed_command()
    };
    add(&resp(&[b"FLUSHALL"]));
    add(&resp(&[b"SET", b"a", b"x\r\ny"]));
    add(b"PING\r\n");
    add(&resp(&[b"GET", b"a"]));
    add(b"SET b \"two words\"\n");
    add(&resp(&[b"INCRBY", b"n", b"12345"]));
    add(&resp(&[b"RPUSH", b"l", b"1", b"22", b"333"]));
    add(b"LRANGE l 0 -1\r\n");
    add(&resp(&[b"HSET", b"h", b"field", b"value"]));
    add(&resp(&[b"MGET", b"a", b"b", b"nope"]));
    add(&resp(&[b"ECHO", &[0u8, 255, 13, 10, 36]]));
    add(&resp(&[b"NOSUCH"]));
    add(b"*0\r\n"); // an empty command: no reply
    add(&resp(&[b"APPEND", b"a", b""]));
    add(&resp(&[b"DEL", b"a", b"b", b"n"]));
    let silent = 1; // `*0` has no reply
    let count = ends.len() - silent;

    let mut s = raw(&ex);
    let whole = exchange(&s, vec![stream.clone()], count);
    let replies = split_replies(&whole);
    assert_eq!(replies.len(), count);
    assert_eq!(replies[2], b"+PONG\r\n");
    assert_eq!(replies[3], b"$4\r\nx\r\ny\r\n");
    assert_eq!(replies[7], b"*3\r\n$1\r\n1\r\n$2\r\n22\r\n$3\r\n333\r\n");
    assert_eq!(
        replies[9],
        b"*3\r\n$4\r\nx\r\ny\r\n$9\r\ntwo words\r\n$-1\r\n"
    );
    for cut in 1..stream.len() {
        // Replies to the commands complete in the first part (the `*0` has none).
        let done = ends.iter().take_while(|&&e| e <= cut).count();
        let replied = done - usize::from(done > 12);
        s.write_all(&stream[..cut]).unwrap();
        let mut got = Vec::new();
        read_replies(&mut s, &mut got, replied);
        s.write_all(&stream[cut..]).unwrap();
        read_replies(&mut s, &mut got, count - replied);
        assert!(
            got == whole,
            "cut at {cut}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

// ---- the wire: bad input, inline commands, QUIT ----

#[test]
fn malformed_frames_get_the_protocol_error_then_eof_and_others_go_on() {
    let ex = kv(&[]);
    let mut bystander = connect(&ex);
    let _: () = bystander.set("kept", "safe").unwrap();
    let too_long = vec![b'a'; 70 * 1024];
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*1\r\n$x\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"PING\r\n*1\r\nfoo\r\nPING\r\n",
            b"+PONG\r\n-ERR Protocol error: expected '$', got 'f'\r\n",
        ),
        (
            b"*abc\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1048577\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$536870913\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"SET a \"unbalanced\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            &too_long,
            b"-ERR Protocol error: too big inline request\r\n",
        ),
    ];
    for &(input, expected) in cases {
        let mut s = raw(&ex);
        s.write_all(input).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let got = read_to_end(&mut s).expect("the reply then EOF, not a reset");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "{:?}",
            String::from_utf8_lossy(&input[..input.len().min(40)])
        );
        // The connection that broke the protocol is closed; nobody else notices.
        assert_eq!(bystander.get::<_, String>("kept").unwrap(), "safe");
    }
    // The server closes at once, without waiting for our EOF.
    let mut s = raw(&ex);
    s.write_all(b"*1\r\n$-5\r\n").unwrap();
    let got = read_to_end(&mut s).unwrap();
    assert_eq!(got, b"-ERR Protocol error: invalid bulk length\r\n");
}

#[test]
fn inline_commands_as_nc_sends_them() {
    let ex = kv(&[]);
    let mut s = raw(&ex);
    s.write_all(
        b"PING\r\nSET greeting \"hello world\"\nGET greeting\r\n\r\n   \n\
          ECHO 'it\\'s'\nEXISTS greeting nope\nget \"\\x41\\x42\"\n",
    )
    .unwrap();
    let mut got = Vec::new();
    read_replies(&mut s, &mut got, 6);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+PONG\r\n+OK\r\n$11\r\nhello world\r\n$4\r\nit's\r\n:1\r\n$-1\r\n"
    );
}

#[test]
fn quit_replies_ok_then_closes() {
    let ex = kv(&[]);
    let mut s = raw(&ex);
    // Commands after QUIT in the same read are not run.
    s.write_all(b"PING\r\nQUIT\r\nSET after quit\r\n").unwrap();
    assert_eq!(read_to_end(&mut s).unwrap(), b"+PONG\r\n+OK\r\n");
    let mut con = connect(&ex);
    let ok: String = redis::cmd("QUIT").query(&mut con).unwrap();
    assert_eq!(ok, "OK");
    let mut check = connect(&ex);
    assert_eq!(check.exists::<_, i64>("after").unwrap(), 0);
}

// ---- limits ----

#[test]
fn maxclients_refuses_with_the_redis_error() {
    let ex = kv(&["--maxclients", "2"]);
    let mut first = connect(&ex);
    let second = connect(&ex);
    let mut third = raw(&ex);
    assert_eq!(
        read_to_end(&mut third).unwrap(),
        b"-ERR max number of clients reached\r\n"
    );
    assert_eq!(info_field(&mut first, "rejected_connections"), "1");
    assert_eq!(info_field(&mut first, "connected_clients"), "2");
    // A real client fails to connect (redis-rs ignores the replies to the CLIENT SETINFO it
    // sends first, the refusal among them, and then sees EOF; so it does against Redis).
    let refused = redis::Client::open(format!("redis://{}/", ex.addr))
        .unwrap()
        .get_connection_with_timeout(DEADLINE)
        .map(|_| ());
    assert!(refused.is_err(), "a third client got in");
    assert_eq!(info_field(&mut first, "rejected_connections"), "2");
    // Room again once one leaves.
    drop(second);
    eventually("a new client gets in", || {
        let mut s = raw(&ex);
        let mut got = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut got).is_ok() && &got == b"+PONG\r\n"
    });
}

/// A 3 MiB value (past the loop's default 1 MiB input bound, which kv raises as the bulk's
/// header announces it) and a 4 MB MSET of 100,000 pairs.
#[test]
fn big_values_and_many_arguments() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    let big = random_bytes(3 << 20, 7);
    let _: () = con.set("big", &big).unwrap();
    assert!(con.get::<_, Vec<u8>>("big").unwrap() == big);
    let pairs: Vec<(String, String)> = (0..100_000)
        .map(|i| (format!("key:{i:06}"), format!("value:{i:012}")))
        .collect();
    let _: () = con.mset(&pairs).unwrap();
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 100_001);
    assert_eq!(
        con.get::<_, String>("key:099999").unwrap(),
        "value:000000099999"
    );
    // The same big value written a byte at a time at first, then the rest.
    let mut s = raw(&ex);
    let packed = redis::cmd("SET").arg("big2").arg(&big).get_packed_command();
    let mut pieces: Vec<Vec<u8>> = packed[..64].iter().map(|&b| vec![b]).collect();
    pieces.push(packed[64..].to_vec());
    assert_eq!(exchange(&s, pieces, 1), b"+OK\r\n");
    s.write_all(b"STRLEN big2\r\n").unwrap();
    let mut got = Vec::new();
    read_replies(&mut s, &mut got, 1);
    assert_eq!(got, format!(":{}\r\n", 3 << 20).as_bytes());
}

/// A client that pipelines 100 GETs of a 1 MiB value and reads nothing for a while is held
/// back (its commands wait while its replies do), so the server never holds the 100 MiB of
/// replies: its peak RSS stays far below that, and every reply still arrives, in order.
#[test]
fn a_client_that_does_not_read_is_held_back_not_buffered() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    let value = random_bytes(1 << 20, 3);
    let _: () = con.set("big", &value).unwrap();
    let mut s = raw(&ex);
    let gets = 100;
    s.write_all(&b"GET big\r\n".repeat(gets)).unwrap();
    // Others are served meanwhile.
    let _: () = con.set("other", "fine").unwrap();
    assert_eq!(con.get::<_, String>("other").unwrap(), "fine");
    let mut got = Vec::new();
    read_replies(&mut s, &mut got, gets);
    let reply = [format!("${}\r\n", 1 << 20).as_bytes(), &value, b"\r\n"].concat();
    assert_eq!(got.len(), gets * reply.len());
    assert!(got.chunks(reply.len()).all(|r| r == reply));
    let peak_kb = proc_status_kb(&ex, "VmHWM");
    assert!(
        peak_kb < 48 * 1024,
        "server peak RSS {peak_kb} kB for 100 MiB of replies"
    );
}

/// With `--max-output-mb 1`, a reply that cannot leave and does not fit in 1 MiB of queue
/// disconnects its client; others go on.
#[test]
fn a_reply_past_the_output_limit_disconnects_its_client() {
    let ex = kv(&["--max-output-mb", "1"]);
    let mut con = connect(&ex);
    let value = vec![b'v'; 32 << 20];
    let _: () = con.set("huge", &value).unwrap();
    let mut s = raw(&ex);
    s.write_all(b"GET huge\r\n").unwrap();
    recv_until(&ex.log, |l: &String| l.contains("output limit"));
    let mut got = Vec::new();
    let ended = s.read_to_end(&mut got);
    assert!(
        got.len() < value.len(),
        "{} bytes arrived ({ended:?})",
        got.len()
    );
    assert_eq!(con.strlen::<_, i64>("huge").unwrap(), 32 << 20);
}

// ---- the server around the commands ----

#[test]
fn info_counts_clients_and_commands() {
    let ex = kv(&[]);
    let mut con = connect(&ex);
    assert_eq!(info_field(&mut con, "connected_clients"), "1");
    assert_eq!(info_field(&mut con, "total_connections_received"), "1");
    let base: u64 = info_field(&mut con, "total_commands_processed")
        .parse()
        .unwrap();
    let mut s = raw(&ex);
    s.write_all(&b"PING\r\n".repeat(5)).unwrap();
    read_replies(&mut s, &mut Vec::new(), 5);
    // The INFO that read `base` and the five PINGs (an INFO does not count itself).
    assert_eq!(
        info_field(&mut con, "total_commands_processed"),
        (base + 6).to_string()
    );
    assert_eq!(info_field(&mut con, "connected_clients"), "2");
    assert_eq!(info_field(&mut con, "total_connections_received"), "2");
    assert_eq!(info_field(&mut con, "tcp_port"), ex.addr.port().to_string());
    assert_eq!(
        info_field(&mut con, "process_id"),
        ex.child.id().to_string()
    );
    drop(s);
    eventually("connected_clients back to 1", || {
        info_field(&mut con, "connected_clients") == "1"
    });
    // What redis-cli asks when it starts, and CLIENT's subcommands.
    let hello: Vec<Value> = redis::cmd("HELLO").arg(2).query(&mut con).unwrap();
    assert_eq!(hello.len(), 14);
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut con).unwrap();
    assert!(count > 40, "{count}");
    let ok: String = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, "tester");
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
    assert_eq!(id, 1);
}

#[test]
fn serves_a_unix_socket_too() {
    let path = std::env::temp_dir().join(format!("evloop-kv-{}.sock", std::process::id()));
    let p = path.to_str().unwrap();
    let ex = kv(&["--unix", p]);
    recv_until(&ex.log, |l: &String| l.contains("unix:"));
    let mut con = connect_url(&format!("redis+unix://{p}"));
    let _: () = con.set("via", "unix").unwrap();
    let mut tcp = connect(&ex);
    assert_eq!(tcp.get::<_, String>("via").unwrap(), "unix");
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nvia\r\nQUIT\r\n")
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"$4\r\nunix\r\n+OK\r\n");
    drop(ex);
    let _ = std::fs::remove_file(&path);
}

/// SIGTERM: the server stops accepting, flushes what clients are owed, closes them with
/// FIN and exits with success.
#[test]
fn sigterm_shuts_down_gracefully() {
    let mut ex = kv(&[]);
    let mut con = connect(&ex);
    let _: () = con.set("k", "v").unwrap();
    let mut s = raw(&ex);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &ex.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty());
    let end = Instant::now() + DEADLINE;
    let mut stopped = false;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match ex.log.recv_timeout(left) {
            Ok(line) => stopped |= line.contains("kv stopped"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("still running {DEADLINE:?} after SIGTERM: {e}"),
        }
    }
    assert!(stopped);
    let status = ex.child.wait().unwrap();
    assert!(status.success(), "exited with {status}");
}

#[test]
fn help_prints_usage_and_bad_flags_exit_2() {
    kv(&[]); // builds it
    let help = std::process::Command::new(example_path("kv"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: kv"));
    let bad = std::process::Command::new(example_path("kv"))
        .args(["--maxclients", "many"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--maxclients many"));
}
