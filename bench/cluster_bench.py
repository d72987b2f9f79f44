#!/usr/bin/env python3
"""Cluster benchmark: the sweep dataset on a local 3-primary Redis Cluster,
primaries swept in parallel versus one at a time.

    python3 bench/cluster_bench.py                  # 1,000,000 users x 4 tokens
    python3 bench/cluster_bench.py --users 20000    # a quick run

Starts three cluster-enabled redis-servers on free loopback ports and joins
them with `redis-cli --cluster create`, loads the same data as
bench/sweep_bench.py split by hash slot over the primaries, and runs
`token-sweeper sweep` in cluster mode with `sweep.max_parallel_nodes` = 3 and
= 1, reloading the data before each run. Reports wall time, keys/s, each
primary's Redis main-thread busy fraction over the sweep (INFO cpu), the
sweeper's own CPU (user + system, as a fraction of one core) and its peak RSS.
Every run checks that exactly the expired members were removed and that no
primary was left unfinished.
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402

PRIMARIES = 3


def start_cluster():
    nodes = [h.PrivateRedis(extra=("--cluster-enabled", "yes",
                                   "--cluster-config-file", "nodes.conf",
                                   "--cluster-port", str(h.free_port())))
             for _ in range(PRIMARIES)]
    subprocess.run(["redis-cli", "--cluster", "create",
                    *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-yes"],
                   check=True, capture_output=True)
    for _ in range(200):
        if all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in nodes):
            return nodes
        subprocess.run(["sleep", "0.1"], check=True)
    raise SystemExit("the cluster did not become ok")


def slot_owners(node):
    """slot -> index of the owning node, from CLUSTER SLOTS as redis-cli prints it."""
    owners = {}
    lines = node.cli("CLUSTER", "SLOTS").split()
    # Flat output: start, end, ip, port, id, [start, end, ip, port, id ...]
    for i in range(0, len(lines), 5):
        start, end, port = int(lines[i]), int(lines[i + 1]), int(lines[i + 3])
        for slot in range(start, end + 1):
            owners[slot] = port
    return owners


def main() -> None:
    args = h.sweep_bench_args(__doc__)

    nodes = start_cluster()
    with h.servers_and_scratch(nodes, prefix="token-sweeper-cluster-") as workdir:
        owners = slot_owners(nodes[0])
        index = {n.port: i for i, n in enumerate(nodes)}
        files = [os.path.join(workdir, f"node{i}.resp") for i in range(PRIMARIES)]
        expired = h.write_dataset(files, args.users, args.tokens, nodes[0].now_ms(),
                                  live_ms=(3_600_000, 30 * h.DAY_MS),
                                  route=lambda key: index[owners[h.key_slot(key)]])
        env = dict(os.environ,
                   TOKEN_SWEEPER__REDIS__MODE="cluster",
                   TOKEN_SWEEPER__REDIS__URL=nodes[0].url,
                   TOKEN_SWEEPER__REDIS__NODES=",".join(n.url for n in nodes[1:]))
        rows = {}
        for parallel in (PRIMARIES, 1):
            name = ("primaries in parallel" if parallel > 1 else "one primary at a time")
            rows[name] = []
            for _ in range(args.runs):
                for node, data in zip(nodes, files):
                    node.cli("FLUSHALL")
                    h.load(node, data)
                before = [n.main_thread_cpu() for n in nodes]
                wall, rss, cpu, out = h.run_measured(
                    [args.binary, "sweep", "--json"],
                    dict(env, TOKEN_SWEEPER__SWEEP__MAX_PARALLEL_NODES=str(parallel)))
                busy = [(n.main_thread_cpu() - b) / wall for n, b in zip(nodes, before)]
                report = json.loads(out)
                if report["members_removed"] != expired or report["unfinished_nodes"]:
                    raise SystemExit(f"{name}: removed {report['members_removed']} of "
                                     f"{expired}, unfinished {report['unfinished_nodes']}")
                if sum(n.dbsize() for n in nodes) != args.users:
                    raise SystemExit(f"{name}: sets lost")
                rows[name].append((wall, rss, busy, cpu / wall))

    print(f"dataset: {args.users:,} users x {args.tokens} tokens, {expired:,} expired, "
          f"on {PRIMARIES} primaries; {args.runs} run(s), medians; {os.cpu_count()} cores")
    print("| sweep | wall s | keys/s | Redis busy per primary | sweeper CPU | peak RSS MB |")
    print("|---|---:|---:|---|---:|---:|")
    for name, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        busy = [statistics.median(r[2][i] for r in runs) for i in range(PRIMARIES)]
        cpu = statistics.median(r[3] for r in runs)
        print(f"| {name} | {wall:.2f} | {args.users / wall:,.0f} | "
              f"{' / '.join(f'{b:.0%}' for b in busy)} | {cpu:.0%} | {rss / 1e6:.1f} |")


if __name__ == "__main__":
    main()
