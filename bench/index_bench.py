#!/usr/bin/env python3
"""Due index benchmark: an index sweep against a full scan on the same data.

    python3 bench/index_bench.py --runs 3          # 1,000,000 users x 4 tokens
    python3 bench/index_bench.py --users 20000     # the CI smoke run

Starts a private redis-server on a free loopback port. The data: N users x
M tokens (millisecond scores), every token live (1 hour to 30 days ahead)
except one expired token (1 minute to 30 days ago) for 1% of the users.
The index entries are written by the data load, as logins maintain them
(one `ZADD <index key> LT <earliest score> <key>` per user, the steady
state: an expired token's entry is due). Per run, each mode on a fresh
load of the same data:

- full scan: `token-sweeper sweep --json --throttle off`, due index off;
- index: the same with `sweep.due_index.enabled`.

Reports medians of wall time and Redis main-thread CPU (INFO cpu) per
sweep and their ratio (target: index >= 20x cheaper in Redis CPU); checks
that both removed exactly the expired members, the same number, and that
what is left is the same (DEBUG DIGEST of the keyspace without the index
keys). Also: the memory the index costs (INFO used_memory with and without
the entries, per user), `token-sweeper index rebuild` on the same data
(wall, Redis CPU, entries), and the login cost (`TokenService::issue`
throughput with the index off and on: bench/issue_bench.rs).
"""
import json
import os
import random
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402

PREFIX = b"token-sweeper:due:"


def slot_tags():
    """For each slot, the smallest decimal integer whose key slot it is."""
    tags = [None] * 16384
    missing, n = 16384, 0
    while missing:
        slot = h.key_slot(b"%d" % n)
        if tags[slot] is None:
            tags[slot] = n
            missing -= 1
        n += 1
    return tags


def write_data(data_path, index_path, users, tokens, now_ms, seed=42):
    """The sets (data_path) and their index entries (index_path); returns
    the number of expired members."""
    rng = random.Random(seed)
    tags = slot_tags()
    expired = 0
    with open(data_path, "wb") as data, open(index_path, "wb") as index:
        sets, entries = [], []
        for user in range(users):
            key = b"user%d-tokens" % user
            scores = [now_ms + rng.randint(3_600_000, 30 * h.DAY_MS) for _ in range(tokens)]
            if rng.random() < 0.01:
                scores[0] = now_ms - rng.randint(60_000, 30 * h.DAY_MS)
                expired += 1
            parts = [b"ZADD", key]
            for score in scores:
                parts += [b"%d" % score, b"%064x" % rng.getrandbits(256)]
            sets.append(h.resp(*parts))
            index_key = PREFIX + b"{%d}" % tags[h.key_slot(key)]
            entries.append(h.resp(b"ZADD", index_key, b"LT", b"%d" % min(scores), key))
            if len(sets) == 10_000:
                data.write(b"".join(sets))
                index.write(b"".join(entries))
                sets, entries = [], []
        data.write(b"".join(sets))
        index.write(b"".join(entries))
    return expired


def used_memory(server):
    fields = dict(line.split(":", 1) for line in server.cli("INFO", "memory").splitlines()
                  if ":" in line)
    return int(fields["used_memory"])


def drop_index(server):
    """Deletes the index keys (and a rebuild's cursor), so that the
    keyspace digest compares the user sets alone."""
    keys = subprocess.run(["redis-cli", "-p", str(server.port), "--scan", "--pattern",
                           PREFIX.decode() + "*"], capture_output=True, text=True,
                          check=True).stdout.split()
    for i in range(0, len(keys), 1000):
        server.cli("DEL", *keys[i:i + 1000])


def measure(server, argv, env):
    cpu_before = server.main_thread_cpu()
    wall, _rss, _cpu, out = h.run_measured(argv, env)
    return wall, server.main_thread_cpu() - cpu_before, json.loads(out)


def main() -> None:
    args = h.sweep_bench_args(
        __doc__,
        ("--issue-seconds", dict(type=int, default=3, help="per mode of the login bench")),
        ("--check-targets", dict(action="store_true",
                                 help="exit 1 unless the index sweep is >= 20x cheaper in "
                                      "Redis CPU")))
    issue_bench = os.path.join(os.path.dirname(args.binary), "examples/issue_bench")
    if not os.path.exists(issue_bench):
        raise SystemExit(f"{issue_bench} not found: cargo build --release --example issue_bench")
    server = h.PrivateRedis(extra=("--enable-debug-command", "local"))
    with h.servers_and_scratch([server], prefix="token-sweeper-index-") as workdir:
        data = os.path.join(workdir, "data.resp")
        index = os.path.join(workdir, "index.resp")
        expired = write_data(data, index, args.users, args.tokens, server.now_ms())
        base = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                    TOKEN_SWEEPER__SWEEP__PATTERN="*-tokens")
        modes = {
            "full scan": dict(base, TOKEN_SWEEPER__SWEEP__DUE_INDEX__ENABLED="false"),
            "index": dict(base, TOKEN_SWEEPER__SWEEP__DUE_INDEX__ENABLED="true"),
        }
        rows = {name: [] for name in modes}
        digests = set()
        memory = None
        for _ in range(args.runs):
            for name, env in modes.items():
                server.cli("FLUSHALL")
                h.load(server, data)
                if name == "index":
                    before = used_memory(server)
                    h.load(server, index)
                    memory = used_memory(server) - before
                # Unthrottled: the throttle's probe and pauses are not the
                # cost compared here (the index sweep does not throttle).
                wall, cpu, report = measure(
                    server, [args.binary, "sweep", "--json", "--throttle", "off"], env)
                if report["members_removed"] != expired:
                    raise SystemExit(f"{name}: removed {report['members_removed']}, "
                                     f"expected {expired}")
                drop_index(server)
                if server.dbsize() != args.users:
                    raise SystemExit(f"{name}: {server.dbsize()} keys left, not {args.users}")
                digests.add(server.cli("DEBUG", "DIGEST").strip())
                rows[name].append((wall, cpu, report["members_removed"]))
        if len(digests) != 1:
            raise SystemExit(f"the modes left different data: digests {digests}")

        # The migration tool on the same data, without entries.
        server.cli("FLUSHALL")
        h.load(server, data)
        wall, cpu, rebuild = measure(
            server, [args.binary, "index", "rebuild", "--json", "--keys-per-second", "0"],
            modes["index"])
        if not rebuild["complete"] or rebuild["entries_lowered"] != args.users:
            raise SystemExit(f"index rebuild: {rebuild}")
        rebuilt = (wall, cpu, rebuild["entries_lowered"])

        server.cli("FLUSHALL")
        out = subprocess.run([issue_bench, server.url, str(args.issue_seconds)],
                             capture_output=True, text=True, check=True).stdout
        issue = {row["index"]: row
                 for row in (json.loads(line) for line in out.splitlines() if line.strip())}
    print_results(args, expired, rows, memory, rebuilt, issue)


def print_results(args, expired, rows, memory, rebuilt, issue):
    print(f"dataset: {args.users:,} users x {args.tokens} tokens, {expired:,} expired "
          f"(1% of users); {args.runs} run(s), medians; {os.cpu_count()} cores")
    print("| sweep | wall s | Redis CPU s | members removed |")
    print("|---|---:|---:|---:|")
    medians = {}
    for name, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        medians[name] = (wall, cpu)
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {runs[0][2]:,} |")
    cpu_ratio = medians["full scan"][1] / max(medians["index"][1], 1e-6)
    wall_ratio = medians["full scan"][0] / max(medians["index"][0], 1e-6)
    print(f"index vs full scan: {cpu_ratio:.1f}x less Redis CPU, {wall_ratio:.1f}x less wall "
          "time; same members removed, same data left (DEBUG DIGEST)")
    print(f"index memory: {memory / 1e6:.1f} MB, {memory / args.users:.0f} bytes per user")
    print(f"index rebuild: {rebuilt[2]:,} entries in {rebuilt[0]:.2f}s wall, "
          f"{rebuilt[1]:.2f}s Redis CPU (unpaced)")
    off, on = issue[False], issue[True]
    print(f"login (TokenService::issue, {off['callers']} callers): "
          f"{off['issues_per_second']:,.0f}/s index off (p50 {off['p50_us']:.0f} us), "
          f"{on['issues_per_second']:,.0f}/s index on (p50 {on['p50_us']:.0f} us): "
          f"{on['issues_per_second'] / off['issues_per_second']:.2f}x")
    if args.check_targets:
        if cpu_ratio < 20:
            raise SystemExit(f"target missed: index only {cpu_ratio:.1f}x cheaper in Redis CPU")
        print("targets met")


if __name__ == "__main__":
    main()
