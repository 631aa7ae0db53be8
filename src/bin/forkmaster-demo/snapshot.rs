//! What the process was handed at exec, captured before anything else runs:
//! its open descriptors (for `/fds`) and its parent-death signal (for `/info`).

use std::fs;
use std::os::fd::RawFd;
use std::ptr;

/// Lists /proc/self/fd as `<fd> <target>` lines, skipping the fd used to read the directory.
/// Must run first in `main`, before anything else opens a descriptor.
pub fn snapshot_fds() -> String {
    // The directory handle will take the lowest free descriptor: find it to skip it.
    // SAFETY: F_GETFD only queries the flags of a descriptor number; no memory is involved.
    let dir_fd = (0..RawFd::MAX).find(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1);
    let mut fds: Vec<(RawFd, String)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(fd) = name.to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
                continue;
            };
            if Some(fd) != dir_fd {
                let target = fs::read_link(entry.path())
                    .map_or_else(|_| "?".to_string(), |p| p.to_string_lossy().into_owned());
                fds.push((fd, target));
            }
        }
    }
    fds.sort();
    fds.iter().map(|(fd, t)| format!("{fd} {t}\n")).collect()
}

/// The parent-death signal (0 if none). It is per thread: call on the main thread.
pub fn read_pdeathsig() -> libc::c_int {
    let mut pdeathsig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one c_int through the valid pointer given.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, ptr::addr_of_mut!(pdeathsig)) };
    pdeathsig
}
