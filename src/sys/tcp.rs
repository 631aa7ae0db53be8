//! `getsockopt(IPPROTO_TCP, TCP_INFO)`: nix has no getter for it, so its
//! `sockopt_impl!` macro makes one (the macro holds the raw call, with a
//! buffer of exactly `size_of::<tcp_info>()` bytes).

use nix::{getsockopt_impl, sockopt_impl};
use std::os::fd::AsFd;

sockopt_impl!(
    /// `getsockopt(IPPROTO_TCP, TCP_INFO)`.
    TcpInfo,
    GetOnly,
    libc::IPPROTO_TCP,
    libc::TCP_INFO,
    libc::tcp_info
);

/// The kernel's `TCP_INFO` for a TCP socket; `None` if it has none.
pub fn tcp_info(fd: &impl AsFd) -> Option<libc::tcp_info> {
    nix::sys::socket::getsockopt(fd, TcpInfo).ok()
}
