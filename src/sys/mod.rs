//! The only module allowed `unsafe` (the crate root denies it elsewhere):
//! each submodule does one job that needs raw system calls, and keeps every
//! `unsafe` block small with a `// SAFETY:` line saying why it is sound.
//!
//! | module    | job                                                        |
//! |-----------|------------------------------------------------------------|
//! | `signals` | signal handlers that write to the self-pipe                |
//! | `spawn`   | fork + exec of a worker or a new master (`ExecPlan`)       |
//! | `child`   | the child's steps between fork and exec                    |
//! | `fd`      | close-on-exec sweeping; adopting fds named to us by number |
//! | `process` | forking to daemonize; whether stdin is a terminal; subreaper, children |
//! | `preload` | the preloader's inherited socket end; is a pid our own child |
//! | `tcp`     | `TCP_INFO` of a socket (a listener's accept queue)          |
//! | `reexec`  | an in-place upgrade: signal mask, memfd, `execve` of itself |
//!
//! Everything outside holds `OwnedFd`/`BorrowedFd`; raw fd numbers appear only
//! in environment values and between fork and exec.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod child;
pub mod fd;
pub mod preload;
pub mod process;
pub mod reexec;
mod signals;
mod spawn;
pub mod tcp;

pub use fd::set_cloexec_from_3;
pub use process::{become_subreaper, children, stdin_is_terminal};
pub use signals::{record_signals, take_overflowed_signals};
pub use spawn::{decode_error_record, spawn, ChildStage, Credentials, ExecPlan, ERROR_RECORD_LEN};
