//! Private memory on request, to exercise `max_worker_memory`: pages this
//! process writes after its fork are its own (copy-on-write shares none of
//! them), and they are kept until it exits.
//!
//! `GET /alloc?mb=N` grows it by N MiB (at most `MAX_MB` in all);
//! `DEMO_ALLOC_MB=N` does so at boot.

use std::sync::Mutex;

/// The most one worker holds: a test or bench never needs more, and a
/// mistyped request must not take the machine down.
const MAX_MB: usize = 1024;

static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Allocates and writes `mb` MiB more; returns the MiB held in all.
pub fn grow(mb: usize) -> Result<usize, String> {
    let mut held = HELD
        .lock()
        .map_err(|_| "ballast lock poisoned".to_string())?;
    let total = held.len() + mb;
    if total > MAX_MB {
        return Err(format!("at most {MAX_MB} MiB in all"));
    }
    for _ in 0..mb {
        // Written, not just reserved: untouched pages are not resident.
        held.push(vec![0x5a; 1 << 20]);
    }
    Ok(total)
}
