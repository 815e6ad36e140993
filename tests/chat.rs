//! The `chat` example as a real process: nick rules, commands, announcements, bad input,
//! and a slow consumer that is cut off without slowing the room down.

mod support;

use std::io::{BufRead, Read};
use std::sync::mpsc;
use std::time::Duration;
use support::chat_user::User;
use support::{DEADLINE, Example, start_example};

fn chat() -> Example {
    start_example("chat", &["--addr", "127.0.0.1:0"])
}

#[test]
fn welcome_and_who() {
    let ex = chat();
    let (mut a, welcome) = User::connect(ex.addr);
    assert_eq!(
        welcome,
        "* welcome, you are guest1 (/nick NAME, /who, /me ACTION, /quit)"
    );
    a.say("/who");
    a.expect("* users: guest1");
    let (_b, welcome) = User::connect(ex.addr);
    assert!(
        welcome.starts_with("* welcome, you are guest2 "),
        "{welcome}"
    );
    a.expect("* guest2 joined");
    a.say("/who");
    a.expect("* users: guest1 guest2");
}

#[test]
fn nick_rules() {
    let ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    a.skip_until("* guest2 is now bob");
    for bad in [
        "/nick",
        "/nick    ",
        "/nick two words",
        &format!("/nick {}", "x".repeat(33)),
        "/nick a\tb",
        "/nick a\x01b",
        "/nick alice", // taken
    ] {
        b.say(bad);
        let err = b.expect_err();
        if bad == "/nick alice" {
            assert_eq!(err, "ERR nick alice is taken");
        }
    }
    b.say("/who");
    b.expect("* users: alice bob");
    // 32 characters, not bytes.
    let long = "é".repeat(32);
    b.say(&format!("/nick {long}"));
    b.expect(&format!("* you are now {long}"));
    a.expect(&format!("* bob is now {long}"));
    // A freed nick can be taken.
    a.say("/nick ünïcödé!");
    a.expect("* you are now ünïcödé!");
    b.expect("* alice is now ünïcödé!");
    b.say("/nick alice");
    b.expect("* you are now alice");
}

#[test]
fn messages_reach_the_others_not_the_sender() {
    let ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    let mut c = User::join(ex.addr, "carol");
    a.skip_until("* guest3 is now carol");
    b.skip_until("* guest3 is now carol");
    a.say("hello, room");
    b.expect("[alice] hello, room");
    c.expect("[alice] hello, room");
    // Had alice got her own line, it would come before the answer to /who.
    a.say("/who");
    a.expect("* users: alice bob carol");
    // CRLF and tabs are fine; empty lines are ignored.
    c.send(b"\r\n\nfrom\tcarol\r\n");
    a.expect("[carol] from\tcarol");
    b.expect("[carol] from\tcarol");
}

#[test]
fn join_leave_and_nick_announcements() {
    let ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let (mut b, _) = User::connect(ex.addr);
    a.expect("* guest2 joined");
    b.say("/nick bob");
    b.expect("* you are now bob");
    a.expect("* guest2 is now bob");
    drop(b);
    a.expect("* bob left");
    let (c, _) = User::connect(ex.addr);
    a.expect("* guest3 joined");
    drop(c);
    a.expect("* guest3 left");
}

#[test]
fn me_action() {
    let ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    a.skip_until("* guest2 is now bob");
    a.say("/me waves");
    b.expect("* alice waves");
    a.say("/me");
    a.expect_err();
    a.say("/who");
    a.expect("* users: alice bob");
}

#[test]
fn quit_says_bye_then_closes() {
    let ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    a.skip_until("* guest2 is now bob");
    // The line after /quit in the same write is not handled.
    b.send(b"/quit\nnot sent\n");
    b.expect("* bye");
    let mut rest = Vec::new();
    b.r.read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    a.expect("* bob left");
}

#[test]
fn bad_input_gets_err_and_the_connection_stays() {
    let ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    a.skip_until("* guest2 is now bob");
    let mut long = vec![b'x'; 5 * 1024];
    long.push(b'\n');
    a.send(&long);
    assert_eq!(a.expect_err(), "ERR line longer than 4096 bytes");
    a.say("after the long line");
    b.expect("[alice] after the long line");
    for bad in [
        &b"\xff\xfe\n"[..],
        b"caf\xc3\n",
        b"esc \x1b[31mred\n",
        b"nul \0 byte\n",
        b"cr\rinside\n",
        b"del \x7f\n",
        "c1 \u{85}\n".as_bytes(),
    ] {
        a.send(bad);
        let err = a.expect_err();
        assert!(
            err == "ERR invalid UTF-8" || err == "ERR control characters are not allowed",
            "{err}"
        );
    }
    a.say("/nope");
    assert_eq!(a.expect_err(), "ERR unknown command /nope");
    a.say("still here");
    b.expect("[alice] still here");
}

#[test]
fn slow_consumer_is_cut_off_and_the_others_get_every_line() {
    const FAST: usize = 20;
    const BATCHES: usize = 16;
    const PER_BATCH: usize = 64;
    let pad = "x".repeat(1000);
    // Line i as sent, and as the others get it.
    let text = move |i: usize| format!("{i:05} {pad}");
    let expected = {
        let text = text.clone();
        move |i: usize| format!("[sender] {}", text(i))
    };
    let ex = chat();

    let mut fast: Vec<User> = (0..FAST)
        .map(|i| User::join(ex.addr, &format!("fast{i}")))
        .collect();
    let mut sender = User::join(ex.addr, "sender");
    // The slow one: a small receive buffer, and it stops reading once it has its nick.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&ex.addr.into()).expect("connect");
    let mut slow = User::from_stream(sock.into());
    slow.line(); // welcome
    slow.say("/nick slow");
    slow.skip_until("* you are now slow");

    // Each fast reader reports every finished batch; lines must come whole and in order.
    let (tx, rx) = mpsc::channel();
    let readers: Vec<_> = fast
        .drain(..)
        .enumerate()
        .map(|(n, mut u)| {
            let (tx, expected) = (tx.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while i < BATCHES * PER_BATCH {
                    let line = u.line();
                    if line.starts_with("* ") {
                        continue; // joins, nick changes, the slow one leaving
                    }
                    assert_eq!(line, expected(i), "fast{n}");
                    i += 1;
                    if i % PER_BATCH == 0 {
                        tx.send(n).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(tx);

    // Each batch must reach all fast readers promptly, even while the slow one's queue grows.
    let prompt = Duration::from_secs(5);
    for batch in 0..BATCHES {
        let mut bytes = Vec::new();
        for i in batch * PER_BATCH..(batch + 1) * PER_BATCH {
            bytes.extend_from_slice(format!("{}\n", text(i)).as_bytes());
        }
        sender.send(&bytes);
        for _ in 0..FAST {
            rx.recv_timeout(prompt)
                .unwrap_or_else(|e| panic!("batch {batch} not delivered within {prompt:?}: {e}"));
        }
    }
    for r in readers {
        r.join().expect("fast reader");
    }
    sender.skip_until("* slow left");
    assert!(
        ex_log_has(&ex, "output limit"),
        "the slow one was cut at its output limit"
    );

    // The slow one got a prefix of the lines, in order, then EOF.
    let mut got = 0;
    loop {
        let mut line = String::new();
        match slow.r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.starts_with("* ") => {}
            // The queue was dropped when it was cut off: the last line may be partial.
            Ok(_) if !line.ends_with('\n') => {
                assert!(expected(got).starts_with(&line), "{line:?}");
                break;
            }
            Ok(_) => {
                assert_eq!(line.trim_end_matches('\n'), expected(got));
                got += 1;
            }
        }
    }
    assert!(got < BATCHES * PER_BATCH, "slow got all {got} lines");
}

/// Whether the example logged a line containing `what` (waits up to the deadline).
fn ex_log_has(ex: &Example, what: &str) -> bool {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match ex.log.recv_timeout(left) {
            Ok(line) if line.contains(what) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}
