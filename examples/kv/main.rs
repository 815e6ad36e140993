//! kv: a Redis-protocol key-value server on evloop, for real Redis clients (redis-cli,
//! redis-benchmark, client libraries).
//!
//! ```text
//! cargo run --release --example kv                       # 127.0.0.1:7004
//! redis-cli -p 7004                                      # then: SET a 1, GET a, INFO ...
//! printf 'PING\r\n' | nc -N 127.0.0.1 7004               # inline commands work too
//! redis-benchmark -p 7004 -t set,get -P 16 -q            # scripts/redis-bench.sh compares
//! ```
//!
//! RESP2 over TCP, and over a Unix socket with `--unix PATH`; inline commands. Strings (SET
//! with EX/PX/EXAT/PXAT/NX/XX/GET/KEEPTTL, GET, GETSET, MGET, MSET, INCR/DECR/INCRBY/DECRBY,
//! APPEND, STRLEN), keys (DEL, UNLINK, EXISTS, TYPE, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT,
//! TTL, PTTL, PERSIST, DBSIZE, FLUSHALL, FLUSHDB), lists (LPUSH, RPUSH, LPOP, RPOP, LRANGE,
//! LLEN), hashes (HSET, HGET, HDEL, HGETALL, HLEN) and the connection and server commands
//! clients send (PING, ECHO, SELECT 0, HELLO 2, AUTH, CLIENT ID/SETNAME/GETNAME/SETINFO,
//! COMMAND, CONFIG GET, INFO, QUIT), with Redis 7's replies and error texts.
//!
//! Keys with a TTL expire lazily when touched and actively on a timer set for the earliest
//! deadline, so their memory comes back without traffic.
//!
//! Limits, Redis's defaults unless said: a bulk argument of at most `--proto-max-bulk-len`
//! (512 MiB), at most `--max-args` (1024*1024) arguments per command, an inline or header
//! line of at most 64 KiB; a connection's unconsumed input is bounded by what its pending
//! command announced (1 MiB otherwise, 1 GiB in all, as `client-query-buffer-limit`);
//! `--maxclients` (10000) connections, past which a client gets
//! `-ERR max number of clients reached` and is closed; and a hard client output limit of
//! `--max-output-mb` (1024 MiB; Redis's default for normal clients is none): a client whose
//! queued replies would pass it is disconnected. It only ever bites on a single huge reply
//! (the limit is twice the largest value, so any one value can be read): a client that
//! pipelines without reading is held back by backpressure instead, because its commands
//! stop running while more than 64 KiB of replies wait for it.
//!
//! SIGINT/SIGTERM shut it down gracefully: stop accepting, flush what each client is owed
//! (5 s at most), exit.
//!
//! --threads: not offered, because kv's keyspace is one `Db` shared by every connection,
//! while `evloop::Workers` runs shared-nothing loops (one handler value per thread, no
//! locks): using it would mean sharding the keyspace across loops (and forwarding commands,
//! MGET/MSET across shards), which is out of scope here. One loop on one core, as
//! redis-server itself runs its commands.

#[path = "../common/mod.rs"]
mod common;

mod cmd;
mod conn;
mod db;
mod reply;
mod resp;
mod server;

use evloop::{Config, EventLoop};
use resp::Limits;
use server::Server;
use std::time::Duration;

const USAGE: &str = "usage: kv [--addr ADDR] [--unix PATH] [--maxclients N] [--max-output-mb N] \
                     [--proto-max-bulk-len BYTES] [--max-args N]";

/// What Redis answers a connection past `maxclients` with, before closing it.
const REFUSAL: &[u8] = b"-ERR max number of clients reached\r\n";

struct Args {
    addr: std::net::SocketAddr,
    unix: Option<String>,
    maxclients: usize,
    max_output: usize,
    limits: Limits,
}

fn parse_args() -> Args {
    let mut parsed = Args {
        addr: "127.0.0.1:7004".parse().unwrap(),
        unix: None,
        maxclients: 10_000,
        max_output: 1024 * 1024 * 1024,
        limits: Limits::default(),
    };
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => parsed.addr = args.value(&arg),
            "--unix" => parsed.unix = Some(args.value(&arg)),
            "--maxclients" => parsed.maxclients = args.value(&arg),
            "--max-output-mb" => {
                let mb: usize = args.value(&arg);
                if mb == 0 {
                    args.fail("--max-output-mb must be at least 1");
                }
                parsed.max_output = mb.saturating_mul(1024 * 1024);
            }
            "--proto-max-bulk-len" => parsed.limits.max_bulk_len = args.value(&arg),
            "--max-args" => parsed.limits.max_args = args.value(&arg),
            _ => args.unexpected(&arg),
        }
    }
    parsed
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let args = parse_args();
    let mut config = Config::default();
    config.max_connections = args.maxclients;
    config.refusal_reply = Some(REFUSAL.to_vec());
    config.max_output = args.max_output;
    config.max_input = conn::MIN_INPUT;
    let mut el = EventLoop::with_config(Server::new(args.limits), config)?;
    let tcp = el.listen(args.addr)?;
    let addr = el.context().listener_addr(tcp)?;
    el.handler_mut()
        .set_port(addr.as_inet().map_or(0, |a| a.port()));
    log::info!("kv listening on {addr}");
    if let Some(path) = &args.unix {
        el.listen_unix(path)?;
        log::info!("kv listening on unix:{path}");
    }
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()?;
    let stats = el.stats();
    log::info!(
        "kv stopped: {} connections served, {} refused, {} commands",
        stats.accepted,
        stats.refused,
        el.handler().commands()
    );
    Ok(())
}
