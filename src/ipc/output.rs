//! Workers' output: every worker writes its stderr (and, with `stdout_path`,
//! its stdout) into a pipe of its own, and the master copies whole lines
//! from each pipe into the file (`stdout_path`, `stderr_path`) or, with no
//! file, into its own stdout or stderr.
//!
//! Workers never hold the files, so after a rotation and USR1 (logrotate's
//! `postrotate`) every new line, from the master and from every worker,
//! lands in the new file and nobody keeps writing to the rotated one. The
//! master alone writes the files, a whole line at a time, so no line is ever
//! spliced into another worker's, at any length. A line without its newline
//! is held per worker until the newline comes or the worker exits; one
//! longer than `MAX_LINE` is cut into lines of that size. The last lines of
//! each worker's stderr are kept for the reason of a failed boot.
//!
//! | stream | no `*_path`                        | with `*_path`            |
//! |--------|------------------------------------|--------------------------|
//! | stdout | the master's fd 1, inherited as is | the worker's pipe → file |
//! | stderr | the worker's pipe → master's fd 2  | the worker's pipe → file |

use crate::error::Error;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{dup2_stderr, dup2_stdout, pipe2};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How much one pass of the loop drains from one pipe, so a flood of output
/// cannot starve signal handling.
const DRAIN_PER_PASS: usize = 1 << 20;

/// The longest line held back waiting for its newline; a longer one is
/// written in pieces of this size, each as a line of its own.
pub const MAX_LINE: usize = 128 << 10;

/// How much of a worker's last stderr output is kept for its exit reason.
const TAIL_LINES: usize = 5;
const TAIL_BYTES: usize = 1024;

const STDOUT: usize = 0;
const STDERR: usize = 1;

/// A configured file, and the master's own descriptor (1 or 2) that follows it.
struct Sink {
    path: PathBuf,
    file: File,
    own_fd: RawFd,
}

/// Opens (creating it) a log file to append to. Never through a symbolic
/// link (whoever can write the directory could point it at any file the
/// master may write), and never a FIFO or socket: opening one can block,
/// and so can every write. `O_NONBLOCK` keeps the open itself from
/// blocking; regular files and devices ignore it afterwards.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a symbolic link: give the file's real path",
            ),
            Some(libc::ENXIO) => not_a_file("a FIFO"),
            _ => e,
        })?;
    let kind = file.metadata()?.file_type();
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        return Err(not_a_file("a FIFO"));
    }
    if kind.is_socket() {
        return Err(not_a_file("a socket"));
    }
    Ok(file)
}

fn not_a_file(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}, not a file: writing to it could block the master"),
    )
}

impl Sink {
    fn open(key: &'static str, path: &Path, own_fd: RawFd) -> Result<Sink, Error> {
        let file = open_append(path).map_err(|source| Error::LogFile {
            key,
            path: path.to_path_buf(),
            source,
        })?;
        let sink = Sink {
            path: path.to_path_buf(),
            file,
            own_fd,
        };
        sink.redirect_own_fd();
        Ok(sink)
    }

    /// Points the master's own fd 1 or 2 at the current file.
    fn redirect_own_fd(&self) {
        let _ = match self.own_fd {
            1 => dup2_stdout(&self.file),
            _ => dup2_stderr(&self.file),
        };
    }

    /// Opens the path anew (after a rotation); keeps the old file on failure.
    fn reopen(&mut self) -> Result<(), String> {
        let file = open_append(&self.path)
            .map_err(|e| format!("{}: {}", self.path.display(), crate::error::io_reason(&e)))?;
        self.file = file;
        self.redirect_own_fd();
        Ok(())
    }
}

/// Writes whole lines of one stream: to its file, else to the master's own
/// descriptor. A full disk or a closed descriptor loses output, never the
/// master.
fn emit(sink: &mut Option<Sink>, stream: usize, bytes: &[u8]) {
    match sink {
        Some(sink) => {
            let _ = sink.file.write_all(bytes);
        }
        None if stream == STDERR => {
            let _ = std::io::stderr().lock().write_all(bytes);
        }
        None => {
            let _ = std::io::stdout().lock().write_all(bytes);
        }
    }
}

/// The read end of one worker's pipe and the start of a line not yet ended.
struct Pipe {
    read: OwnedFd,
    partial: Vec<u8>,
    /// poll(2) said there is something to read (or the end).
    readable: bool,
}

/// The last bytes of a worker's stderr, whole lines.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    /// The first line in `bytes` lost its start.
    cut: bool,
}

impl Tail {
    fn push(&mut self, lines: &[u8]) {
        let keep = lines.len().min(TAIL_BYTES);
        self.bytes.extend_from_slice(&lines[lines.len() - keep..]);
        if self.bytes.len() > TAIL_BYTES {
            self.bytes.drain(..self.bytes.len() - TAIL_BYTES);
            self.cut = true;
        } else if keep < lines.len() {
            self.cut = true;
        }
    }

    /// The last lines, `"a\nb"` escaped to one line; `None` if nothing was written.
    fn text(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return None;
        }
        let from = lines.len().saturating_sub(TAIL_LINES);
        let cut = self.cut || from > 0;
        let joined = lines[from..].join("\n");
        Some(format!(
            "{}{}",
            if cut { "..." } else { "" },
            crate::logging::escape(&joined)
        ))
    }
}

/// Both of a worker's pipes (`None`: not captured, or ended).
struct Captured {
    pipes: [Option<Pipe>; 2],
    tail: Tail,
}

impl Captured {
    /// Reads what `stream` holds, up to `budget` bytes, and writes its whole
    /// lines; the pipe is closed at its end.
    fn drain(&mut self, stream: usize, sink: &mut Option<Sink>, budget: usize) {
        let Some(pipe) = &mut self.pipes[stream] else {
            return;
        };
        let mut buf = [0u8; 65536];
        let mut total = 0;
        let ended = loop {
            if total >= budget {
                break false;
            }
            match nix::unistd::read(&pipe.read, &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    total += n;
                    let tail = (stream == STDERR).then_some(&mut self.tail);
                    take_lines(&mut pipe.partial, &buf[..n], sink, stream, tail);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    pipe.readable = false;
                    break false;
                }
                Err(_) => break true,
            }
        };
        if ended {
            self.end(stream, sink);
        }
    }

    /// Writes a held partial line (with a newline) and closes the pipe.
    fn end(&mut self, stream: usize, sink: &mut Option<Sink>) {
        if let Some(mut pipe) = self.pipes[stream].take() {
            if !pipe.partial.is_empty() {
                pipe.partial.push(b'\n');
                emit(sink, stream, &pipe.partial);
                if stream == STDERR {
                    self.tail.push(&pipe.partial);
                }
            }
        }
    }
}

/// Writes the whole lines of `partial` + `chunk` and keeps the rest in
/// `partial`, cut into lines of `MAX_LINE` when it grows past that.
fn take_lines(
    partial: &mut Vec<u8>,
    mut chunk: &[u8],
    sink: &mut Option<Sink>,
    stream: usize,
    mut tail: Option<&mut Tail>,
) {
    let mut write = |bytes: &[u8]| {
        emit(sink, stream, bytes);
        if let Some(tail) = tail.as_deref_mut() {
            tail.push(bytes);
        }
    };
    if let Some(last) = chunk.iter().rposition(|&b| b == b'\n') {
        let mut lines = &chunk[..=last];
        if !partial.is_empty() {
            // Only the first line completes the held one.
            let first = lines.iter().position(|&b| b == b'\n').unwrap_or(last);
            let (head, rest) = lines.split_at(first + 1);
            let room = MAX_LINE.saturating_sub(partial.len());
            if head.len() - 1 > room {
                // Held plus this part would be too long: the held part goes alone.
                partial.push(b'\n');
                write(partial);
                partial.clear();
            }
            partial.extend_from_slice(head);
            write(partial);
            partial.clear();
            lines = rest;
        }
        if !lines.is_empty() {
            write(lines);
        }
        chunk = &chunk[last + 1..];
    }
    while !chunk.is_empty() {
        let room = MAX_LINE - partial.len();
        let take = chunk.len().min(room);
        partial.extend_from_slice(&chunk[..take]);
        chunk = &chunk[take..];
        if partial.len() == MAX_LINE {
            partial.push(b'\n');
            write(partial);
            partial.clear();
        }
    }
}

/// A new worker's pipes before the fork: the write ends become its fd 1
/// and 2; the master keeps the read ends (`LogFiles::attach`).
pub struct WorkerPipes {
    read: [Option<OwnedFd>; 2],
    write: [Option<OwnedFd>; 2],
}

impl WorkerPipes {
    /// The write ends a worker gets as fd 1 and 2 (`None`: inherit ours).
    pub fn stdio(&self) -> (Option<RawFd>, Option<RawFd>) {
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map(|fd| fd.as_raw_fd());
        (raw(&self.write[STDOUT]), raw(&self.write[STDERR]))
    }
}

/// The configured files and every worker's pipes.
#[derive(Default)]
pub struct LogFiles {
    sinks: [Option<Sink>; 2],
    workers: HashMap<i32, Captured>,
    /// Owner given to the files, again after each reopen.
    owner: (Option<u32>, Option<u32>),
}

impl LogFiles {
    /// Opens the files (creating them) and points the master's own stdout and
    /// stderr at them. Fails naming the file.
    pub fn open(stdout: Option<&Path>, stderr: Option<&Path>) -> Result<LogFiles, Error> {
        let stdout = stdout
            .map(|path| Sink::open("stdout_path", path, 1))
            .transpose()?;
        let stderr = stderr
            .map(|path| Sink::open("stderr_path", path, 2))
            .transpose()?;
        Ok(LogFiles {
            sinks: [stdout, stderr],
            workers: HashMap::new(),
            owner: (None, None),
        })
    }

    /// Makes the pipes of a worker about to be forked: stderr always (its
    /// last lines explain a failed boot), stdout when it goes to a file.
    pub fn worker_pipes(&self) -> Result<WorkerPipes, Errno> {
        let mut pipes = WorkerPipes {
            read: [None, None],
            write: [None, None],
        };
        for stream in [STDOUT, STDERR] {
            if stream == STDOUT && self.sinks[STDOUT].is_none() {
                continue;
            }
            // Close-on-exec on both ends: only the worker's dup2 to fd 1 or 2
            // hands one on, so no other child holds a worker's pipe open.
            let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
            fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            pipes.read[stream] = Some(read);
            pipes.write[stream] = Some(write);
        }
        Ok(pipes)
    }

    /// Keeps the read ends of a forked worker's pipes; the write ends close.
    pub fn attach(&mut self, pid: i32, pipes: WorkerPipes) {
        let [out, err] = pipes.read.map(|read| {
            read.map(|read| Pipe {
                read,
                partial: Vec::new(),
                readable: false,
            })
        });
        self.workers.insert(
            pid,
            Captured {
                pipes: [out, err],
                tail: Tail::default(),
            },
        );
    }

    /// A reaped worker: copies what is left in its pipes (a line without its
    /// newline too), closes them, and returns its last stderr lines, escaped
    /// to one line.
    pub fn release(&mut self, pid: i32) -> Option<String> {
        let mut captured = self.workers.remove(&pid)?;
        for stream in [STDOUT, STDERR] {
            captured.drain(stream, &mut self.sinks[stream], DRAIN_PER_PASS);
            captured.end(stream, &mut self.sinks[stream]);
        }
        captured.tail.text()
    }

    /// Reopens every file (USR1); a file that cannot be reopened keeps being
    /// written where it was, and the error is logged. What the workers wrote
    /// before goes to the old file.
    pub fn reopen(&mut self) {
        self.drain_all();
        let (uid, gid) = self.owner;
        for sink in self.sinks.iter_mut().flatten() {
            match sink.reopen() {
                Ok(()) => {
                    if uid.is_some() || gid.is_some() {
                        // The file we opened, never whatever the path names now.
                        let _ = std::os::unix::fs::fchown(&sink.file, uid, gid);
                    }
                    log::info!(
                        "event=log-reopened path={}",
                        crate::logging::esc(sink.path.display())
                    )
                }
                Err(why) => log::error!(
                    "event=log-reopen-failed error=\"{}\" action=\"kept the old file\"",
                    crate::logging::esc(why)
                ),
            }
        }
    }

    /// Copies what poll(2) said is pending into the files, a bounded amount
    /// per pipe.
    pub fn drain(&mut self) {
        for captured in self.workers.values_mut() {
            for stream in [STDOUT, STDERR] {
                if captured.pipes[stream].as_ref().is_some_and(|p| p.readable) {
                    captured.drain(stream, &mut self.sinks[stream], DRAIN_PER_PASS);
                }
            }
        }
    }

    /// Copies everything pending, whatever poll(2) said (before a reopen,
    /// at exit).
    pub fn drain_all(&mut self) {
        for captured in self.workers.values_mut() {
            for stream in [STDOUT, STDERR] {
                captured.drain(stream, &mut self.sinks[stream], DRAIN_PER_PASS);
            }
        }
    }

    /// The pipes' read ends, for poll(2), in the order `note_readable` takes.
    pub fn poll_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.workers
            .values()
            .flat_map(|c| c.pipes.iter().flatten().map(|p| p.read.as_fd()))
    }

    /// Marks the pipes poll(2) found readable (or ended), one flag per fd
    /// of `poll_fds`, with nothing attached or released in between.
    pub fn note_readable(&mut self, readable: impl IntoIterator<Item = bool>) {
        let pipes = self
            .workers
            .values_mut()
            .flat_map(|c| c.pipes.iter_mut().flatten());
        for (pipe, readable) in pipes.zip(readable) {
            pipe.readable |= readable;
        }
    }

    /// Every pipe's read end (handed over across an in-place upgrade).
    pub fn read_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.poll_fds()
    }

    /// A worker's stdout and stderr read ends, by number, for the handover.
    pub fn read_fds_of(&self, pid: i32) -> [Option<RawFd>; 2] {
        match self.workers.get(&pid) {
            Some(c) => [STDOUT, STDERR].map(|s| c.pipes[s].as_ref().map(|p| p.read.as_raw_fd())),
            None => [None, None],
        }
    }

    /// Takes a worker's pipes' read ends handed over by an in-place upgrade.
    pub fn adopt(&mut self, pid: i32, read: [Option<OwnedFd>; 2]) {
        self.attach(
            pid,
            WorkerPipes {
                read,
                write: [None, None],
            },
        );
    }

    /// Gives the files to `uid`/`gid` (workers' user), so rotation tools that
    /// copy ownership keep it sensible.
    pub fn chown(&mut self, uid: Option<u32>, gid: Option<u32>) {
        self.owner = (uid, gid);
        if uid.is_none() && gid.is_none() {
            return;
        }
        for sink in self.sinks.iter().flatten() {
            let _ = std::os::unix::fs::fchown(&sink.file, uid, gid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through `take_lines` into a file and returns what the
    /// file got, the held partial line and the tail.
    fn lines_of(chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>, Tail) {
        let path = std::env::temp_dir().join(format!(
            "forkmaster-output-test-{}-{:p}",
            std::process::id(),
            chunks
        ));
        let file = open_append(&path).unwrap();
        // Unlinked at once: nothing is left behind; read back through the fd.
        std::fs::remove_file(&path).unwrap();
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mut sink = Some(Sink {
            path,
            file,
            own_fd: -1,
        });
        let mut partial = Vec::new();
        let mut tail = Tail::default();
        for chunk in chunks {
            take_lines(&mut partial, chunk, &mut sink, STDERR, Some(&mut tail));
        }
        (std::fs::read(fd_path).unwrap(), partial, tail)
    }

    #[test]
    fn whole_lines_pass_and_a_partial_one_is_held() {
        let (written, partial, _) = lines_of(&[b"a\nb", b"c\nd\ne"]);
        assert_eq!(written, b"a\nbc\nd\n");
        assert_eq!(partial, b"e");
    }

    #[test]
    fn a_line_longer_than_max_line_is_cut_into_lines() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut chunks: Vec<&[u8]> = long.chunks(65536).collect();
        chunks.push(b"\n");
        let (written, partial, _) = lines_of(&chunks);
        assert!(partial.is_empty());
        let lines: Vec<usize> = written.split(|&b| b == b'\n').map(|l| l.len()).collect();
        assert_eq!(lines, [MAX_LINE, MAX_LINE, 10, 0]);
    }

    #[test]
    fn a_held_line_plus_its_end_past_max_line_goes_out_in_two() {
        let start = vec![b'x'; MAX_LINE - 5];
        let end = [&[b'y'; 10][..], b"\nz\n"].concat();
        let (written, _, _) = lines_of(&[&start, &end]);
        let lines: Vec<usize> = written.split(|&b| b == b'\n').map(|l| l.len()).collect();
        assert_eq!(lines, [MAX_LINE - 5, 10, 1, 0]);
    }

    #[test]
    fn the_tail_keeps_the_last_lines_on_one_line() {
        let (_, _, tail) = lines_of(&[b"1\n2\n3\n4\n5\n6\nsay \"x\"\n"]);
        assert_eq!(tail.text().unwrap(), "...3\\n4\\n5\\n6\\nsay \\\"x\\\"");
        let (_, _, tail) = lines_of(&[&vec![b'x'; 3000], b"\nlast\n"]);
        let text = tail.text().unwrap();
        assert!(
            text.starts_with("...x") && text.ends_with("\\nlast"),
            "{text}"
        );
        assert!(text.len() <= TAIL_BYTES + 10, "{}", text.len());
        assert_eq!(lines_of(&[b"\n  \n"]).2.text(), None);
    }
}
