//! The command executor: runs one parsed command against the [`Db`] and appends its RESP2
//! reply, with Redis 7's reply formats and error texts.
//!
//! Commands are found by a case-insensitive comparison of the name bytes (no uppercased copy
//! per command), checked for arity like Redis (`wrong number of arguments for 'get'
//! command`, `'client|setname'` for subcommands), then run. Arguments may be moved out of
//! `argv` into the keyspace (a big SET value, list elements, hash fields), so the caller
//! refills `argv` for the next command, which is what the parser does anyway.

use crate::db::{Db, Expiry, ValueRef, WrongType, compact};
use crate::reply;
use crate::resp::parse_i64;
use std::collections::VecDeque;
use std::fmt::Write as _;

/// The Redis version reported by HELLO and INFO; clients use it to pick features.
pub const REDIS_VERSION: &str = "7.2.4";

/// The longest string APPEND may build (Redis `proto-max-bulk-len`).
const MAX_STRING_LEN: usize = 512 * 1024 * 1024;

const SYNTAX_ERROR: &[u8] = b"ERR syntax error";
const WRONGTYPE: &[u8] = b"WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_AN_INTEGER: &[u8] = b"ERR value is not an integer or out of range";

/// What the caller does with the connection after the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep reading commands.
    Continue,
    /// Send the reply, then close (QUIT).
    Close,
}

/// The per-connection state commands can read and change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientState {
    /// The connection's id (CLIENT ID, HELLO).
    pub id: u64,
    /// The name set by CLIENT SETNAME or HELLO ... SETNAME.
    pub name: Option<Vec<u8>>,
}

/// Server-wide figures for INFO, filled in by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// Connections open now.
    pub connected_clients: u64,
    /// Connections accepted since start.
    pub total_connections_received: u64,
    /// Commands executed since start.
    pub total_commands_processed: u64,
    /// Connections refused because of `maxclients`.
    pub rejected_connections: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The listening TCP port.
    pub tcp_port: u16,
    /// This process's id.
    pub process_id: u32,
    /// Bytes of memory in use (0 if unknown; RSS will do).
    pub used_memory: u64,
}

/// Runs the command in `argv` (name first) at time `now_ms` and appends its reply to `out`.
/// An empty `argv` does nothing.
pub fn execute(
    db: &mut Db,
    client: &mut ClientState,
    server: &ServerInfo,
    argv: &mut [Vec<u8>],
    now_ms: u64,
    out: &mut Vec<u8>,
) -> Outcome {
    let Some(name) = argv.first() else {
        return Outcome::Continue;
    };
    let Some(mut command) = find(COMMANDS, name) else {
        unknown_command(argv, out);
        return Outcome::Continue;
    };
    let mut parent = None;
    if !command.subcommands.is_empty() && argv.len() >= 2 {
        match find(command.subcommands, &argv[1]) {
            Some(sub) => {
                parent = Some(command.name);
                command = sub;
            }
            None => {
                let mut msg = b"ERR unknown subcommand '".to_vec();
                msg.extend_from_slice(c_str(&argv[1], 128));
                msg.extend_from_slice(b"'. Try ");
                msg.extend(c_str(&argv[0], usize::MAX).to_ascii_uppercase());
                msg.extend_from_slice(b" HELP.");
                reply::error(out, &msg);
                return Outcome::Continue;
            }
        }
    }
    let argc = argv.len() as i64;
    let arity = i64::from(command.arity);
    if (arity > 0 && argc != arity) || argc < -arity {
        let full = match parent {
            Some(parent) => format!("{parent}|{}", command.name),
            None => command.name.to_string(),
        };
        arity_error(out, &full);
        return Outcome::Continue;
    }
    let mut ctx = Ctx {
        db,
        client,
        server,
        argv,
        now: now_ms,
        out,
        name: command.name,
        close: false,
    };
    (command.run)(&mut ctx);
    if ctx.close {
        Outcome::Close
    } else {
        Outcome::Continue
    }
}

/// What a command handler works with.
struct Ctx<'a> {
    db: &'a mut Db,
    client: &'a mut ClientState,
    server: &'a ServerInfo,
    argv: &'a mut [Vec<u8>],
    now: u64,
    out: &'a mut Vec<u8>,
    /// The command's name, for error texts.
    name: &'static str,
    close: bool,
}

impl Ctx<'_> {
    fn error(&mut self, msg: &[u8]) {
        reply::error(self.out, msg);
    }

    fn arity_error(&mut self) {
        arity_error(self.out, self.name);
    }

    /// The argument at `i` as Redis's `getLongLongFromObjectOrReply` reads it.
    fn integer_arg(&mut self, i: usize) -> Option<i64> {
        let value = parse_i64(&self.argv[i]);
        if value.is_none() {
            self.error(NOT_AN_INTEGER);
        }
        value
    }

    fn invalid_expire_time(&mut self) {
        let msg = format!("ERR invalid expire time in '{}' command", self.name);
        self.error(msg.as_bytes());
    }
}

/// A command's table entry; the fields after `run` feed COMMAND's reply.
struct Command {
    /// Lowercase name.
    name: &'static str,
    /// Redis arity: N means exactly N arguments (name included), -N at least N.
    arity: i32,
    run: fn(&mut Ctx<'_>),
    flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step.
    keys: (i32, i32, i32),
    subcommands: &'static [Command],
}

const fn command(
    name: &'static str,
    arity: i32,
    run: fn(&mut Ctx<'_>),
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
) -> Command {
    Command {
        name,
        arity,
        run,
        flags,
        keys,
        subcommands: &[],
    }
}

const fn container(
    name: &'static str,
    arity: i32,
    run: fn(&mut Ctx<'_>),
    flags: &'static [&'static str],
    subcommands: &'static [Command],
) -> Command {
    Command {
        name,
        arity,
        run,
        flags,
        keys: (0, 0, 0),
        subcommands,
    }
}

const RO_FAST: &[&str] = &["readonly", "fast"];
const RO: &[&str] = &["readonly"];
const W: &[&str] = &["write"];
const W_FAST: &[&str] = &["write", "fast"];
const W_OOM: &[&str] = &["write", "denyoom"];
const W_OOM_FAST: &[&str] = &["write", "denyoom", "fast"];
const ADMIN: &[&str] = &["loading", "stale"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);
const NO_KEYS: (i32, i32, i32) = (0, 0, 0);

/// The commands, the most frequent first (lookup is a scan).
static COMMANDS: &[Command] = &[
    command("get", 2, get, RO_FAST, ONE_KEY),
    command("set", -3, set, W_OOM, ONE_KEY),
    command("ping", -1, ping, &["fast"], NO_KEYS),
    command("incr", 2, incr, W_OOM_FAST, ONE_KEY),
    command("lpush", -3, lpush, W_OOM_FAST, ONE_KEY),
    command("rpush", -3, rpush, W_OOM_FAST, ONE_KEY),
    command("lpop", -2, lpop, W_FAST, ONE_KEY),
    command("rpop", -2, rpop, W_FAST, ONE_KEY),
    command("hset", -4, hset, W_OOM_FAST, ONE_KEY),
    command("hget", 3, hget, RO_FAST, ONE_KEY),
    command("mset", -3, mset, W_OOM, (1, -1, 2)),
    command("mget", -2, mget, RO_FAST, ALL_KEYS),
    command("lrange", 4, lrange, RO, ONE_KEY),
    command("del", -2, del, W, ALL_KEYS),
    command("exists", -2, exists, RO_FAST, ALL_KEYS),
    command("expire", -3, expire, W_FAST, ONE_KEY),
    command("pexpire", -3, pexpire, W_FAST, ONE_KEY),
    command("expireat", -3, expireat, W_FAST, ONE_KEY),
    command("pexpireat", -3, pexpireat, W_FAST, ONE_KEY),
    command("ttl", 2, ttl, RO_FAST, ONE_KEY),
    command("pttl", 2, pttl, RO_FAST, ONE_KEY),
    command("persist", 2, persist, W_FAST, ONE_KEY),
    command("decr", 2, decr, W_OOM_FAST, ONE_KEY),
    command("incrby", 3, incrby, W_OOM_FAST, ONE_KEY),
    command("decrby", 3, decrby, W_OOM_FAST, ONE_KEY),
    command("append", 3, append, W_OOM_FAST, ONE_KEY),
    command("strlen", 2, strlen, RO_FAST, ONE_KEY),
    command("getset", 3, getset, W_OOM_FAST, ONE_KEY),
    command("llen", 2, llen, RO_FAST, ONE_KEY),
    command("hdel", -3, hdel, W_FAST, ONE_KEY),
    command("hgetall", 2, hgetall, RO, ONE_KEY),
    command("hlen", 2, hlen, RO_FAST, ONE_KEY),
    command("unlink", -2, del, W_FAST, ALL_KEYS),
    command("type", 2, type_, RO_FAST, ONE_KEY),
    command("echo", 2, echo, &["loading", "stale", "fast"], NO_KEYS),
    command("dbsize", 1, dbsize, RO_FAST, NO_KEYS),
    command("select", 2, select, &["loading", "stale", "fast"], NO_KEYS),
    command("flushall", -1, flush, W, NO_KEYS),
    command("flushdb", -1, flush, W, NO_KEYS),
    command("info", -1, info, ADMIN, NO_KEYS),
    command("hello", -1, hello, CONN, NO_KEYS),
    command("auth", -2, auth, CONN, NO_KEYS),
    command("quit", -1, quit, CONN, NO_KEYS),
    container(
        "client",
        -2,
        no_subcommand,
        &["sentinel"],
        &[
            command("id", 2, client_id, ADMIN, NO_KEYS),
            command("setname", 3, client_setname, ADMIN, NO_KEYS),
            command("getname", 2, client_getname, ADMIN, NO_KEYS),
            command("setinfo", 4, client_setinfo, ADMIN, NO_KEYS),
        ],
    ),
    container(
        "command",
        -1,
        command_all,
        ADMIN,
        &[
            command("count", 2, command_count, ADMIN, NO_KEYS),
            command("docs", -2, command_docs, ADMIN, NO_KEYS),
            command("info", -2, command_info, ADMIN, NO_KEYS),
            command("list", -2, command_list, ADMIN, NO_KEYS),
        ],
    ),
    container(
        "config",
        -2,
        no_subcommand,
        &[],
        &[command("get", -3, config_get, ADMIN, NO_KEYS)],
    ),
];

fn find(table: &'static [Command], name: &[u8]) -> Option<&'static Command> {
    let first = name.first()?.to_ascii_lowercase();
    table.iter().find(|c| {
        let candidate = c.name.as_bytes();
        // Length and first letter rule out nearly every entry before the full comparison.
        candidate.len() == name.len()
            && candidate[0] == first
            && candidate.eq_ignore_ascii_case(name)
    })
}

/// Case-insensitive comparison of an argument with an option name.
fn is(arg: &[u8], option: &str) -> bool {
    arg.eq_ignore_ascii_case(option.as_bytes())
}

/// The bytes C's `%.Ns` prints of an argument: up to `max`, stopping at a NUL.
fn c_str(s: &[u8], max: usize) -> &[u8] {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    &s[..end.min(max)]
}

fn arity_error(out: &mut Vec<u8>, full_name: &str) {
    let msg = format!("ERR wrong number of arguments for '{full_name}' command");
    reply::error(out, msg.as_bytes());
}

/// Redis 7's `unknown command 'foo', with args beginning with: 'a' 'b' `.
fn unknown_command(argv: &[Vec<u8>], out: &mut Vec<u8>) {
    let mut args = Vec::new();
    for arg in &argv[1..] {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        args.push(b'\'');
        args.extend_from_slice(c_str(arg, room));
        args.extend_from_slice(b"' ");
    }
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(c_str(&argv[0], 128));
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&args);
    reply::error(out, &msg);
}

// ---- connection ----

fn ping(c: &mut Ctx<'_>) {
    match c.argv.len() {
        1 => reply::simple(c.out, b"PONG"),
        2 => reply::bulk(c.out, &c.argv[1]),
        _ => c.arity_error(),
    }
}

fn echo(c: &mut Ctx<'_>) {
    reply::bulk(c.out, &c.argv[1]);
}

fn quit(c: &mut Ctx<'_>) {
    reply::ok(c.out);
    c.close = true;
}

fn select(c: &mut Ctx<'_>) {
    let Some(index) = c.integer_arg(1) else {
        return;
    };
    if i32::try_from(index).is_err() {
        c.error(b"ERR value is out of range, value must between -2147483648 and 2147483647");
    } else if index != 0 {
        c.error(b"ERR DB index is out of range");
    } else {
        reply::ok(c.out);
    }
}

/// The password check of a server without passwords: the `default` user takes any.
fn authenticate(c: &mut Ctx<'_>, user: usize) -> bool {
    if c.argv[user] == b"default" {
        return true;
    }
    c.error(b"WRONGPASS invalid username-password pair or user is disabled.");
    false
}

fn auth(c: &mut Ctx<'_>) {
    match c.argv.len() {
        2 => c.error(
            b"ERR AUTH <password> called without any password configured for the default \
              user. Are you sure your configuration is correct?",
        ),
        3 => {
            if authenticate(c, 1) {
                reply::ok(c.out);
            }
        }
        _ => c.error(SYNTAX_ERROR),
    }
}

/// Client names and CLIENT SETINFO values: printable ASCII without spaces.
fn valid_client_attr(value: &[u8]) -> bool {
    c_str(value, usize::MAX)
        .iter()
        .all(|b| (b'!'..=b'~').contains(b))
}

const BAD_CLIENT_NAME: &[u8] =
    b"ERR Client names cannot contain spaces, newlines or special characters.";

fn hello(c: &mut Ctx<'_>) {
    let mut next = 1;
    if c.argv.len() >= 2 {
        let Some(version) = parse_i64(&c.argv[1]) else {
            c.error(b"ERR Protocol version is not an integer or out of range");
            return;
        };
        // Only RESP2 is spoken here (Redis also takes 3).
        if version != 2 {
            c.error(b"NOPROTO unsupported protocol version");
            return;
        }
        next = 2;
    }
    let mut name = None;
    let mut auth_user = None;
    let mut j = next;
    while j < c.argv.len() {
        let more = c.argv.len() - 1 - j;
        let opt = &c.argv[j];
        if is(opt, "auth") && more >= 2 {
            auth_user = Some(j + 1);
            j += 2;
        } else if is(opt, "setname") && more >= 1 {
            if !valid_client_attr(&c.argv[j + 1]) {
                c.error(BAD_CLIENT_NAME);
                return;
            }
            name = Some(j + 1);
            j += 1;
        } else {
            let mut msg = b"ERR Syntax error in HELLO option '".to_vec();
            msg.extend_from_slice(c_str(opt, usize::MAX));
            msg.push(b'\'');
            c.error(&msg);
            return;
        }
        j += 1;
    }
    if let Some(user) = auth_user {
        if !authenticate(c, user) {
            return;
        }
    }
    if let Some(i) = name {
        set_client_name(c.client, &c.argv[i]);
    }
    let out = &mut *c.out;
    reply::array(out, 14);
    reply::bulk(out, b"server");
    reply::bulk(out, b"redis");
    reply::bulk(out, b"version");
    reply::bulk(out, REDIS_VERSION.as_bytes());
    reply::bulk(out, b"proto");
    reply::integer(out, 2);
    reply::bulk(out, b"id");
    reply::integer(out, c.client.id as i64);
    reply::bulk(out, b"mode");
    reply::bulk(out, b"standalone");
    reply::bulk(out, b"role");
    reply::bulk(out, b"master");
    reply::bulk(out, b"modules");
    reply::array(out, 0);
}

fn set_client_name(client: &mut ClientState, name: &[u8]) {
    client.name = if name.is_empty() {
        None
    } else {
        Some(name.to_vec())
    };
}

/// A container command called without a subcommand (its arity check lets none through).
fn no_subcommand(c: &mut Ctx<'_>) {
    c.arity_error();
}

fn client_id(c: &mut Ctx<'_>) {
    reply::integer(c.out, c.client.id as i64);
}

fn client_setname(c: &mut Ctx<'_>) {
    if !valid_client_attr(&c.argv[2]) {
        c.error(BAD_CLIENT_NAME);
        return;
    }
    set_client_name(c.client, &c.argv[2]);
    reply::ok(c.out);
}

fn client_getname(c: &mut Ctx<'_>) {
    match &c.client.name {
        Some(name) => reply::bulk(c.out, name),
        None => reply::null_bulk(c.out),
    }
}

/// CLIENT SETINFO LIB-NAME|LIB-VER value: checked and accepted (client libraries send it on
/// connect), not kept.
fn client_setinfo(c: &mut Ctx<'_>) {
    let attr = c_str(&c.argv[2], usize::MAX).to_vec();
    if !is(&attr, "lib-name") && !is(&attr, "lib-ver") {
        let mut msg = b"ERR Unrecognized option '".to_vec();
        msg.extend_from_slice(&attr);
        msg.push(b'\'');
        c.error(&msg);
    } else if !valid_client_attr(&c.argv[3]) {
        let mut msg = b"ERR ".to_vec();
        msg.extend_from_slice(&attr);
        msg.extend_from_slice(b" cannot contain spaces, newlines or special characters.");
        c.error(&msg);
    } else {
        reply::ok(c.out);
    }
}

// ---- introspection ----

/// One COMMAND INFO entry: name, arity, flags, first key, last key, step, ACL categories,
/// tips, key specs, subcommands.
fn command_entry(out: &mut Vec<u8>, command: &Command, parent: Option<&str>) {
    reply::array(out, 10);
    match parent {
        Some(parent) => reply::bulk(out, format!("{parent}|{}", command.name).as_bytes()),
        None => reply::bulk(out, command.name.as_bytes()),
    }
    reply::integer(out, i64::from(command.arity));
    reply::array(out, command.flags.len());
    for flag in command.flags {
        reply::simple(out, flag.as_bytes());
    }
    let (first, last, step) = command.keys;
    reply::integer(out, i64::from(first));
    reply::integer(out, i64::from(last));
    reply::integer(out, i64::from(step));
    reply::array(out, 0);
    reply::array(out, 0);
    reply::array(out, 0);
    reply::array(out, command.subcommands.len());
    for sub in command.subcommands {
        command_entry(out, sub, Some(command.name));
    }
}

fn command_all(c: &mut Ctx<'_>) {
    reply::array(c.out, COMMANDS.len());
    for command in COMMANDS {
        command_entry(c.out, command, None);
    }
}

fn command_count(c: &mut Ctx<'_>) {
    reply::integer(c.out, COMMANDS.len() as i64);
}

/// COMMAND DOCS: no documentation is served, which redis-cli takes in stride (its help
/// then has no server-side entries).
fn command_docs(c: &mut Ctx<'_>) {
    reply::array(c.out, 0);
}

fn command_info(c: &mut Ctx<'_>) {
    if c.argv.len() == 2 {
        command_all(c);
        return;
    }
    reply::array(c.out, c.argv.len() - 2);
    for name in &c.argv[2..] {
        match find(COMMANDS, name) {
            Some(command) => command_entry(c.out, command, None),
            None => reply::null_bulk(c.out),
        }
    }
}

fn command_list(c: &mut Ctx<'_>) {
    if c.argv.len() > 2 {
        c.error(SYNTAX_ERROR);
        return;
    }
    reply::array(c.out, COMMANDS.len());
    for command in COMMANDS {
        reply::bulk(c.out, command.name.as_bytes());
    }
}

/// The configuration parameters CONFIG GET reports (redis-benchmark asks for two).
const CONFIG: &[(&str, &str)] = &[("save", ""), ("appendonly", "no"), ("databases", "1")];

fn config_get(c: &mut Ctx<'_>) {
    let matches: Vec<&(&str, &str)> = CONFIG
        .iter()
        .filter(|(name, _)| {
            c.argv[2..]
                .iter()
                .any(|pattern| glob_match(pattern, name.as_bytes()))
        })
        .collect();
    reply::array(c.out, matches.len() * 2);
    for (name, value) in matches {
        reply::bulk(c.out, name.as_bytes());
        reply::bulk(c.out, value.as_bytes());
    }
}

/// Case-insensitive glob with `*` and `?` (enough for CONFIG GET patterns).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((p, rest)) => match text.split_first() {
            Some((t, text_rest)) => p.eq_ignore_ascii_case(t) && glob_match(rest, text_rest),
            None => false,
        },
    }
}

fn info(c: &mut Ctx<'_>) {
    let wants = |section: &str| {
        c.argv.len() == 1
            || c.argv[1..].iter().any(|arg| {
                is(arg, section) || is(arg, "all") || is(arg, "everything") || is(arg, "default")
            })
    };
    let s = c.server;
    let stats = c.db.stats();
    let mut text = String::new();
    fn section(text: &mut String, body: String) {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str(&body);
    }
    if wants("server") {
        section(
            &mut text,
            format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
                 os:{} {}\r\narch_bits:{}\r\nmultiplexing_api:epoll\r\nprocess_id:{}\r\n\
                 tcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
                std::env::consts::OS,
                std::env::consts::ARCH,
                usize::BITS,
                s.process_id,
                s.tcp_port,
                s.uptime_secs,
                s.uptime_secs / 86400,
            ),
        );
    }
    if wants("clients") {
        section(
            &mut text,
            format!(
                "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n",
                s.connected_clients
            ),
        );
    }
    if wants("memory") {
        section(
            &mut text,
            format!("# Memory\r\nused_memory:{}\r\n", s.used_memory),
        );
    }
    if wants("stats") {
        section(
            &mut text,
            format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 rejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:0\r\n\
                 keyspace_hits:{}\r\nkeyspace_misses:{}\r\n",
                s.total_connections_received,
                s.total_commands_processed,
                s.rejected_connections,
                stats.expired_keys,
                stats.keyspace_hits,
                stats.keyspace_misses,
            ),
        );
    }
    if wants("keyspace") {
        let mut body = String::from("# Keyspace\r\n");
        if !c.db.is_empty() {
            let _ = write!(
                body,
                "db0:keys={},expires={},avg_ttl=0\r\n",
                c.db.len(),
                c.db.expires()
            );
        }
        section(&mut text, body);
    }
    reply::bulk(c.out, text.as_bytes());
}

// ---- keyspace ----

fn dbsize(c: &mut Ctx<'_>) {
    reply::integer(c.out, c.db.len() as i64);
}

fn flush(c: &mut Ctx<'_>) {
    let ok = match c.argv.len() {
        1 => true,
        2 => is(&c.argv[1], "sync") || is(&c.argv[1], "async"),
        _ => false,
    };
    if !ok {
        c.error(SYNTAX_ERROR);
        return;
    }
    c.db.flush();
    reply::ok(c.out);
}

fn del(c: &mut Ctx<'_>) {
    let mut count = 0;
    for key in &c.argv[1..] {
        count += i64::from(c.db.remove(key, c.now));
    }
    reply::integer(c.out, count);
}

fn exists(c: &mut Ctx<'_>) {
    let mut count = 0;
    for key in &c.argv[1..] {
        count += i64::from(c.db.contains(key, c.now));
    }
    reply::integer(c.out, count);
}

fn type_(c: &mut Ctx<'_>) {
    let name =
        c.db.peek(&c.argv[1], c.now)
            .map_or("none", |v| v.type_name());
    reply::simple(c.out, name.as_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeArg {
    Seconds,
    Millis,
    UnixSeconds,
    UnixMillis,
}

/// SET's EX/PX/EXAT/PXAT argument as an absolute deadline (Redis's
/// `getExpireMillisecondsOrReply`); replies with the error and returns `None` if invalid.
fn set_deadline_arg(c: &mut Ctx<'_>, i: usize, kind: TimeArg) -> Option<u64> {
    let value = c.integer_arg(i)?;
    let seconds = matches!(kind, TimeArg::Seconds | TimeArg::UnixSeconds);
    if value <= 0 || (seconds && value > i64::MAX / 1000) {
        c.invalid_expire_time();
        return None;
    }
    let mut ms = if seconds { value * 1000 } else { value };
    if matches!(kind, TimeArg::Seconds | TimeArg::Millis) {
        match ms.checked_add(c.now as i64) {
            Some(sum) => ms = sum,
            None => {
                c.invalid_expire_time();
                return None;
            }
        }
    }
    Some(ms as u64)
}

fn time_option(opt: &[u8]) -> Option<TimeArg> {
    if is(opt, "ex") {
        Some(TimeArg::Seconds)
    } else if is(opt, "px") {
        Some(TimeArg::Millis)
    } else if is(opt, "exat") {
        Some(TimeArg::UnixSeconds)
    } else if is(opt, "pxat") {
        Some(TimeArg::UnixMillis)
    } else {
        None
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ms-ts|KEEPTTL]`, with the option
/// rules of Redis's `parseExtendedStringArgumentsOrReply`.
fn set(c: &mut Ctx<'_>) {
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut time: Option<(TimeArg, usize)> = None;
    let mut j = 3;
    while j < c.argv.len() {
        let opt = &c.argv[j];
        let has_next = j + 1 < c.argv.len();
        if is(opt, "nx") && !xx {
            nx = true;
        } else if is(opt, "xx") && !nx {
            xx = true;
        } else if is(opt, "get") {
            get = true;
        } else if is(opt, "keepttl") && time.is_none() {
            keep_ttl = true;
        } else if let Some(kind) = time_option(opt)
            .filter(|&kind| !keep_ttl && has_next && time.is_none_or(|(other, _)| other == kind))
        {
            time = Some((kind, j + 1));
            j += 1;
        } else {
            c.error(SYNTAX_ERROR);
            return;
        }
        j += 1;
    }
    let deadline = match time {
        Some((kind, i)) => match set_deadline_arg(c, i, kind) {
            Some(deadline) => Some(deadline),
            None => return,
        },
        None => None,
    };
    if get && !reply_string(c, 1) {
        return;
    }
    if nx || xx {
        let found = c.db.peek(&c.argv[1], c.now).is_some();
        if (nx && found) || (xx && !found) {
            if !get {
                reply::null_bulk(c.out);
            }
            return;
        }
    }
    let expiry = match deadline {
        Some(deadline) => Expiry::At(deadline),
        None if keep_ttl => Expiry::Keep,
        None => Expiry::Persist,
    };
    store_string(c, 1, 2, expiry);
    if !get {
        reply::ok(c.out);
    }
}

/// Sets the key at `key` to the argument at `value`, handing the argument's buffer back to
/// `argv` unless the value moved into the keyspace.
fn store_string(c: &mut Ctx<'_>, key: usize, value: usize, expiry: Expiry) {
    let mut bytes = std::mem::take(&mut c.argv[value]);
    c.db.set(&c.argv[key], &mut bytes, expiry, c.now);
    c.argv[value] = bytes;
}

/// Replies with the string at the key in `argv[i]` (or null); on a non-string replies
/// WRONGTYPE and returns false.
fn reply_string(c: &mut Ctx<'_>, i: usize) -> bool {
    match c.db.get(&c.argv[i], c.now) {
        None => reply::null_bulk(c.out),
        Some(ValueRef::Str(s)) => reply::bulk(c.out, s),
        Some(_) => {
            reply::error(c.out, WRONGTYPE);
            return false;
        }
    }
    true
}

fn get(c: &mut Ctx<'_>) {
    reply_string(c, 1);
}

fn getset(c: &mut Ctx<'_>) {
    if reply_string(c, 1) {
        store_string(c, 1, 2, Expiry::Persist);
    }
}

fn mget(c: &mut Ctx<'_>) {
    reply::array(c.out, c.argv.len() - 1);
    for key in &c.argv[1..] {
        match c.db.get(key, c.now) {
            Some(ValueRef::Str(s)) => reply::bulk(c.out, s),
            _ => reply::null_bulk(c.out),
        }
    }
}

fn mset(c: &mut Ctx<'_>) {
    if c.argv.len() % 2 == 0 {
        c.arity_error();
        return;
    }
    for j in (1..c.argv.len()).step_by(2) {
        store_string(c, j, j + 1, Expiry::Persist);
    }
    reply::ok(c.out);
}

fn strlen(c: &mut Ctx<'_>) {
    match c.db.get(&c.argv[1], c.now) {
        None => reply::integer(c.out, 0),
        Some(ValueRef::Str(s)) => reply::integer(c.out, s.len() as i64),
        Some(_) => reply::error(c.out, WRONGTYPE),
    }
}

fn append(c: &mut Ctx<'_>) {
    match c.db.peek(&c.argv[1], c.now) {
        Some(ValueRef::Str(s)) if s.len() + c.argv[2].len() > MAX_STRING_LEN => {
            c.error(b"ERR string exceeds maximum allowed size (proto-max-bulk-len)");
            return;
        }
        Some(ValueRef::List(_) | ValueRef::Hash(_)) => {
            c.error(WRONGTYPE);
            return;
        }
        _ => {}
    }
    match c.db.append(&c.argv[1], &c.argv[2], c.now) {
        Ok(len) => reply::integer(c.out, len as i64),
        Err(WrongType) => c.error(WRONGTYPE),
    }
}

/// INCR and friends: the string must hold a 64-bit integer; the TTL stays.
fn incr_by(c: &mut Ctx<'_>, delta: i64) {
    let mut value = 0;
    let updated = c.db.update_short(&c.argv[1], c.now, |current, out| {
        let current = match current {
            None => 0,
            Some(s) => parse_i64(s).ok_or(NOT_AN_INTEGER)?,
        };
        value = current
            .checked_add(delta)
            .ok_or(&b"ERR increment or decrement would overflow"[..])?;
        let mut buf = [0u8; 20];
        let digits = reply::format_i64(&mut buf, value);
        out[..digits.len()].copy_from_slice(digits);
        Ok(digits.len())
    });
    match updated {
        Ok(Ok(())) => reply::integer(c.out, value),
        Ok(Err(msg)) => c.error(msg),
        Err(WrongType) => c.error(WRONGTYPE),
    }
}

fn incr(c: &mut Ctx<'_>) {
    incr_by(c, 1);
}

fn decr(c: &mut Ctx<'_>) {
    incr_by(c, -1);
}

fn incrby(c: &mut Ctx<'_>) {
    if let Some(delta) = c.integer_arg(2) {
        incr_by(c, delta);
    }
}

fn decrby(c: &mut Ctx<'_>) {
    let Some(delta) = c.integer_arg(2) else {
        return;
    };
    if delta == i64::MIN {
        c.error(b"ERR decrement would overflow");
        return;
    }
    incr_by(c, -delta);
}

// ---- expiry ----

/// `EXPIRE|PEXPIRE|EXPIREAT|PEXPIREAT key time [NX|XX|GT|LT]` (Redis's
/// `expireGenericCommand`): a time already past deletes the key.
fn expire_generic(c: &mut Ctx<'_>, kind: TimeArg) {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &c.argv[3..] {
        if is(opt, "nx") {
            nx = true;
        } else if is(opt, "xx") {
            xx = true;
        } else if is(opt, "gt") {
            gt = true;
        } else if is(opt, "lt") {
            lt = true;
        } else {
            let mut msg = b"ERR Unsupported option ".to_vec();
            msg.extend_from_slice(c_str(opt, usize::MAX));
            reply::error(c.out, &msg);
            return;
        }
    }
    if nx && (xx || gt || lt) {
        c.error(b"ERR NX and XX, GT or LT options at the same time are not compatible");
        return;
    }
    if gt && lt {
        c.error(b"ERR GT and LT options at the same time are not compatible");
        return;
    }
    let Some(mut when) = c.integer_arg(2) else {
        return;
    };
    if matches!(kind, TimeArg::Seconds | TimeArg::UnixSeconds) {
        match when.checked_mul(1000) {
            Some(ms) => when = ms,
            None => {
                c.invalid_expire_time();
                return;
            }
        }
    }
    if matches!(kind, TimeArg::Seconds | TimeArg::Millis) {
        match when.checked_add(c.now as i64) {
            Some(at) => when = at,
            None => {
                c.invalid_expire_time();
                return;
            }
        }
    }
    let Some(current) = c.db.deadline(&c.argv[1], c.now) else {
        reply::integer(c.out, 0);
        return;
    };
    let current = current.map_or(-1, |d| d as i64);
    let refused = (nx && current != -1)
        || (xx && current == -1)
        || (gt && (current == -1 || when <= current))
        || (lt && current != -1 && when >= current);
    if refused {
        reply::integer(c.out, 0);
        return;
    }
    if when <= c.now as i64 {
        c.db.remove(&c.argv[1], c.now);
    } else {
        c.db.set_deadline(&c.argv[1], Some(when as u64), c.now);
    }
    reply::integer(c.out, 1);
}

fn expire(c: &mut Ctx<'_>) {
    expire_generic(c, TimeArg::Seconds);
}

fn pexpire(c: &mut Ctx<'_>) {
    expire_generic(c, TimeArg::Millis);
}

fn expireat(c: &mut Ctx<'_>) {
    expire_generic(c, TimeArg::UnixSeconds);
}

fn pexpireat(c: &mut Ctx<'_>) {
    expire_generic(c, TimeArg::UnixMillis);
}

fn ttl_generic(c: &mut Ctx<'_>, millis: bool) {
    let reply = match c.db.deadline(&c.argv[1], c.now) {
        None => -2,
        Some(None) => -1,
        Some(Some(deadline)) => {
            let left = deadline.saturating_sub(c.now).min(i64::MAX as u64 - 500) as i64;
            if millis { left } else { (left + 500) / 1000 }
        }
    };
    reply::integer(c.out, reply);
}

fn ttl(c: &mut Ctx<'_>) {
    ttl_generic(c, false);
}

fn pttl(c: &mut Ctx<'_>) {
    ttl_generic(c, true);
}

fn persist(c: &mut Ctx<'_>) {
    let had_ttl = matches!(c.db.deadline(&c.argv[1], c.now), Some(Some(_)));
    if had_ttl {
        c.db.set_deadline(&c.argv[1], None, c.now);
    }
    reply::integer(c.out, i64::from(had_ttl));
}

// ---- lists ----

fn push(c: &mut Ctx<'_>, front: bool) {
    let (head, elements) = c.argv.split_at_mut(2);
    let pushed = c.db.with_list(&head[1], c.now, true, |list| {
        for element in elements.iter_mut() {
            let element = compact(std::mem::take(element));
            if front {
                list.push_front(element);
            } else {
                list.push_back(element);
            }
        }
        list.len()
    });
    match pushed {
        Ok(len) => reply::integer(c.out, len.unwrap_or(0) as i64),
        Err(WrongType) => c.error(WRONGTYPE),
    }
}

fn lpush(c: &mut Ctx<'_>) {
    push(c, true);
}

fn rpush(c: &mut Ctx<'_>) {
    push(c, false);
}

/// `LPOP/RPOP key [count]`: one element as a bulk, or with a count an array (null array if
/// the key is missing).
fn pop(c: &mut Ctx<'_>, front: bool) {
    if c.argv.len() > 3 {
        c.arity_error();
        return;
    }
    let count = if c.argv.len() == 3 {
        match c.integer_arg(2) {
            None => return,
            Some(n) if n < 0 => {
                c.error(b"ERR value is out of range, must be positive");
                return;
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        }
    } else {
        None
    };
    let out = &mut *c.out;
    let take = |list: &mut VecDeque<Vec<u8>>| {
        if front {
            list.pop_front()
        } else {
            list.pop_back()
        }
    };
    let popped =
        c.db.with_list(&c.argv[1], c.now, false, |list| match count {
            None => {
                if let Some(element) = take(list) {
                    reply::bulk(out, &element);
                }
            }
            Some(count) => {
                let n = count.min(list.len());
                reply::array(out, n);
                for _ in 0..n {
                    if let Some(element) = take(list) {
                        reply::bulk(out, &element);
                    }
                }
            }
        });
    match popped {
        Ok(Some(())) => {}
        Ok(None) if count.is_some() => reply::null_array(out),
        Ok(None) => reply::null_bulk(out),
        Err(WrongType) => reply::error(out, WRONGTYPE),
    }
}

fn lpop(c: &mut Ctx<'_>) {
    pop(c, true);
}

fn rpop(c: &mut Ctx<'_>) {
    pop(c, false);
}

fn lrange(c: &mut Ctx<'_>) {
    let Some(start) = c.integer_arg(2) else {
        return;
    };
    let Some(end) = c.integer_arg(3) else {
        return;
    };
    let list = match c.db.get(&c.argv[1], c.now) {
        None => {
            reply::array(c.out, 0);
            return;
        }
        Some(ValueRef::List(list)) => list,
        Some(_) => {
            reply::error(c.out, WRONGTYPE);
            return;
        }
    };
    let len = list.len() as i64;
    let mut start = if start < 0 { len + start } else { start };
    let mut end = if end < 0 { len + end } else { end };
    if start < 0 {
        start = 0;
    }
    if start > end || start >= len {
        reply::array(c.out, 0);
        return;
    }
    if end >= len {
        end = len - 1;
    }
    let (start, end) = (start as usize, end as usize);
    reply::array(c.out, end - start + 1);
    for element in list.range(start..=end) {
        reply::bulk(c.out, element);
    }
}

fn llen(c: &mut Ctx<'_>) {
    match c.db.get(&c.argv[1], c.now) {
        None => reply::integer(c.out, 0),
        Some(ValueRef::List(list)) => reply::integer(c.out, list.len() as i64),
        Some(_) => reply::error(c.out, WRONGTYPE),
    }
}

// ---- hashes ----

fn hset(c: &mut Ctx<'_>) {
    if c.argv.len() % 2 == 1 {
        c.arity_error();
        return;
    }
    let (head, pairs) = c.argv.split_at_mut(2);
    let created = c.db.with_hash(&head[1], c.now, true, |hash| {
        let mut created = 0;
        for pair in pairs.chunks_exact_mut(2) {
            let field = compact(std::mem::take(&mut pair[0]));
            let value = compact(std::mem::take(&mut pair[1]));
            if hash.insert(field, value).is_none() {
                created += 1;
            }
        }
        created
    });
    match created {
        Ok(n) => reply::integer(c.out, n.unwrap_or(0)),
        Err(WrongType) => c.error(WRONGTYPE),
    }
}

fn hget(c: &mut Ctx<'_>) {
    match c.db.get(&c.argv[1], c.now) {
        Some(ValueRef::Hash(hash)) => match hash.get(&c.argv[2]) {
            Some(value) => reply::bulk(c.out, value),
            None => reply::null_bulk(c.out),
        },
        None => reply::null_bulk(c.out),
        Some(_) => reply::error(c.out, WRONGTYPE),
    }
}

fn hdel(c: &mut Ctx<'_>) {
    let (head, fields) = c.argv.split_at(2);
    let deleted = c.db.with_hash(&head[1], c.now, false, |hash| {
        fields
            .iter()
            .filter(|field| hash.remove(field.as_slice()).is_some())
            .count()
    });
    match deleted {
        Ok(n) => reply::integer(c.out, n.unwrap_or(0) as i64),
        Err(WrongType) => c.error(WRONGTYPE),
    }
}

fn hgetall(c: &mut Ctx<'_>) {
    match c.db.get(&c.argv[1], c.now) {
        None => reply::array(c.out, 0),
        Some(ValueRef::Hash(hash)) => {
            reply::array(c.out, hash.len() * 2);
            for (field, value) in hash {
                reply::bulk(c.out, field);
                reply::bulk(c.out, value);
            }
        }
        Some(_) => reply::error(c.out, WRONGTYPE),
    }
}

fn hlen(c: &mut Ctx<'_>) {
    match c.db.get(&c.argv[1], c.now) {
        None => reply::integer(c.out, 0),
        Some(ValueRef::Hash(hash)) => reply::integer(c.out, hash.len() as i64),
        Some(_) => reply::error(c.out, WRONGTYPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client against a keyspace with a fake clock.
    struct Session {
        db: Db,
        client: ClientState,
        server: ServerInfo,
        now: u64,
    }

    impl Session {
        fn new() -> Session {
            Session {
                db: Db::new(),
                client: ClientState { id: 7, name: None },
                server: ServerInfo::default(),
                now: 1_000_000,
            }
        }

        fn run_bytes(&mut self, args: &[&[u8]]) -> (Vec<u8>, Outcome) {
            let mut argv: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
            let mut out = Vec::new();
            let outcome = execute(
                &mut self.db,
                &mut self.client,
                &self.server,
                &mut argv,
                self.now,
                &mut out,
            );
            (out, outcome)
        }

        /// Runs a command given as space-separated words; returns the reply as text.
        fn run(&mut self, line: &str) -> String {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            let (out, outcome) = self.run_bytes(&args);
            assert_eq!(outcome, Outcome::Continue, "{line}");
            String::from_utf8(out).unwrap()
        }

        /// Runs each `(command, reply)` pair and checks the reply.
        fn check(&mut self, script: &[(&str, &str)]) {
            for (line, expected) in script {
                assert_eq!(self.run(line), *expected, "{line}");
            }
        }
    }

    const WRONGTYPE_REPLY: &str =
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    const NOT_INT_REPLY: &str = "-ERR value is not an integer or out of range\r\n";

    #[test]
    fn ping_echo_quit() {
        let mut s = Session::new();
        s.check(&[
            ("PING", "+PONG\r\n"),
            ("ping hello", "$5\r\nhello\r\n"),
            (
                "PING a b",
                "-ERR wrong number of arguments for 'ping' command\r\n",
            ),
            ("EcHo hi", "$2\r\nhi\r\n"),
            (
                "ECHO",
                "-ERR wrong number of arguments for 'echo' command\r\n",
            ),
        ]);
        let (out, outcome) = s.run_bytes(&[b"QUIT"]);
        assert_eq!((out.as_slice(), outcome), (&b"+OK\r\n"[..], Outcome::Close));
        let (out, outcome) = s.run_bytes(&[]);
        assert_eq!((out.as_slice(), outcome), (&b""[..], Outcome::Continue));
    }

    #[test]
    fn unknown_commands_and_subcommands() {
        let mut s = Session::new();
        s.check(&[
            (
                "foo a b",
                "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
            ),
            (
                "foo",
                "-ERR unknown command 'foo', with args beginning with: \r\n",
            ),
            (
                "client nope",
                "-ERR unknown subcommand 'nope'. Try CLIENT HELP.\r\n",
            ),
            (
                "Command nope x",
                "-ERR unknown subcommand 'nope'. Try COMMAND HELP.\r\n",
            ),
            (
                "client",
                "-ERR wrong number of arguments for 'client' command\r\n",
            ),
            (
                "client setname",
                "-ERR wrong number of arguments for 'client|setname' command\r\n",
            ),
            (
                "config",
                "-ERR wrong number of arguments for 'config' command\r\n",
            ),
        ]);
        // Long arguments are cut at 128 bytes in all; CR/LF become spaces.
        let long = "x".repeat(200);
        let reply = s.run(&format!("{long} {long} b"));
        let expected = format!(
            "-ERR unknown command '{}', with args beginning with: '{}' \r\n",
            &long[..128],
            &long[..128]
        );
        assert_eq!(reply, expected);
        let (out, _) = s.run_bytes(&[b"a\r\nb", b"c\nd"]);
        assert_eq!(
            out,
            b"-ERR unknown command 'a  b', with args beginning with: 'c d' \r\n"
        );
    }

    #[test]
    fn get_set_basics() {
        let mut s = Session::new();
        s.check(&[
            ("GET k", "$-1\r\n"),
            ("SET k v", "+OK\r\n"),
            ("get k", "$1\r\nv\r\n"),
            (
                "set k",
                "-ERR wrong number of arguments for 'set' command\r\n",
            ),
            (
                "get",
                "-ERR wrong number of arguments for 'get' command\r\n",
            ),
            (
                "get a b",
                "-ERR wrong number of arguments for 'get' command\r\n",
            ),
            ("GETSET k w", "$1\r\nv\r\n"),
            ("GETSET new w", "$-1\r\n"),
            ("get k", "$1\r\nw\r\n"),
            ("STRLEN k", ":1\r\n"),
            ("STRLEN nope", ":0\r\n"),
            ("SET e ", "+OK\r\n"),
            ("GET e", "$0\r\n\r\n"),
        ]);
    }

    #[test]
    fn set_options() {
        let mut s = Session::new();
        s.check(&[
            ("SET k v NX", "+OK\r\n"),
            ("SET k w NX", "$-1\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("SET k w XX", "+OK\r\n"),
            ("SET other w XX", "$-1\r\n"),
            ("GET other", "$-1\r\n"),
            ("SET k v NX XX", "-ERR syntax error\r\n"),
            ("SET k v XX NX", "-ERR syntax error\r\n"),
            ("SET k v GET", "$1\r\nw\r\n"),
            ("SET fresh v GET", "$-1\r\n"),
            ("GET fresh", "$1\r\nv\r\n"),
            ("SET k x NX GET", "$1\r\nv\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("SET k v EX 10 PX 100", "-ERR syntax error\r\n"),
            ("SET k v EX 10 KEEPTTL", "-ERR syntax error\r\n"),
            ("SET k v KEEPTTL EX 10", "-ERR syntax error\r\n"),
            ("SET k v EX", "-ERR syntax error\r\n"),
            ("SET k v FOO", "-ERR syntax error\r\n"),
            (
                "SET k v EX 0",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v PX -5",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v EX 9223372036854776",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v PX 9223372036854775807",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            ("SET k v EX ten", NOT_INT_REPLY),
            ("SET k v ex 10 ex 20", "+OK\r\n"),
            ("TTL k", ":20\r\n"),
            ("SET k v2 KEEPTTL", "+OK\r\n"),
            ("TTL k", ":20\r\n"),
            ("SET k v3", "+OK\r\n"),
            ("TTL k", ":-1\r\n"),
            ("SET k v PX 1500", "+OK\r\n"),
            ("PTTL k", ":1500\r\n"),
            ("TTL k", ":2\r\n"),
            ("SET k v EXAT 2000", "+OK\r\n"),
            ("PTTL k", ":1000000\r\n"),
            ("SET k v PXAT 1000500", "+OK\r\n"),
            ("PTTL k", ":500\r\n"),
        ]);
        // GET on a non-string fails before anything is set.
        s.check(&[
            ("RPUSH l a", ":1\r\n"),
            ("SET l v GET", WRONGTYPE_REPLY),
            ("LLEN l", ":1\r\n"),
            ("SET l v", "+OK\r\n"),
            ("GET l", "$1\r\nv\r\n"),
        ]);
        // PXAT in the past: set, then gone on access.
        s.check(&[("SET gone v PXAT 5", "+OK\r\n"), ("GET gone", "$-1\r\n")]);
    }

    #[test]
    fn big_values_move_into_the_keyspace() {
        let mut s = Session::new();
        let big = vec![b'x'; 1000];
        let (out, _) = s.run_bytes(&[b"SET", b"k", &big]);
        assert_eq!(out, b"+OK\r\n");
        let (out, _) = s.run_bytes(&[b"GET", b"k"]);
        assert_eq!(&out[..7], b"$1000\r\n");
        assert_eq!(out.len(), 7 + 1000 + 2);
        s.check(&[("APPEND k y", ":1001\r\n"), ("STRLEN k", ":1001\r\n")]);
    }

    #[test]
    fn del_exists_type_dbsize_flush() {
        let mut s = Session::new();
        s.check(&[
            ("MSET a 1 b 2 c 3", "+OK\r\n"),
            (
                "MSET a 1 b",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            ("EXISTS a b nope a", ":3\r\n"),
            ("DEL a nope", ":1\r\n"),
            ("UNLINK b", ":1\r\n"),
            ("DBSIZE", ":1\r\n"),
            ("TYPE c", "+string\r\n"),
            ("TYPE nope", "+none\r\n"),
            ("RPUSH l x", ":1\r\n"),
            ("TYPE l", "+list\r\n"),
            ("HSET h f v", ":1\r\n"),
            ("TYPE h", "+hash\r\n"),
            ("MGET c l nope h", "*4\r\n$1\r\n3\r\n$-1\r\n$-1\r\n$-1\r\n"),
            ("FLUSHDB extra", "-ERR syntax error\r\n"),
            ("FLUSHALL a b", "-ERR syntax error\r\n"),
            ("FLUSHALL ASYNC", "+OK\r\n"),
            ("DBSIZE", ":0\r\n"),
            ("SET x y", "+OK\r\n"),
            ("FLUSHDB", "+OK\r\n"),
            ("DBSIZE", ":0\r\n"),
            (
                "DEL",
                "-ERR wrong number of arguments for 'del' command\r\n",
            ),
        ]);
    }

    #[test]
    fn counters() {
        let mut s = Session::new();
        s.check(&[
            ("INCR n", ":1\r\n"),
            ("INCRBY n 10", ":11\r\n"),
            ("DECR n", ":10\r\n"),
            ("DECRBY n 20", ":-10\r\n"),
            ("GET n", "$3\r\n-10\r\n"),
            ("INCRBY n x", NOT_INT_REPLY),
            ("SET s abc", "+OK\r\n"),
            ("INCR s", NOT_INT_REPLY),
            ("SET s 01", "+OK\r\n"),
            ("INCR s", NOT_INT_REPLY),
            ("SET s 1x", "+OK\r\n"),
            ("INCR s", NOT_INT_REPLY),
            ("SET max 9223372036854775807", "+OK\r\n"),
            ("INCR max", "-ERR increment or decrement would overflow\r\n"),
            ("INCRBY max 0", ":9223372036854775807\r\n"),
            ("SET min -9223372036854775808", "+OK\r\n"),
            ("DECR min", "-ERR increment or decrement would overflow\r\n"),
            (
                "DECRBY n -9223372036854775808",
                "-ERR decrement would overflow\r\n",
            ),
            ("INCRBY n 9223372036854775808", NOT_INT_REPLY),
            ("RPUSH l a", ":1\r\n"),
            ("INCR l", WRONGTYPE_REPLY),
            ("SET t 5 EX 100", "+OK\r\n"),
            ("INCR t", ":6\r\n"),
            ("TTL t", ":100\r\n"),
        ]);
    }

    #[test]
    fn append_and_strlen() {
        let mut s = Session::new();
        s.check(&[
            ("APPEND k abc", ":3\r\n"),
            ("APPEND k def", ":6\r\n"),
            ("GET k", "$6\r\nabcdef\r\n"),
            ("RPUSH l a", ":1\r\n"),
            ("APPEND l x", WRONGTYPE_REPLY),
            ("STRLEN l", WRONGTYPE_REPLY),
        ]);
    }

    #[test]
    fn expiry_commands_with_a_fake_clock() {
        let mut s = Session::new();
        s.check(&[
            ("TTL nope", ":-2\r\n"),
            ("PTTL nope", ":-2\r\n"),
            ("EXPIRE nope 10", ":0\r\n"),
            ("SET k v", "+OK\r\n"),
            ("TTL k", ":-1\r\n"),
            ("PERSIST k", ":0\r\n"),
            ("EXPIRE k 10", ":1\r\n"),
            ("TTL k", ":10\r\n"),
            ("PTTL k", ":10000\r\n"),
            ("EXPIRE k 20 NX", ":0\r\n"),
            ("EXPIRE k 20 XX", ":1\r\n"),
            ("EXPIRE k 5 GT", ":0\r\n"),
            ("EXPIRE k 30 GT", ":1\r\n"),
            ("EXPIRE k 40 LT", ":0\r\n"),
            ("EXPIRE k 25 LT", ":1\r\n"),
            ("TTL k", ":25\r\n"),
            (
                "EXPIRE k 1 NX XX",
                "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
            ),
            (
                "EXPIRE k 1 GT LT",
                "-ERR GT and LT options at the same time are not compatible\r\n",
            ),
            ("EXPIRE k 1 FOO", "-ERR Unsupported option FOO\r\n"),
            ("EXPIRE k x", NOT_INT_REPLY),
            (
                "EXPIRE k 9223372036854775807",
                "-ERR invalid expire time in 'expire' command\r\n",
            ),
            (
                "PEXPIRE k 9223372036854775807",
                "-ERR invalid expire time in 'pexpire' command\r\n",
            ),
            (
                "EXPIRE k",
                "-ERR wrong number of arguments for 'expire' command\r\n",
            ),
            ("PEXPIRE k 1500", ":1\r\n"),
            ("PTTL k", ":1500\r\n"),
            ("TTL k", ":2\r\n"),
            ("PERSIST k", ":1\r\n"),
            ("TTL k", ":-1\r\n"),
            ("EXPIREAT k 2000", ":1\r\n"),
            ("TTL k", ":1000\r\n"),
            ("PEXPIREAT k 1000100", ":1\r\n"),
            ("PTTL k", ":100\r\n"),
            ("DBSIZE", ":1\r\n"),
        ]);
        // Time passes: the key expires lazily.
        s.now += 100;
        s.check(&[("PTTL k", ":0\r\n"), ("GET k", "$1\r\nv\r\n")]);
        s.now += 1;
        s.check(&[("GET k", "$-1\r\n"), ("TTL k", ":-2\r\n")]);
        // A time already past deletes the key at once.
        s.check(&[
            ("SET k v", "+OK\r\n"),
            ("EXPIRE k -1", ":1\r\n"),
            ("EXISTS k", ":0\r\n"),
            ("SET k v", "+OK\r\n"),
            ("PEXPIREAT k 1", ":1\r\n"),
            ("DBSIZE", ":0\r\n"),
        ]);
        // Active expiry through the db.
        s.check(&[("SET a 1 PX 10", "+OK\r\n"), ("SET b 2 PX 20", "+OK\r\n")]);
        assert_eq!(s.db.active_expire(s.now + 15, 10), 1);
        assert_eq!(s.run("DBSIZE"), ":1\r\n");
    }

    #[test]
    fn lists() {
        let mut s = Session::new();
        s.check(&[
            ("RPUSH l a b c", ":3\r\n"),
            ("LPUSH l z y", ":5\r\n"),
            ("LLEN l", ":5\r\n"),
            (
                "LRANGE l 0 -1",
                "*5\r\n$1\r\ny\r\n$1\r\nz\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
            ),
            ("LRANGE l 1 2", "*2\r\n$1\r\nz\r\n$1\r\na\r\n"),
            ("LRANGE l -2 100", "*2\r\n$1\r\nb\r\n$1\r\nc\r\n"),
            ("LRANGE l -100 0", "*1\r\n$1\r\ny\r\n"),
            ("LRANGE l 3 1", "*0\r\n"),
            ("LRANGE l 5 10", "*0\r\n"),
            ("LRANGE l x 1", NOT_INT_REPLY),
            ("LRANGE nope 0 -1", "*0\r\n"),
            ("LPOP l", "$1\r\ny\r\n"),
            ("RPOP l", "$1\r\nc\r\n"),
            ("LPOP l 2", "*2\r\n$1\r\nz\r\n$1\r\na\r\n"),
            ("LPOP l 0", "*0\r\n"),
            ("RPOP l 10", "*1\r\n$1\r\nb\r\n"),
            ("EXISTS l", ":0\r\n"),
            ("LPOP l", "$-1\r\n"),
            ("LPOP l 1", "*-1\r\n"),
            (
                "LPOP l -1",
                "-ERR value is out of range, must be positive\r\n",
            ),
            ("LPOP l x", NOT_INT_REPLY),
            (
                "LPOP l 1 2",
                "-ERR wrong number of arguments for 'lpop' command\r\n",
            ),
            ("LLEN nope", ":0\r\n"),
            (
                "LPUSH",
                "-ERR wrong number of arguments for 'lpush' command\r\n",
            ),
            (
                "LPUSH l",
                "-ERR wrong number of arguments for 'lpush' command\r\n",
            ),
            ("SET s v", "+OK\r\n"),
            ("LPUSH s a", WRONGTYPE_REPLY),
            ("RPUSH s a", WRONGTYPE_REPLY),
            ("LPOP s", WRONGTYPE_REPLY),
            ("RPOP s 2", WRONGTYPE_REPLY),
            ("LRANGE s 0 1", WRONGTYPE_REPLY),
            ("LLEN s", WRONGTYPE_REPLY),
        ]);
    }

    #[test]
    fn hashes() {
        let mut s = Session::new();
        s.check(&[
            ("HSET h a 1 b 2", ":2\r\n"),
            ("HSET h a 3 c 4", ":1\r\n"),
            ("HGET h a", "$1\r\n3\r\n"),
            ("HGET h nope", "$-1\r\n"),
            ("HGET nope a", "$-1\r\n"),
            ("HLEN h", ":3\r\n"),
            ("HDEL h a nope", ":1\r\n"),
            ("HLEN h", ":2\r\n"),
            (
                "HSET h a",
                "-ERR wrong number of arguments for 'hset' command\r\n",
            ),
            (
                "HSET h a 1 b",
                "-ERR wrong number of arguments for 'hset' command\r\n",
            ),
            ("HDEL nope a", ":0\r\n"),
            ("HGETALL nope", "*0\r\n"),
            ("HLEN nope", ":0\r\n"),
        ]);
        let all = s.run("HGETALL h");
        assert!(
            all == "*4\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\nc\r\n$1\r\n4\r\n"
                || all == "*4\r\n$1\r\nc\r\n$1\r\n4\r\n$1\r\nb\r\n$1\r\n2\r\n",
            "{all}"
        );
        s.check(&[
            ("HDEL h b c", ":2\r\n"),
            ("EXISTS h", ":0\r\n"),
            ("SET s v", "+OK\r\n"),
            ("HSET s a 1", WRONGTYPE_REPLY),
            ("HGET s a", WRONGTYPE_REPLY),
            ("HDEL s a", WRONGTYPE_REPLY),
            ("HGETALL s", WRONGTYPE_REPLY),
            ("HLEN s", WRONGTYPE_REPLY),
            ("RPUSH l a", ":1\r\n"),
            ("HSET l a 1", WRONGTYPE_REPLY),
            ("HSET h2 f v", ":1\r\n"),
            ("LPUSH h2 a", WRONGTYPE_REPLY),
            ("GET h2", WRONGTYPE_REPLY),
        ]);
    }

    #[test]
    fn select_and_auth() {
        let mut s = Session::new();
        s.check(&[
            ("SELECT 0", "+OK\r\n"),
            ("SELECT 1", "-ERR DB index is out of range\r\n"),
            ("SELECT -1", "-ERR DB index is out of range\r\n"),
            ("SELECT x", NOT_INT_REPLY),
            (
                "SELECT 2147483648",
                "-ERR value is out of range, value must between -2147483648 and 2147483647\r\n",
            ),
            (
                "AUTH pw",
                "-ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?\r\n",
            ),
            ("AUTH default pw", "+OK\r\n"),
            (
                "AUTH bob pw",
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ),
            ("AUTH a b c", "-ERR syntax error\r\n"),
        ]);
    }

    #[test]
    fn client_commands() {
        let mut s = Session::new();
        s.check(&[
            ("CLIENT ID", ":7\r\n"),
            ("client getname", "$-1\r\n"),
            ("CLIENT SETNAME worker-1", "+OK\r\n"),
            ("CLIENT GETNAME", "$8\r\nworker-1\r\n"),
            (
                "CLIENT SETNAME a\tb",
                "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            ),
            ("CLIENT SETNAME ", "+OK\r\n"),
            ("CLIENT GETNAME", "$-1\r\n"),
            (
                "CLIENT ID x",
                "-ERR wrong number of arguments for 'client|id' command\r\n",
            ),
            ("CLIENT SETINFO LIB-NAME redis-py", "+OK\r\n"),
            ("CLIENT SETINFO lib-ver 5.0", "+OK\r\n"),
            (
                "CLIENT SETINFO color red",
                "-ERR Unrecognized option 'color'\r\n",
            ),
            (
                "CLIENT SETINFO lib-name a\u{1}b",
                "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n",
            ),
        ]);
    }

    #[test]
    fn hello() {
        let mut s = Session::new();
        let map = "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n\
                   $5\r\nproto\r\n:2\r\n$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                   $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        s.check(&[
            ("HELLO", map),
            ("HELLO 2", map),
            ("HELLO 3", "-NOPROTO unsupported protocol version\r\n"),
            ("HELLO 1", "-NOPROTO unsupported protocol version\r\n"),
            (
                "HELLO x",
                "-ERR Protocol version is not an integer or out of range\r\n",
            ),
            ("HELLO 2 SETNAME me", map),
            ("CLIENT GETNAME", "$2\r\nme\r\n"),
            ("HELLO 2 AUTH default secret", map),
            (
                "HELLO 2 AUTH bob secret",
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ),
            ("HELLO 2 FOO", "-ERR Syntax error in HELLO option 'FOO'\r\n"),
            (
                "HELLO 2 SETNAME",
                "-ERR Syntax error in HELLO option 'SETNAME'\r\n",
            ),
        ]);
    }

    #[test]
    fn command_introspection() {
        let mut s = Session::new();
        s.check(&[
            ("COMMAND DOCS", "*0\r\n"),
            ("COMMAND DOCS get", "*0\r\n"),
            ("COMMAND COUNT", &format!(":{}\r\n", COMMANDS.len())),
            (
                "COMMAND INFO get nope",
                "*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
                 *0\r\n*0\r\n*0\r\n*0\r\n$-1\r\n",
            ),
        ]);
        let all = s.run("COMMAND");
        assert!(all.starts_with(&format!("*{}\r\n*10\r\n$3\r\nget\r\n", COMMANDS.len())));
        assert!(all.contains("$14\r\nclient|setname\r\n"));
        let list = s.run("COMMAND LIST");
        assert!(list.contains("$5\r\nhello\r\n"));
        s.check(&[
            ("CONFIG GET save", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (
                "CONFIG GET appendonly",
                "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
            ),
            ("CONFIG GET nope", "*0\r\n"),
            ("CONFIG GET SAV?", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (
                "CONFIG SET save x",
                "-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n",
            ),
        ]);
        assert!(s.run("CONFIG GET *").starts_with("*6\r\n"));
    }

    #[test]
    fn info_sections() {
        let mut s = Session::new();
        s.server = ServerInfo {
            connected_clients: 3,
            total_connections_received: 10,
            total_commands_processed: 99,
            rejected_connections: 5,
            uptime_secs: 90000,
            tcp_port: 6380,
            process_id: 4242,
            used_memory: 12345,
        };
        s.run("SET a 1");
        s.run("SET b 2 EX 100");
        s.run("GET a");
        s.run("GET nope");
        let body = |reply: &str| reply.split_once("\r\n").unwrap().1.to_string();
        let all = body(&s.run("INFO"));
        for needle in [
            "# Server\r\nredis_version:7.2.4\r\n",
            "process_id:4242\r\n",
            "tcp_port:6380\r\n",
            "uptime_in_seconds:90000\r\nuptime_in_days:1\r\n",
            "\r\n\r\n# Clients\r\nconnected_clients:3\r\n",
            "# Memory\r\nused_memory:12345\r\n",
            "total_connections_received:10\r\ntotal_commands_processed:99\r\n\
             rejected_connections:5\r\n",
            "keyspace_hits:1\r\nkeyspace_misses:1\r\n",
            "# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n",
        ] {
            assert!(all.contains(needle), "{needle:?} in {all:?}");
        }
        assert_eq!(
            s.run("INFO keyspace"),
            "$44\r\n# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n\r\n"
        );
        let two = body(&s.run("INFO CLIENTS memory"));
        assert_eq!(
            two,
            "# Clients\r\nconnected_clients:3\r\nblocked_clients:0\r\n\r\n\
             # Memory\r\nused_memory:12345\r\n\r\n"
        );
        assert_eq!(s.run("INFO nope"), "$0\r\n\r\n");
        s.run("FLUSHALL");
        assert_eq!(s.run("INFO keyspace"), "$12\r\n# Keyspace\r\n\r\n");
    }
}
