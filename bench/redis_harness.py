"""Shared by the benchmark and the demo: a private redis-server on a free
loopback port, and a fast loader of token sets.

Nothing here talks to a Redis it did not start.
"""
import argparse
import collections
import contextlib
import os
import random
import signal
import shutil
import socket
import subprocess
import tempfile
import time

DAY_MS = 86_400_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_bench_args(doc: str, *extra):
    """Parses the options both sweep benchmarks share (--users, --tokens,
    --runs, --binary) plus `extra` (argument-name, keyword-dict) pairs, and
    checks the binary was built."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1, help="runs of each; medians reported")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/token-sweeper"))
    for name, options in extra:
        ap.add_argument(name, **options)
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        raise SystemExit(f"{args.binary} not found: cargo build --release")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """redis-server with persistence off, in a temporary directory."""

    def __init__(self, extra=()) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="token-sweeper-bench-")
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--logfile", "redis.log", *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.proc.kill()
        raise SystemExit("redis-server did not start; see " + self.dir)

    def _wait_ready(self) -> bool:
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.cli("PING").strip() == "PONG":
                    return True
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args],
                              check=True, capture_output=True, text=True).stdout

    def now_ms(self) -> int:
        secs, micros = self.cli("TIME").split()
        return int(secs) * 1000 + int(micros) // 1000

    def main_thread_cpu(self) -> float:
        """Seconds of CPU the Redis main thread has used so far."""
        fields = dict(line.split(":", 1) for line in self.cli("INFO", "cpu").splitlines()
                      if ":" in line)
        return (float(fields["used_cpu_user_main_thread"])
                + float(fields["used_cpu_sys_main_thread"]))

    def dbsize(self) -> int:
        return int(self.cli("DBSIZE"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def servers_and_scratch(servers, prefix: str):
    """Yields a temporary directory for data files; stops `servers` and
    removes the directory however the block ends."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(path, ignore_errors=True)


def resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def write_dataset(path, users: int, tokens: int, now_ms: int, seed: int = 42,
                  live_ms: tuple = (60_000, 30 * DAY_MS), route=None) -> int:
    """RESP for `users` sets of `tokens` members each, half of them expired
    (1 minute to 30 days ago), half live (expiring `live_ms[0]` to
    `live_ms[1]` from now); members are 64-hex digests as the auth
    module writes them. Returns the number of expired members.

    With `route` (key -> index), `path` is a list of files and each key's
    command goes to `path[route(key)]`: one file per cluster node."""
    paths = path if route else [path]
    route = route or (lambda key: 0)
    rng = random.Random(seed)
    expired = 0
    files = [open(p, "wb") for p in paths]
    chunks = [[] for _ in paths]
    try:
        for user in range(users):
            key = b"user%d-tokens" % user
            parts = [b"ZADD", key]
            for t in range(tokens):
                if t < tokens // 2:
                    score = now_ms - rng.randint(60_000, 30 * DAY_MS)
                    expired += 1
                else:
                    score = now_ms + rng.randint(*live_ms)
                parts.append(b"%d" % score)
                parts.append(b"%064x" % rng.getrandbits(256))
            target = route(key)
            chunks[target].append(resp(*parts))
            if len(chunks[target]) == 10_000:
                files[target].write(b"".join(chunks[target]))
                chunks[target].clear()
        for f, chunk in zip(files, chunks):
            f.write(b"".join(chunk))
    finally:
        for f in files:
            f.close()
    return expired


def _crc16(data: bytes) -> int:
    """CRC16-XMODEM, the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: bytes) -> int:
    """The cluster slot of `key`, hash tags included."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return _crc16(key) % 16384


def load(server: PrivateRedis, path: str) -> None:
    with open(path, "rb") as f:
        subprocess.run(["redis-cli", "-p", str(server.port), "--pipe"], stdin=f,
                       check=True, stdout=subprocess.DEVNULL)


Measured = collections.namedtuple("Measured", "wall rss cpu out")


def run_measured(argv, env=None, stop_after=None) -> Measured:
    """Runs a command; returns its wall seconds, peak RSS bytes, CPU seconds
    (user + system) and stdout. With `stop_after` (seconds), a command still
    running then gets SIGTERM (as an operator's Ctrl-C or systemd would) and
    its exit code is not judged: the caller reads what it reported.

    Peak RSS and CPU come from GNU time, not from our own wait4(): Linux
    carries the forking process's RSS high-water mark across exec, so a child
    of this (large) Python process would report Python's footprint as its own."""
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("/usr/bin/time is missing: apt-get install time")
    with tempfile.NamedTemporaryFile(mode="r", suffix=".rss") as stats_file:
        started = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", stats_file.name, *argv],
                                stdout=subprocess.PIPE, env=env)
        stopped = False
        try:
            out, _ = proc.communicate(timeout=stop_after)
        except subprocess.TimeoutExpired:
            # GNU time would die of SIGTERM itself and leave its child: signal the child.
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                      text=True).stdout.split()
            for child in children:
                os.kill(int(child), signal.SIGTERM)
            stopped = True
            out, _ = proc.communicate()
        wall = time.perf_counter() - started
        if proc.returncode != 0 and not stopped:
            raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
        peak_kib, user, system = stats_file.read().strip().splitlines()[-1].split()
    return Measured(wall, int(peak_kib) * 1024, float(user) + float(system), out.decode())
