//! HTTP/1.1 framing, without I/O: finding and parsing a request head (only
//! `Content-Length` bodies; `Transfer-Encoding` is refused) and writing a
//! response (`text/plain`, `Content-Length` always, `Connection` as needed).
//! Keep-alive is the default for HTTP/1.1; HTTP/1.0 closes unless it asks.

pub struct Request {
    pub method: String,
    pub target: String,
    pub http10: bool,
    pub keep_alive: bool,
    pub content_length: usize,
}

/// Finds the end of the request head: (length of the head without the blank line, total).
pub fn find_head(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\n', ..] => Some((i, i + 2)),
        [b'\n', b'\r', b'\n', ..] => Some((i, i + 3)),
        _ => None,
    })
}

/// Parses a request head (without its blank line); `None` if it is malformed.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || target.is_empty()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return None,
    };
    let (mut close, mut keep, mut length) = (false, false, None);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None; // no request bodies other than Content-Length framed ones
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        keep_alive: !close && (keep || !http10),
        content_length: length.unwrap_or(0),
    })
}

/// The bytes of a response; `head` leaves the body out (a HEAD request).
pub fn response(status: u16, body: &str, keep_alive: bool, http10: bool, head: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let connection = match (keep_alive, http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_at_the_first_blank_line_with_or_without_cr() {
        assert_eq!(find_head(b"GET / HTTP/1.1\r\n\r\nrest"), Some((15, 18)));
        assert_eq!(find_head(b"GET / HTTP/1.1\n\n"), Some((14, 16)));
        assert_eq!(find_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn keep_alive_defaults_by_version_and_follows_connection() {
        let req = |h: &str| parse_head(h.as_bytes()).expect("valid head");
        assert!(req("GET / HTTP/1.1").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nConnection: close").keep_alive);
        assert!(!req("GET / HTTP/1.0").keep_alive);
        assert!(req("GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive);
        assert_eq!(
            req("POST /x HTTP/1.1\r\nContent-Length: 5").content_length,
            5
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for head in [
            "GET / HTTP/2",
            "GET /",
            "G3T / HTTP/1.1",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
            "GET / HTTP/1.1\r\nBad Name: x",
        ] {
            assert!(parse_head(head.as_bytes()).is_none(), "{head:?}");
        }
    }

    #[test]
    fn response_says_connection_only_when_it_differs_from_the_default() {
        let text = |r: Vec<u8>| String::from_utf8(r).expect("ascii");
        assert_eq!(
            text(response(200, "hi\n", true, false, false)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nhi\n"
        );
        assert!(
            text(response(200, "hi\n", true, true, false)).contains("Connection: keep-alive\r\n")
        );
        assert!(text(response(404, "x", false, false, true)).ends_with("Connection: close\r\n\r\n"));
    }
}
