//! Serving: every listen form, the worker's environment and fds.

use crate::support::*;

#[test]
fn serves_on_tcp_and_unix_with_stable_worker_indexes() {
    let dir = TempDir::new();
    let master = Fixture::new(&dir).workers(2).tcp().unix("app.sock").start();
    let log = master.wait_ready();
    let tcp = Target::Tcp(listen_addr(&log, 0));
    let unix = Target::unix(dir.join("app.sock"));
    let a = wait_serving(&tcp);
    let b = wait_serving(&unix);
    assert_eq!(a["generation"], "1");
    for f in [&a, &b] {
        assert!(f["worker"] == "0" || f["worker"] == "1", "{f:?}");
    }
    let workers = master.children();
    assert_eq!(workers.len(), 2, "{workers:?}");
}
