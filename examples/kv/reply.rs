//! The reply encoder: RESP2 values appended to a connection's output `Vec<u8>`.
//!
//! Nothing here allocates beyond growing `out`; integers are formatted on the stack.

/// Appends a simple string, `+<s>\r\n`. `s` must hold no CR or LF.
pub fn simple(out: &mut Vec<u8>, s: &[u8]) {
    debug_assert!(!s.contains(&b'\r') && !s.contains(&b'\n'));
    out.push(b'+');
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// Appends `+OK\r\n`.
pub fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// Appends an error, `-<msg>\r\n`, where `msg` starts with its code (`ERR syntax error`,
/// `WRONGTYPE Operation against ...`). Like Redis, CR and LF inside are sent as spaces.
pub fn error(out: &mut Vec<u8>, msg: &[u8]) {
    out.push(b'-');
    out.extend(msg.iter().map(|&b| match b {
        b'\r' | b'\n' => b' ',
        _ => b,
    }));
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer, `:<n>\r\n`.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string, `$<len>\r\n<s>\r\n`.
pub fn bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 16);
    out.push(b'$');
    decimal(out, s.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string, `$-1\r\n`.
pub fn null_bulk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header, `*<len>\r\n`; the caller appends the `len` elements.
pub fn array(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    decimal(out, len as i64);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null array, `*-1\r\n`.
pub fn null_array(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*-1\r\n");
}

/// Appends the decimal digits of `n`.
pub fn decimal(out: &mut Vec<u8>, n: i64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(format_i64(&mut buf, n));
}

/// Formats `n` into the end of `buf` and returns the digits (with `-` if negative): the
/// allocation-free decimal text of a number, e.g. for storing an INCR result.
pub fn format_i64(buf: &mut [u8; 20], n: i64) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn every_kind_of_reply() {
        assert_eq!(encoded(|o| simple(o, b"PONG")), b"+PONG\r\n");
        assert_eq!(encoded(ok), b"+OK\r\n");
        assert_eq!(
            encoded(|o| error(o, b"ERR syntax error")),
            b"-ERR syntax error\r\n"
        );
        assert_eq!(encoded(|o| error(o, b"ERR a\r\nb")), b"-ERR a  b\r\n");
        assert_eq!(encoded(|o| integer(o, 0)), b":0\r\n");
        assert_eq!(encoded(|o| integer(o, -42)), b":-42\r\n");
        assert_eq!(
            encoded(|o| integer(o, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(
            encoded(|o| integer(o, i64::MAX)),
            b":9223372036854775807\r\n"
        );
        assert_eq!(encoded(|o| bulk(o, b"hello")), b"$5\r\nhello\r\n");
        assert_eq!(encoded(|o| bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(encoded(|o| bulk(o, b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(encoded(null_bulk), b"$-1\r\n");
        assert_eq!(
            encoded(|o| {
                array(o, 2);
                bulk(o, b"a");
                integer(o, 1);
            }),
            b"*2\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(encoded(|o| array(o, 0)), b"*0\r\n");
        assert_eq!(encoded(null_array), b"*-1\r\n");
    }

    #[test]
    fn decimals_match_std() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12345,
            -1,
            -10,
            1 << 40,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(encoded(|o| decimal(o, n)), n.to_string().into_bytes());
        }
    }
}
