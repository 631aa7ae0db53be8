#!/usr/bin/env python3
"""Pod lifecycle harness: forkmaster driven as a kubelet drives a container.

Each pod is forkmaster as PID 1 of a new pid namespace
(`unshare --pid --fork --mount-proc --kill-child`, root only) serving the
demo app on its own 127.0.0.1 port, with `term: graceful`, a
`shutdown_delay` and a health listener. Around the pods, the parts of
Kubernetes that decide whether a request fails:

* readiness probes: GET /readyz on each pod every PROBE_PERIOD; a pod
  enters the endpoint list on its first 200 and leaves it when a probe
  fails or the pod is deleted, after PROPAGATION_LAG (endpoints reach
  every node with a delay, so traffic keeps coming for a while);
* clients: threads sending `GET /` (Connection: close) to the pods the
  endpoint list names, round robin; every answer but a 200 is a failure;
* pod deletion: the pod is marked terminating and leaves the endpoints
  (after the lag) while its PID 1 gets TERM; at the grace deadline
  (terminationGracePeriodSeconds) it gets SIGKILL, which tears down the
  whole namespace;
* a zombie watch: /proc is sampled for processes in Z state whose pid
  namespace is a pod's; one seen in two samples LINGER seconds apart was
  not reaped and is a failure (a zombie between its exit and the master's
  waitpid is normal and only counted);
* at the end: nothing may be left running in any pod's namespace.

Scenarios (in this order, each with the load running):
  --reloads N       `forkmaster reload --wait` inside the pod (nsenter)
  --replacements N  start a new pod, wait until it is in the endpoints,
                    delete the old one (a Deployment's rolling update
                    with maxSurge 1, maxUnavailable 0)
  --upgrades N      `forkmaster upgrade --wait` inside the pod; as PID 1 it
                    must upgrade in place (upgrade_mode: auto), keeping
                    the pid: the pid before and after is reported

Prints failed requests per scenario and in total; exits 1 on any failed
request, failed operation, lingering zombie or leftover process, 2 on a
usage or setup error. Everything runs under a temp dir that is removed,
and every pod started is killed on exit.
"""

import argparse
import atexit
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


def log(msg):
    print(f"pods: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(port, path, timeout):
    """(status, body) of GET path on 127.0.0.1:port; raises OSError."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"bad answer {data[:60]!r}")
    return int(parts[1]), body.decode(errors="replace")


def ns_pid(pid):
    """The pid of host pid `pid` in its own pid namespace, as text."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return line.split()[-1]
    except OSError:
        pass
    return None


def pid_namespace(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def all_pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


class Pod:
    """forkmaster as PID 1 of its own pid namespace, on its own port."""

    serial = itertools.count()

    def __init__(self, h):
        self.h = h
        self.name = f"pod-{next(Pod.serial)}"
        self.dir = os.path.join(h.tmp, self.name)
        os.mkdir(self.dir)
        self.port = free_port()
        self.health = free_port()
        self.config = os.path.join(self.dir, "forkmaster.yml")
        self.pid_file = os.path.join(self.dir, "app.pid")
        with open(self.config, "w") as f:
            f.write(
                f"listen: [{HOST}:{self.port}]\n"
                f"health_listen: {HOST}:{self.health}\n"
                f"workers: {h.args.workers}\n"
                f"pid: {self.pid_file}\n"
                "ready: notify\n"
                "term: graceful\n"
                f"shutdown_delay: {h.args.shutdown_delay}s\n"
                f"graceful_timeout: {h.args.graceful_timeout}s\n"
                f"command: [{h.demo}]\n"
            )
        self.log_path = os.path.join(self.dir, "master.log")
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
             h.forkmaster, "-c", self.config],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            start_new_session=True,
        )
        self.host_pid = None
        self.namespace = None
        self.ready = False  # last probe answered 200
        self.terminating = False
        self.visible_until = None  # None: not in the endpoints; inf: in them
        self.find_master()

    def find_master(self):
        """The master: the one child of `unshare`, found by /proc."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            if kids:
                self.host_pid = int(kids[0])
                self.namespace = pid_namespace(self.host_pid)
                if self.namespace:
                    self.h.namespaces[self.namespace] = self.name
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise SystemExit(f"pods: {self.name}: the master did not start; log:\n{self.log_tail()}")

    def log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-15:])
        except OSError:
            return ""

    def probe(self):
        """One readiness probe; updates the endpoint view as the
        endpoints controller would (removal only after the lag)."""
        try:
            status, _ = http_get(self.health, "/readyz", 1.0)
            ok = status == 200
        except OSError:
            ok = False
        with self.h.lock:
            self.ready = ok
            if ok and not self.terminating:
                self.visible_until = float("inf")
            elif self.visible_until == float("inf"):
                self.visible_until = time.monotonic() + self.h.args.lag

    def in_endpoints(self, now):
        return self.visible_until is not None and now < self.visible_until

    def inside(self, *command):
        """Runs a command inside the pod (`kubectl exec`): (rc, output)."""
        try:
            out = subprocess.run(
                ["nsenter", "-t", str(self.host_pid), "-p", "-m", "--", *command],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
            )
        except subprocess.TimeoutExpired:
            return 124, f"{command[1]} did not return within 180 s"
        return out.returncode, (out.stdout + out.stderr).strip()

    def delete(self):
        """The kubelet's pod deletion: terminating, out of the endpoints
        after the lag, TERM now, SIGKILL at the grace deadline. Returns how
        it ended: ('stopped', seconds) or ('killed', grace)."""
        start = time.monotonic()
        with self.h.lock:
            self.terminating = True
            if self.visible_until == float("inf"):
                self.visible_until = start + self.h.args.lag
        os.kill(self.host_pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.h.args.grace)
            how = ("stopped", time.monotonic() - start)
        except subprocess.TimeoutExpired:
            os.kill(self.host_pid, signal.SIGKILL)
            self.proc.wait()
            how = ("killed", self.h.args.grace)
        # Its endpoint stays until the lag is over, whether the pod is gone
        # or not: that is the window shutdown_delay must cover.
        self.logf.close()
        return how

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.host_pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Harness:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stop_clients = threading.Event()
        self.pods = []
        self.namespaces = {}
        self.scenario = "warmup"
        self.counts = {}  # scenario -> [ok, failed]
        self.seconds = {}  # scenario -> wall time
        self.failures = []  # (scenario, what)
        self.zombies_seen = {}  # (pid, ns) -> first seen
        self.transient_zombies = 0
        self.lingering = set()
        self.tmp = tempfile.mkdtemp(prefix="fm-pods-")
        self.forkmaster, self.demo = binaries(args.bin)

    def start_pod(self):
        pod = Pod(self)
        with self.lock:
            self.pods.append(pod)
        return pod

    def wait_in_endpoints(self, pod, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pod.in_endpoints(time.monotonic()):
                    return True
            if pod.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.fail(f"{pod.name} never became ready; log:\n{pod.log_tail()}")
        return False

    def fail(self, what):
        with self.lock:
            self.failures.append((self.scenario, what))
            shown = len(self.failures) <= 20
        if shown:
            log(f"FAIL [{self.scenario}] {what}")

    def endpoints(self):
        now = time.monotonic()
        with self.lock:
            return [p for p in self.pods if p.in_endpoints(now)]

    # The threads: probes, clients, zombie watch.

    def probe_loop(self):
        while not self.stop.is_set():
            with self.lock:
                pods = [p for p in self.pods if p.proc.poll() is None]
            for pod in pods:
                pod.probe()
            self.stop.wait(self.args.probe_period)

    def client_loop(self, n):
        rr = itertools.count(n)
        deadline = time.monotonic() + self.args.max_seconds
        while not self.stop_clients.is_set() and time.monotonic() < deadline:
            targets = self.endpoints()
            if not targets:
                time.sleep(0.01)
                continue
            pod = targets[next(rr) % len(targets)]
            scenario = self.scenario
            try:
                status, body = http_get(pod.port, "/", 5.0)
                ok = status == 200
                why = f"status {status}"
            except OSError as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            with self.lock:
                counts = self.counts.setdefault(scenario, [0, 0])
                counts[0 if ok else 1] += 1
            if not ok:
                self.fail(f"request to {pod.name} (terminating={pod.terminating}): {why}")
            time.sleep(self.args.pause)

    def zombie_loop(self):
        while not self.stop.is_set():
            self.sample_zombies()
            self.stop.wait(0.1)

    def sample_zombies(self):
        now = time.monotonic()
        current = set()
        for pid in all_pids():
            if proc_state(pid) != "Z":
                continue
            ns = pid_namespace(pid)
            if ns not in self.namespaces:
                continue
            key = (pid, ns)
            current.add(key)
            first = self.zombies_seen.setdefault(key, now)
            if first == now:
                self.transient_zombies += 1
            elif now - first >= self.args.linger and key not in self.lingering:
                self.lingering.add(key)
                self.fail(f"zombie pid {pid} in {self.namespaces[ns]} for {now - first:.1f}s")
        for key in list(self.zombies_seen):
            if key not in current:
                del self.zombies_seen[key]

    # The scenarios.

    def run_reloads(self, pod, n):
        for i in range(n):
            rc, out = pod.inside(self.forkmaster, "reload", "--wait", "-c", pod.config)
            if rc != 0:
                self.fail(f"reload {i + 1}: rc={rc} {out}")
            time.sleep(self.args.gap)
        return pod

    def run_replacements(self, pod, n):
        self.stops = []
        for i in range(n):
            new = self.start_pod()
            if not self.wait_in_endpoints(new):
                return new
            how, seconds = pod.delete()
            self.stops.append((how, seconds))
            if how != "stopped":
                self.fail(f"replacement {i + 1}: {pod.name} SIGKILLed at the grace deadline")
            pod = new
            time.sleep(self.args.gap)
        return pod

    def run_upgrades(self, pod, n):
        self.upgrade_pids = []
        for i in range(n):
            before = (pod.host_pid, ns_pid(pod.host_pid))
            rc, out = pod.inside(self.forkmaster, "upgrade", "--wait", "-c", pod.config)
            # In place, the master keeps its pid (1 inside, the same outside)
            # and the pod lives on; an upgrade that forked a new master and
            # let PID 1 exit has ended the pod (the kernel killed the rest).
            after = (pod.host_pid, ns_pid(pod.host_pid))
            alive = (after[1] == "1" and proc_state(pod.host_pid) not in (None, "Z")
                     and pod.proc.poll() is None)
            self.upgrade_pids.append((before, after if alive else (None, None), rc))
            log(f"upgrade {i + 1}: rc={rc} master pid {before[0]} (1 inside) -> "
                f"{after[0] if alive else 'gone'}: {out}")
            if rc != 0 or not alive:
                self.fail(f"upgrade {i + 1}: rc={rc}, pod alive: {alive}: {out}")
                if not alive:
                    break
            time.sleep(self.args.gap)
        return pod

    def run(self):
        args = self.args
        threads = [threading.Thread(target=self.probe_loop, daemon=True),
                   threading.Thread(target=self.zombie_loop, daemon=True)]
        threads += [threading.Thread(target=self.client_loop, args=(n,), daemon=True)
                    for n in range(args.clients)]
        pod = self.start_pod()
        for t in threads:
            t.start()
        self.wait_in_endpoints(pod)
        time.sleep(args.gap)
        plan = [("reloads", args.reloads, self.run_reloads),
                ("replacements", args.replacements, self.run_replacements),
                ("upgrades", args.upgrades, self.run_upgrades)]
        for name, n, step in plan:
            if n <= 0:
                continue
            self.scenario = name
            log(f"{name}: {n}")
            start = time.monotonic()
            pod = step(pod, n)
            time.sleep(args.gap)
            self.seconds[name] = time.monotonic() - start
        # The last pod has no successor: the clients stop before it does.
        self.stop_clients.set()
        self.scenario = "final"
        if pod.proc.poll() is None:
            pod.delete()
        self.stop.set()
        for t in threads:
            t.join(timeout=10)
        self.sample_zombies()
        self.check_leftovers()
        return self.report()

    def check_leftovers(self):
        for pod in self.pods:
            pod.kill()
        left = [(pid, self.namespaces[ns]) for pid in all_pids()
                if (ns := pid_namespace(pid)) in self.namespaces]
        if left:
            self.fail(f"left running in the pods' namespaces: {left}")

    def report(self):
        print(f"{'scenario':<14}{'count':>7}{'seconds':>9}{'requests ok':>13}{'failed':>8}")
        total_ok = total_failed = 0
        counts = {"reloads": self.args.reloads, "replacements": self.args.replacements,
                  "upgrades": self.args.upgrades}
        for name in ("warmup", "reloads", "replacements", "upgrades"):
            if name not in self.counts:
                continue
            ok, failed = self.counts[name]
            total_ok += ok
            total_failed += failed
            secs = f"{self.seconds[name]:.1f}" if name in self.seconds else "-"
            print(f"{name:<14}{counts.get(name, '-'):>7}{secs:>9}{ok:>13}{failed:>8}")
        print(f"{'total':<14}{'':>7}{'':>9}{total_ok:>13}{total_failed:>8}")
        if getattr(self, "stops", None):
            secs = sorted(s for how, s in self.stops if how == "stopped")
            killed = sum(1 for how, _ in self.stops if how == "killed")
            if secs:
                print(f"old pods stopped on TERM: {len(secs)} in {secs[0]:.2f}-{secs[-1]:.2f}s "
                      f"(grace {self.args.grace}s), SIGKILLed at the deadline: {killed}")
        for before, after, rc in getattr(self, "upgrade_pids", []):
            print(f"upgrade: rc={rc} master host pid {before[0]} (pid {before[1]} inside) -> "
                  f"{after[0] or 'gone'} (pid {after[1] or '-'} inside)")
        print(f"pods: {len(self.pods)}, zombies seen in a pod's namespace: "
              f"{self.transient_zombies} (all reaped), lingering > {self.args.linger}s: "
              f"{len(self.lingering)}")
        other = [f for f in self.failures if not f[1].startswith("request ")]
        print(f"failed requests: {total_failed}; other failures: {len(other)}")
        for scenario, what in other:
            print(f"  [{scenario}] {what}")
        if total_ok == 0:
            print("no request was answered")
            return 1
        return 1 if self.failures else 0

    def cleanup(self):
        self.stop_clients.set()
        self.stop.set()
        for pod in self.pods:
            pod.kill()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")


def binaries(bin_dir):
    """forkmaster and forkmaster-demo from BIN_DIR, else target/release or
    target/debug (whichever has both, newest first)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = [bin_dir] if bin_dir else [os.path.join(repo, "target", d) for d in ("release", "debug")]
    found = [d for d in dirs if all(os.access(os.path.join(d, b), os.X_OK)
                                    for b in ("forkmaster", "forkmaster-demo"))]
    if not found:
        raise SystemExit(f"pods: no forkmaster and forkmaster-demo in {', '.join(dirs)}: build them")
    best = os.path.abspath(max(found, key=lambda d: os.path.getmtime(os.path.join(d, "forkmaster"))))
    return (os.path.join(best, "forkmaster"), os.path.join(best, "forkmaster-demo"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reloads", type=int, default=0)
    p.add_argument("--replacements", type=int, default=0)
    p.add_argument("--upgrades", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="workers per pod (2)")
    p.add_argument("--clients", type=int, default=4, help="client threads (4)")
    p.add_argument("--pause", type=float, default=0.002,
                   help="seconds each client waits between requests (0.002)")
    p.add_argument("--probe-period", type=float, default=0.15, help="seconds (0.15)")
    p.add_argument("--lag", type=float, default=0.5,
                   help="endpoint propagation lag on removal, seconds (0.5)")
    p.add_argument("--shutdown-delay", type=float, default=1.5,
                   help="the pods' shutdown_delay, seconds (1.5; must exceed --lag)")
    p.add_argument("--graceful-timeout", type=int, default=10, help="seconds (10)")
    p.add_argument("--grace", type=float, default=None,
                   help="terminationGracePeriodSeconds (default: shutdown_delay + "
                        "graceful_timeout + 5)")
    p.add_argument("--gap", type=float, default=0.3,
                   help="seconds of load between two operations (0.3)")
    p.add_argument("--linger", type=float, default=1.0,
                   help="a zombie seen this long apart was not reaped (1.0)")
    p.add_argument("--max-seconds", type=float, default=600,
                   help="hard bound on the client threads' run (600)")
    p.add_argument("--bin", help="directory with forkmaster and forkmaster-demo")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = p.parse_args()
    if args.grace is None:
        args.grace = args.shutdown_delay + args.graceful_timeout + 5
    if os.geteuid() != 0:
        print("pods: needs root (pid namespaces, nsenter)", file=sys.stderr)
        return 2
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            print(f"pods: {tool} not found (util-linux)", file=sys.stderr)
            return 2
    h = Harness(args)
    atexit.register(h.cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    return h.run()


if __name__ == "__main__":
    sys.exit(main())
