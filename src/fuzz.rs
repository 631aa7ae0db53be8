//! Bounded property tests of every parser that reads outside input: the
//! config file, listen addresses, durations, notify datagrams and the
//! upgrade handoff. Inputs are valid samples mutated at random, and random
//! text over the characters these formats use. Each parser must never panic
//! and must explain every rejection on one line.
//!
//! `FORKMASTER_FUZZ_ITERATIONS` (default 20000 per parser) and
//! `FORKMASTER_FUZZ_SEED` (default fixed, so CI is repeatable) tune a run.

use crate::ipc::notify;
use crate::{config, duration, handoff, listen};
use std::net::SocketAddr;

/// xorshift64*: small, fast, good enough to explore inputs.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("FORKMASTER_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_f00d_cafe_d00d_u64);
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A sample with a few random edits: flips, inserts, deletes, splices.
    fn mutate(&mut self, sample: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut out = sample.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(5) {
                0 if at < out.len() => out[at] = *self.pick(alphabet),
                1 => out.insert(at, *self.pick(alphabet)),
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => {
                    let byte = (self.next() & 0xff) as u8;
                    out.insert(at, byte);
                }
                _ => {
                    let from = self.below(sample.len() + 1);
                    let len = self.below(8);
                    let end = (from + len).min(sample.len());
                    out.splice(at..at, sample[from..end].iter().copied());
                }
            }
        }
        out
    }

    fn random(&mut self, alphabet: &[u8], max: usize) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| *self.pick(alphabet))
            .collect()
    }
}

fn iterations() -> usize {
    std::env::var("FORKMASTER_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Feeds mutated samples and random strings to `check`.
fn explore(samples: &[&str], alphabet: &[u8], mut check: impl FnMut(&str)) {
    let mut rng = Rng::from_env();
    for i in 0..iterations() {
        let bytes = if i % 4 == 3 {
            rng.random(alphabet, 64)
        } else {
            let sample = *rng.pick(samples);
            rng.mutate(sample.as_bytes(), alphabet)
        };
        check(&String::from_utf8_lossy(&bytes));
    }
}

/// An error a person reads: one line, something said.
fn assert_explains(input: &str, err: &str) {
    assert!(!err.trim().is_empty(), "empty error for {input:?}");
    assert!(
        !err.contains('\n'),
        "multi-line error for {input:?}: {err:?}"
    );
}

/// Host names resolve to a fixed address: no DNS while fuzzing.
fn no_dns(_host: &str, port: u16) -> Result<SocketAddr, String> {
    Ok(SocketAddr::from(([10, 0, 0, 1], port)))
}

const ADDRESS_CHARS: &[u8] = b"0123456789.:[]abcdefx/unix=-_@ ;%\n";

#[test]
fn listen_addresses() {
    let samples = [
        "8080",
        "127.0.0.1:80",
        "[::1]:9000",
        "unix:/tmp/a.sock",
        "web=127.0.0.1:8080",
        "admin=unix:/run/x.sock",
        "host.example:443",
        "[fe80::1%eth0]:80",
    ];
    explore(&samples, ADDRESS_CHARS, |input| {
        if let Err(err) = listen::parse_listen_with(input, no_dns) {
            assert_explains(input, &err);
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
    });
}

#[test]
fn durations() {
    let samples = ["500ms", "30s", "2m", "1h", "1.5s", "0"];
    explore(&samples, b"0123456789.mshx-e+ ", |input| {
        if let Err(err) = duration::parse_duration(input) {
            assert_explains(input, &err);
        }
    });
}

#[test]
fn config_files() {
    let samples = [
        "listen: [8080, 'web=127.0.0.1:9000']\nworkers: 4\nready: notify\ncommand: [app]\n",
        "listen:\n  - {address: 'unix:/tmp/x.sock', name: api, backlog: 64, mode: '0660'}\n",
        "env: {A: 1, B: x}\nready_timeout: 30s\ntimeout: 10s\nstop_signal: QUIT\n",
        "graceful_timeout: 1m\nretire: manual\nmax_surge: 2\numask: '0027'\nlog_level: debug\n",
        "pid: /tmp/x.pid\nworking_directory: /srv\nstdout_path: /tmp/o\ndaemonize: true\n",
    ];
    explore(
        &samples,
        b"abcdefghijklmnopqrstuvwxyz_: -[]{}',\"\n0123456789./=#&*!|>",
        |input| {
            match config::parse_file_with(input, no_dns) {
                Ok(layer) => {
                    // Whatever parses, resolves or is refused with a reason.
                    if let Err(err) = config::resolve(None, layer) {
                        assert_explains(input, &err);
                    }
                }
                Err(err) => assert_explains(input, &err),
            }
        },
    );
}

#[test]
fn notify_datagrams() {
    let samples = [
        "READY=1\nSTATUS=serving\n",
        "WATCHDOG=1",
        "STOPPING=1\nFORKMASTER_RETIRE=3\n",
        "FORKMASTER_UPGRADE_FAILED=worker=0 exec ./app: No such file\n",
    ];
    let mut rng = Rng::from_env();
    explore(&samples, b"READYWTCHOGS=01\n\0\xff_", |input| {
        let _ = notify::parse_message(input.as_bytes());
    });
    // Raw bytes too, not only valid UTF-8.
    for _ in 0..iterations() {
        let bytes: Vec<u8> = (0..rng.below(256))
            .map(|_| (rng.next() & 0xff) as u8)
            .collect();
        let _ = notify::parse_message(&bytes);
    }
}

#[test]
fn upgrade_handoff() {
    let samples = [
        "3=127.0.0.1:8080;s4:web=unix:/run/app.sock",
        "5=[::1]:80",
        "1234:7",
    ];
    explore(&samples, b"0123456789=;:s[].unix/abweb", |input| {
        if let Err(err) = handoff::decode_listeners(input) {
            assert_explains(input, &err);
        }
        let _ = handoff::decode_predecessor(input);
    });
}
