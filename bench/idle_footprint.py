#!/usr/bin/env python3
"""Idle footprint of the daemon between sweeps.

    cargo build --release && python3 bench/idle_footprint.py [--seconds 60]

Starts a private redis-server with 10,000 demo users, runs `token-sweeper run`
(interval 1h, so after the start-up sweep it only waits), lets it settle, then
reports the CPU it used over --seconds (utime+stime from /proc) and its RSS.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/token-sweeper"))
    args = ap.parse_args()
    server = h.PrivateRedis()
    try:
        with tempfile.NamedTemporaryFile(suffix=".resp") as data:
            h.write_dataset(data.name, 10_000, 4, server.now_ms())
            h.load(server, data.name)
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                   TOKEN_SWEEPER__SWEEP__INTERVAL="1h",
                   TOKEN_SWEEPER__METRICS__LISTEN=f"127.0.0.1:{h.free_port()}")
        daemon = subprocess.Popen([args.binary, "run"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)  # the start-up sweep is done by then
            cpu_before = cpu_seconds(daemon.pid)
            time.sleep(args.seconds)
            used = cpu_seconds(daemon.pid) - cpu_before
            rss, hwm = status(daemon.pid, "VmRSS"), status(daemon.pid, "VmHWM")
        finally:
            daemon.terminate()
            daemon.wait()
    finally:
        server.stop()
    print(f"idle {args.seconds}s: CPU {used:.2f}s ({used / args.seconds:.3%} of one core), "
          f"RSS {rss / 1e6:.1f} MB (peak {hwm / 1e6:.1f} MB, including the start-up sweep "
          f"of 10,000 users)")


if __name__ == "__main__":
    main()
