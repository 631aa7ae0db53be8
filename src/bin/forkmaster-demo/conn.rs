//! An accepted TCP or Unix stream connection: read timeouts short enough to
//! notice a stop, reads that tell data, timeout and close apart, and a close
//! that lingers so that a final response is not destroyed by a RST.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Read timeout of connections: how quickly an idle keep-alive connection notices a stop.
const READ_POLL: Duration = Duration::from_millis(100);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time spent draining a client after our final response (avoids RST on close).
const LINGER: Duration = Duration::from_secs(1);

/// An accepted TCP or Unix stream connection.
pub trait Stream: Read + Write + Send {
    fn set_timeouts(&self) -> io::Result<()>;
    fn shutdown_write(&self);
}

pub type Conn = Box<dyn Stream>;

macro_rules! impl_stream {
    ($($t:ty),*) => {$(
        impl Stream for $t {
            fn set_timeouts(&self) -> io::Result<()> {
                self.set_read_timeout(Some(READ_POLL))?;
                self.set_write_timeout(Some(WRITE_TIMEOUT))
            }

            fn shutdown_write(&self) {
                let _ = self.shutdown(Shutdown::Write);
            }
        }
    )*};
}

impl_stream!(TcpStream, UnixStream);

pub enum Got {
    Data,
    /// No data within `READ_POLL`: time to look whether a stop was requested.
    Timeout,
    Closed,
}

/// Appends what one read(2) returns to `buf` (retrying on EINTR).
pub fn read_some(conn: &mut Conn, buf: &mut Vec<u8>) -> Got {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => return Got::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Got::Data;
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Got::Timeout,
                _ => return Got::Closed,
            },
        }
    }
}

/// Half-closes after the last response and drains the client briefly, so that unread
/// pipelined bytes do not turn our close into a RST that could destroy the response.
pub fn linger_close(mut conn: Conn) {
    conn.shutdown_write();
    let start = Instant::now();
    let mut sink = Vec::new();
    while start.elapsed() < LINGER {
        sink.clear();
        if !matches!(read_some(&mut conn, &mut sink), Got::Data) {
            break;
        }
    }
}
