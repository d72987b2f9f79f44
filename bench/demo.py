#!/usr/bin/env python3
"""The Quick start demo: a sweep against a private redis-server seeded with
demo token sets. Never touches a Redis it did not start."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USERS, TOKENS = 10_000, 4


def main() -> None:
    binary = os.path.join(ROOT, "target/release/token-sweeper")
    server = h.PrivateRedis()
    try:
        with tempfile.NamedTemporaryFile(suffix=".resp") as data:
            expired = h.write_dataset(data.name, USERS, TOKENS, server.now_ms())
            h.load(server, data.name)
        print(f"private redis-server on {server.url} (pid {server.proc.pid}), seeded with "
              f"{USERS:,} users x {TOKENS} tokens, {expired:,} of them expired\n")
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url)
        for args in (["sweep", "--dry-run"], ["sweep"], ["sweep"]):
            print("$ token-sweeper " + " ".join(args))
            subprocess.run([binary, *args], env=env, check=True)
            print()
    finally:
        server.stop()
    print("stopped the private redis-server")


if __name__ == "__main__":
    main()
