//! The `chat` example as a real process: nick rules, commands, announcements, bad input,
//! and one room over two event loops (`--threads 2`). The slow consumer that is cut off
//! without slowing the room down (among 50 clients), and the harsher inputs, are in
//! tests/adversarial_examples.rs; timeouts, per-address caps, floods, join storms and
//! invisible nicks in tests/adversarial_chat.rs.

mod support;

use std::io::Read;
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

/// `--threads 2`: one room over two event loops. 24 users (spread over both loops by
/// SO_REUSEPORT, checked in the log) each send 50 numbered lines at once; every user gets
/// every other user's lines exactly once and, per sender, in order, and none of its own.
/// Then SIGTERM stops both loops: every user gets EOF and the process exits 0.
#[test]
fn one_room_across_two_loops() {
    const USERS: usize = 24;
    const LINES: usize = 50;
    let mut ex = start_example("chat", &["--addr", "127.0.0.1:0", "--threads", "2"]);
    let users: Vec<User> = (0..USERS)
        .map(|i| User::join(ex.addr, &format!("u{i}")))
        .collect();
    // Which loop each joined on, from the log ("guestN joined (conn#.., loop L)").
    let mut loops = [0; 2];
    for _ in 0..USERS {
        let line = support::recv_until(&ex.log, |l: &String| l.contains(" joined ("));
        let l = line
            .rsplit("loop ")
            .next()
            .and_then(|l| l.strip_suffix(')'));
        loops[l.and_then(|l| l.parse::<usize>().ok()).expect("loop index")] += 1;
    }
    assert!(
        loops[0] > 0 && loops[1] > 0,
        "all users on one loop: {loops:?}"
    );
    // Everyone is a member of its loop (welcomed): the lines below reach all.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(me, mut u)| {
            let done = done_tx.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                for j in 0..LINES {
                    text.push_str(&format!("line {j} from u{me}\n"));
                }
                u.send(text.as_bytes());
                let mut next = [0usize; USERS]; // the next line number expected per sender
                let mut got = 0;
                while got < (USERS - 1) * LINES {
                    let line = u.line();
                    if line.starts_with("* ") {
                        continue;
                    }
                    let (sender, j) = parse_line(&line).unwrap_or_else(|| panic!("{line:?}"));
                    assert_ne!(sender, me, "u{me} got its own line {line:?}");
                    assert_eq!(
                        j, next[sender],
                        "u{me}: from u{sender} out of order or twice"
                    );
                    next[sender] += 1;
                    got += 1;
                }
                done.send(()).unwrap();
                u
            })
        })
        .collect();
    drop(done_tx);
    for _ in 0..USERS {
        support::recv(&done_rx);
    }
    let mut users: Vec<User> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Nothing more than that arrived: the next line each hears is its own /who answer, which
    // lists the users of both loops.
    for u in &mut users {
        u.say("/who");
        let answer = u.line();
        assert!(answer.starts_with("* users: u0 u1 "), "{answer}");
        assert_eq!(answer.split(' ').count(), 2 + USERS, "{answer}");
    }
    sigterm(&ex);
    for mut u in users {
        let mut rest = Vec::new();
        u.r.read_to_end(&mut rest).expect("EOF, not a reset");
    }
    exits_cleanly(&mut ex);
}

/// "[uS] line J from uS" -> (S, J).
fn parse_line(line: &str) -> Option<(usize, usize)> {
    let (who, rest) = line.strip_prefix("[u")?.split_once("] line ")?;
    let (j, from) = rest.split_once(" from u")?;
    let sender: usize = who.parse().ok()?;
    (from.parse::<usize>().ok()? == sender).then_some((sender, j.parse().ok()?))
}

/// SIGTERM starts a graceful shutdown (`shutdown_on_signals`): every user is closed with
/// FIN after what was queued for them, and the process exits cleanly.
#[test]
fn sigterm_closes_every_user_and_exits() {
    let mut ex = chat();
    let mut a = User::join(ex.addr, "alice");
    let mut b = User::join(ex.addr, "bob");
    a.skip_until("* guest2 is now bob");
    b.say("last words");
    a.expect("[bob] last words");
    sigterm(&ex);
    for mut user in [a, b] {
        let mut rest = Vec::new();
        user.r.read_to_end(&mut rest).expect("EOF, not a reset");
    } // closed: the server need not linger for them
    exits_cleanly(&mut ex);
}

/// Sends SIGTERM to the example.
fn sigterm(ex: &Example) {
    let pid = ex.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.unwrap().success());
}

/// Waits, within the deadline, for the example to exit cleanly: its stderr closes, then
/// its status is success.
fn exits_cleanly(ex: &mut Example) {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match ex.log.recv_timeout(left) {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("still running {DEADLINE:?} after SIGTERM: {e}"),
        }
    }
    let status = ex.child.wait().unwrap();
    assert!(status.success(), "exited with {status}");
}
