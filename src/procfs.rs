//! A process's memory and CPU time as the kernel reports them in /proc, for
//! `status`:
//!
//! | figure | file | fields |
//! |-|-|-|
//! | rss (cheap) | `/proc/PID/stat` | `rss` (field 24), in pages |
//! | rss, pss | `/proc/PID/smaps_rollup` | `Rss`, `Pss` |
//! | private | `/proc/PID/smaps_rollup` | `Private_Clean` + `Private_Dirty` |
//! | shared | `/proc/PID/smaps_rollup` | `Shared_Clean` + `Shared_Dirty` |
//! | cpu time | `/proc/PID/stat` | `utime` + `stime` (fields 14, 15) |
//!
//! `stat` is cheap (the kernel keeps the counters); `smaps_rollup` walks
//! every mapping of the process, about 70 us each, so `status` reads it
//! within a budget (see `master::usage`). Read only when asked (a status,
//! or the memory check of `max_worker_memory`). Each read is one small file
//! with a size limit; /proc files are generated in memory, so a read waits
//! on no disk, at most briefly on the process's memory-map lock (which
//! `smaps_rollup` takes to walk its mappings). A process that vanished (or
//! became a zombie, whose `smaps_rollup` is empty) gives `None`.

use std::fs::File;
use std::io::Read;

/// `smaps_rollup` is about 1 KiB, `stat` a few hundred bytes: whatever
/// lies beyond this is not what we parse.
const READ_LIMIT: u64 = 8 * 1024;

/// The unit of `utime`/`stime`: USER_HZ, which is 100 on every
/// architecture Rust builds Linux programs for (it is the ABI value that
/// `sysconf(_SC_CLK_TCK)` returns, whatever the kernel's own HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// A process's memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
    /// Pages only this process maps.
    pub private: u64,
    /// Pages other processes map too (forked from the same parent, shared
    /// libraries, shared mappings).
    pub shared: u64,
}

/// The memory of `pid`; `None` if it is gone, a zombie, or not ours to read.
pub fn memory(pid: i32) -> Option<Memory> {
    parse_smaps_rollup(&read_bounded(&format!("/proc/{pid}/smaps_rollup"))?)
}

/// A process's CPU time and resident memory, from one read of `stat`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// User and system CPU time, in seconds.
    pub cpu_secs: f64,
    /// Resident memory: the kernel's counters (per-CPU estimates), no walk
    /// of the mappings.
    pub rss: u64,
}

/// The CPU time and resident memory of `pid`; `None` if it is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    let (ticks, pages) = parse_stat(&read_bounded(&format!("/proc/{pid}/stat"))?)?;
    Some(Stat {
        cpu_secs: ticks as f64 / TICKS_PER_SEC,
        rss: pages.saturating_mul(page_size()),
    })
}

fn page_size() -> u64 {
    static PAGE_SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(4096)
    })
}

/// The first `READ_LIMIT` bytes of a /proc file.
fn read_bounded(path: &str) -> Option<String> {
    let mut text = String::new();
    File::open(path)
        .ok()?
        .take(READ_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// `Rss:  1234 kB` lines; `None` without an `Rss` line (a zombie's file is
/// empty).
fn parse_smaps_rollup(text: &str) -> Option<Memory> {
    let mut memory = Memory::default();
    let mut seen_rss = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(bytes) = kib_value(rest) else {
            continue;
        };
        match key {
            "Rss" => {
                memory.rss = bytes;
                seen_rss = true;
            }
            "Pss" => memory.pss = bytes,
            "Private_Clean" | "Private_Dirty" => memory.private += bytes,
            "Shared_Clean" | "Shared_Dirty" => memory.shared += bytes,
            _ => {}
        }
    }
    seen_rss.then_some(memory)
}

/// `   1234 kB` as bytes.
fn kib_value(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

/// `utime + stime` (fields 14, 15) and `rss` (field 24, in pages) from a
/// `stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself: fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let (_, after_name) = text.rsplit_once(')')?;
    // After the name: state is field 3, so field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().take(24 - 2).collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)?.saturating_add(field(15)?);
    Some((ticks, field(24)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "\
55d0c0a3e000-7ffc2b9fe000 ---p 00000000 00:00 0                          [rollup]
Rss:                2048 kB
Pss:                 700 kB
Pss_Dirty:           300 kB
Pss_Anon:            300 kB
Shared_Clean:       1200 kB
Shared_Dirty:        100 kB
Private_Clean:       448 kB
Private_Dirty:       300 kB
Referenced:         2048 kB
Anonymous:           400 kB
Swap:                  0 kB
";

    #[test]
    fn smaps_rollup_sums_private_and_shared() {
        let m = parse_smaps_rollup(ROLLUP).unwrap();
        assert_eq!(m.rss, 2048 * 1024);
        assert_eq!(m.pss, 700 * 1024);
        assert_eq!(m.private, 748 * 1024);
        assert_eq!(m.shared, 1300 * 1024);
        assert_eq!(m.private + m.shared, m.rss);
    }

    #[test]
    fn an_empty_rollup_is_none() {
        assert_eq!(parse_smaps_rollup(""), None);
    }

    #[test]
    fn stat_counts_fields_after_the_last_parenthesis() {
        let stat =
            "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 1 0 1234 5000 350 1";
        assert_eq!(parse_stat(stat), Some((320, 350)));
        assert_eq!(parse_stat("42 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id() as i32;
        let m = memory(pid).expect("our own smaps_rollup");
        assert!(m.rss > 0 && m.pss <= m.rss, "{m:?}");
        let stat = stat(pid).expect("our own stat");
        // The same pages, counted two ways a moment apart.
        assert!(stat.rss.abs_diff(m.rss) < m.rss / 2, "{stat:?} {m:?}");
        assert!(stat.cpu_secs >= 0.0);
    }

    #[test]
    fn a_reaped_process_has_no_figures() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(memory(pid), None);
        assert_eq!(stat(pid), None);
    }
}
