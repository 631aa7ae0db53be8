//! One connection's request loop: read a head, skip its body, answer, and
//! keep the connection open unless the client, a bad request or a stop says
//! otherwise. During a stop, an idle connection is closed between requests.

use crate::app::App;
use crate::conn::{linger_close, read_some, Conn, Got};
use crate::http::{find_head, parse_head, response};
use crate::routes::route;
use std::io::Write;
use std::time::{Duration, Instant};

/// During a stop, how long a connection that has not sent its first request is waited for.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
const MAX_HEAD: usize = 64 * 1024;

/// Serves requests on `conn` until it closes or is closed.
pub fn serve(app: &App, mut conn: Conn) {
    let accepted = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut served = 0u64;
    loop {
        let (head_len, total) = loop {
            let blank = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            buf.drain(..blank);
            if let Some(found) = find_head(&buf) {
                break found;
            }
            if buf.len() > MAX_HEAD {
                let _ = conn.write_all(&response(400, "bad request\n", false, false, false));
                return linger_close(conn);
            }
            match read_some(&mut conn, &mut buf) {
                Got::Data => {}
                Got::Closed => return,
                Got::Timeout => {
                    let idle =
                        buf.is_empty() && (served > 0 || accepted.elapsed() >= FIRST_REQUEST_GRACE);
                    if idle && app.drain.is_stopping() {
                        return linger_close(conn);
                    }
                }
            }
        };
        let Some(req) = parse_head(&buf[..head_len]) else {
            let _ = conn.write_all(&response(400, "bad request\n", false, false, false));
            return linger_close(conn);
        };
        buf.drain(..total);
        let mut remaining = req.content_length;
        loop {
            let take = remaining.min(buf.len());
            buf.drain(..take);
            remaining -= take;
            if remaining == 0 {
                break;
            }
            if let Got::Closed = read_some(&mut conn, &mut buf) {
                return;
            }
        }
        let (status, body) = route(app, &req.method, &req.target);
        let keep_alive = req.keep_alive && !app.drain.is_stopping();
        let out = response(status, &body, keep_alive, req.http10, req.method == "HEAD");
        if conn.write_all(&out).and_then(|()| conn.flush()).is_err() {
            return;
        }
        served += 1;
        if !keep_alive {
            return linger_close(conn);
        }
    }
}
