#!/usr/bin/env python3
"""Sweep benchmark: token-sweeper against the reference peer on the same data.

    python3 bench/sweep_bench.py                  # 1,000,000 users x 4 tokens
    python3 bench/sweep_bench.py --users 20000    # the CI smoke run

Starts a private redis-server on a free loopback port, loads N users x M
tokens (half expired, millisecond scores), runs `token-sweeper sweep`, reloads
the same data and runs bench/reference_peer.py. Reports wall time, keys/s,
members removed/s, the Redis main thread's CPU busy fraction over the sweep
(INFO cpu) and each sweeper's peak RSS. Every run checks that exactly the
expired members were removed.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402



def measure(server, argv, env=None):
    cpu_before = server.main_thread_cpu()
    wall, rss, _cpu, out = h.run_measured(argv, env)
    busy = (server.main_thread_cpu() - cpu_before) / wall
    return wall, rss, busy, out


def check_left(server, users, tokens):
    """Every set still exists, and a sample of them holds exactly its live half."""
    if server.dbsize() != users:
        raise SystemExit(f"expected {users} keys after the sweep, found {server.dbsize()}")
    live = tokens - tokens // 2
    for _ in range(200):
        key = server.cli("RANDOMKEY").strip()
        left = int(server.cli("ZCARD", key))
        if left != live:
            raise SystemExit(f"{key} has {left} members left, expected {live}")


def main() -> None:
    args = h.sweep_bench_args(
        __doc__,
        ("--no-peer", dict(action="store_true", help="skip the reference peer")),
        ("--check-targets", dict(
            action="store_true",
            help="exit 1 unless wall <= 0.5x peer, Redis busy >= 80%%, RSS <= 25 MB")))
    if not args.no_peer:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise SystemExit("the reference peer needs redis-py: pip install redis")

    server = h.PrivateRedis()
    with h.servers_and_scratch([server], prefix="token-sweeper-data-") as workdir:
        data = os.path.join(workdir, "data.resp")
        # Live tokens expire an hour or more from now, so that reloading the
        # same data for later runs never turns a "live" token into an expired one.
        expired = h.write_dataset(data, args.users, args.tokens, server.now_ms(),
                                  live_ms=(3_600_000, 30 * h.DAY_MS))
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                   TOKEN_SWEEPER__SWEEP__PATTERN="*-tokens")
        rows = {"token-sweeper": [], "reference peer": []}
        for _ in range(args.runs):
            server.cli("FLUSHALL")
            h.load(server, data)
            wall, rss, busy, out = measure(server, [args.binary, "sweep", "--json"], env)
            report = json.loads(out)
            if report["members_removed"] != expired:
                raise SystemExit(f"token-sweeper removed {report['members_removed']}, "
                                 f"expected {expired}")
            check_left(server, args.users, args.tokens)
            rows["token-sweeper"].append((wall, rss, busy))

            if args.no_peer:
                continue
            server.cli("FLUSHALL")
            h.load(server, data)
            peer = [sys.executable, os.path.join(h.ROOT, "bench/reference_peer.py"),
                    server.url, "*-tokens", str(server.now_ms())]
            wall, rss, busy, out = measure(server, peer)
            if int(out) != expired:
                raise SystemExit(f"reference peer removed {out.strip()}, expected {expired}")
            check_left(server, args.users, args.tokens)
            rows["reference peer"].append((wall, rss, busy))

    print(f"dataset: {args.users:,} users x {args.tokens} tokens, {expired:,} expired; "
          f"{args.runs} run(s), medians; {os.cpu_count()} cores")
    print("| sweeper | wall s | keys/s | removed/s | Redis busy | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for name, runs in rows.items():
        if not runs:
            continue
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        busy = statistics.median(r[2] for r in runs)
        medians[name] = (wall, rss, busy)
        print(f"| {name} | {wall:.2f} | {args.users / wall:,.0f} | {expired / wall:,.0f} "
              f"| {busy:.0%} | {rss / 1e6:.1f} |")
    if "reference peer" in medians:
        ratio = medians["token-sweeper"][0] / medians["reference peer"][0]
        print(f"wall time ratio token-sweeper / peer: {ratio:.2f}x")
    if args.check_targets:
        wall, rss, busy = medians["token-sweeper"]
        failed = []
        if "reference peer" in medians and wall > 0.5 * medians["reference peer"][0]:
            failed.append("wall time > 0.5x peer")
        if busy < 0.80:
            failed.append(f"Redis busy {busy:.0%} < 80%")
        if rss > 25e6:
            failed.append(f"peak RSS {rss / 1e6:.1f} MB > 25 MB")
        if failed:
            raise SystemExit("targets missed: " + "; ".join(failed))
        print("targets met")


if __name__ == "__main__":
    main()
