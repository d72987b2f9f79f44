#!/usr/bin/env python3
"""The Quick start demo: the daemon against a private redis-server seeded
with demo token sets whose live tokens expire over the next two minutes, so
every periodic sweep removes some. Never touches a Redis it did not start.

    python3 bench/demo.py [--seconds N]     # default: until Ctrl-C
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USERS, TOKENS = 10_000, 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=0, help="stop after this long (0: Ctrl-C)")
    args = ap.parse_args()
    binary = os.path.join(ROOT, "target/release/token-sweeper")
    server = h.PrivateRedis()
    daemon = None
    try:
        with tempfile.NamedTemporaryFile(suffix=".resp") as data:
            expired = h.write_dataset(data.name, USERS, TOKENS, server.now_ms(),
                                      live_ms=(1_000, 120_000))
            h.load(server, data.name)
        metrics = f"127.0.0.1:{h.free_port()}"
        print(f"private redis-server on {server.url}, seeded with {USERS:,} users x {TOKENS} "
              f"tokens: {expired:,} expired, the rest expiring within 2 minutes")
        print(f"token-sweeper run: a sweep every 5s; metrics at http://{metrics}/metrics "
              f"(also /healthz, /readyz). Ctrl-C stops both.\n", flush=True)
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                   TOKEN_SWEEPER__SWEEP__INTERVAL="5s",
                   TOKEN_SWEEPER__METRICS__LISTEN=metrics)
        daemon = subprocess.Popen([binary, "run"], env=env)
        try:
            daemon.wait(timeout=args.seconds or None)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            pass  # the daemon got the same SIGINT and is shutting down
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
        server.stop()
    print("\nstopped the daemon and the private redis-server")


if __name__ == "__main__":
    main()
