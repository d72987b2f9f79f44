#!/usr/bin/env python3
"""Latency impact benchmark: what a sweep costs the other clients of its Redis.

    cargo build --release --example latency_probe && cargo build --release
    python3 bench/latency_bench.py --runs 3             # 1,000,000 users x 4 tokens
    python3 bench/latency_bench.py --users 20000 --runs 1 --idle-seconds 1   # CI smoke

A private redis-server (no persistence) holds N users x 4 tokens, half
expired. An open-loop probe (bench/latency_probe.rs) sends one ZSCORE every
0.5 ms on its own connection; each latency is measured from when the request
was due, so a late sender or a backlog counts in full. Phases, each on a
fresh load of the same data: idle; the default (adaptive) sweep; the
`--throttle off` sweep; the reference peer; then the same with a background
load keeping the Redis main thread about 70% busy (calibrated per run from
INFO `used_cpu_*_main_thread`): idle under load, default sweep under load,
off sweep under load. Reports per phase the probe's p50/p99/p99.9, the
sweep's wall time, the Redis main thread's CPU over the phase, the sweeper's
peak RSS, as a markdown table (medians of --runs; RSS is the largest), and
PASS/FAIL per target of issue #13. Exits 1 on a FAIL only with --check.

A binary without `sweep --throttle` (before the adaptive throttle) sweeps as
"off" does; its adaptive phases are skipped and say so.
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as h  # noqa: E402
from sweep_bench import check_left  # noqa: E402

PROBE = os.path.join(h.ROOT, "target/release/examples/latency_probe")
BUSY_TARGET = 0.70


class Traffic:
    """A latency_probe process (`probe` or `load`) on the private Redis,
    driven line by line on its stdin."""

    def __init__(self, mode: str, server, users: int, realtime: bool = False) -> None:
        self.proc = subprocess.Popen([PROBE, mode, str(server.port), str(users)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=fifo if realtime else None)

    def say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> dict:
        out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            raise SystemExit(f"latency_probe failed with exit code {self.proc.returncode}")
        return json.loads(out)


class MainThread:
    """The Redis main thread's CPU seconds (INFO cpu) over a stretch of time,
    read on one open connection: a redis-cli per reading would add its own
    start-up (milliseconds) to short phases."""

    def __init__(self, server) -> None:
        import redis
        self.conn = redis.Redis(port=server.port)

    def _cpu(self) -> tuple:
        info = self.conn.info("cpu")
        return (time.perf_counter(),
                info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"])

    def start(self) -> None:
        self.began = self._cpu()

    def busy(self) -> float:
        """CPU seconds per second since start()."""
        now, cpu = self._cpu()
        return (cpu - self.began[1]) / (now - self.began[0])


def fifo() -> None:
    """Runs the probe under SCHED_FIFO (its threads inherit it): on a machine
    whose cores the sweeper, Redis and whatever else runs there also want,
    the probe should measure how long Redis kept it waiting, not how long the
    kernel kept the probe off a core. It sleeps almost all the time, so it
    takes nothing from the others."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


def can_fifo() -> bool:
    try:
        out = subprocess.run(["true"], preexec_fn=fifo)
        return out.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def main_thread_busy(server, seconds: float) -> float:
    meter = MainThread(server)
    meter.start()
    time.sleep(seconds)
    return meter.busy()


def calibrate(server, load: Traffic) -> tuple:
    """Finds the load's rate (ZSCORE/s) that keeps the Redis main thread
    about 70% busy. The rate is set from Redis's measured CPU per command
    (INFO cpu over INFO stats), not scaled by busy alone: when the machine
    cannot give Redis the CPU, scaling would raise the rate without end."""
    import redis
    conn = redis.Redis(port=server.port)

    def reading():
        cpu, stats = conn.info("cpu"), conn.info("stats")
        return (time.perf_counter(), cpu["used_cpu_user_main_thread"]
                + cpu["used_cpu_sys_main_thread"], stats["total_commands_processed"])

    rate, busy = 200_000, 0.0
    for _ in range(5):
        load.say(f"rate {rate}")
        time.sleep(0.5)
        t0, cpu0, cmds0 = reading()
        time.sleep(1.5)
        t1, cpu1, cmds1 = reading()
        busy = (cpu1 - cpu0) / (t1 - t0)
        if abs(busy - BUSY_TARGET) < 0.04 or cmds1 <= cmds0:
            break
        per_command = (cpu1 - cpu0) / (cmds1 - cmds0)
        rate = int(min(BUSY_TARGET / per_command, 4 * rate))
    load.say("rate 0")
    return rate, busy


def throttle_flag(binary: str) -> bool:
    """Whether this binary's one-shot sweep takes --throttle."""
    out = subprocess.run([binary, "sweep", "--help"], capture_output=True, text=True)
    return "--throttle" in out.stdout


def throttle_fields(report: dict) -> dict:
    """What `sweep --json` says about throttling and falling behind, whatever
    the fields are called (none before the throttle)."""
    return {k: v for k, v in report.items() if "throttl" in k or "behind" in k}


def check_live(server, tokens, now_ms):
    """After a sweep stopped part-way: a sample of sets still holds every
    live member (expired ones may remain)."""
    live = tokens - tokens // 2
    for _ in range(200):
        key = server.cli("RANDOMKEY").strip()
        left = int(server.cli("ZCOUNT", key, f"({now_ms}", "+inf"))
        if left != live:
            raise SystemExit(f"{key} has {left} live members, expected {live}")


def run_phase(server, args, data, expired, sweep, load=None, rate=0, stop_after=None):
    """Reloads the data, then runs `sweep` (None: sleep --idle-seconds; else
    (kind, argv, env) of a sweeper or the peer; stopped with SIGTERM after
    `stop_after` seconds if given) while the probe runs, and checks what it
    removed; returns the phase's numbers."""
    if load:
        load.say("rate 0")
    server.cli("FLUSHALL")
    h.load(server, data)
    if load:
        load.say(f"rate {rate}")
        time.sleep(1.0)  # let the load reach its pace before measuring
    probe = Traffic("probe", server, args.users, args.realtime)
    time.sleep(0.3)  # connected and on schedule before the window opens
    probe.say("mark")
    row = {"wall": None, "rss": None, "extra": {}}
    meter = MainThread(server)
    meter.start()
    if sweep is None:
        time.sleep(args.idle_seconds)
    else:
        row["wall"], row["rss"], _cpu, out = h.run_measured(sweep[1], sweep[2], stop_after)
    row["busy"] = meter.busy()
    finished = True
    if sweep is not None:
        removed = json.loads(out)["members_removed"] if sweep[0] == "sweeper" else int(out)
        finished = not (sweep[0] == "sweeper" and json.loads(out).get("interrupted"))
        if removed != expired and finished:
            raise SystemExit(f"{sweep[1][0]} removed {removed}, expected {expired}")
        if sweep[0] == "sweeper":
            row["extra"] = throttle_fields(json.loads(out))
        row["removed"] = removed
        row["finished"] = finished
    probe.say("mark")
    report = probe.finish()
    if sweep is not None:
        if finished:
            check_left(server, args.users, args.tokens)
        else:
            check_live(server, args.tokens, server.now_ms())
    if report["errors"]:
        raise SystemExit(f"the probe got {report['errors']} error replies")
    window = report["windows"][1]
    row.update(p50=window["p50"], p99=window["p99"], p999=window["p999"],
               n=window["n"], lag99=report["send_lag"]["p99"])
    return row


def main() -> None:
    args = h.sweep_bench_args(
        __doc__,
        ("--idle-seconds", dict(type=float, default=5.0, help="length of each idle phase")),
        ("--no-busy", dict(action="store_true", help="skip the phases under background load")),
        ("--busy-seconds", dict(type=float, default=60.0,
                                help="the default sweep under load is stopped (SIGTERM) after "
                                     "this long: it is judged on its pace and progress, not on "
                                     "finishing (at its floor, 1M users take many minutes)")),
        ("--sweeper-env", dict(action="append", default=[], metavar="KEY=VALUE",
                               help="extra environment for every sweep, e.g. "
                                    "TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND=50000")),
        ("--normal-priority", dict(action="store_true",
                                   help="run the probe at normal priority, not SCHED_FIFO")),
        ("--check", dict(action="store_true", help="exit 1 if a target is missed")))
    if not os.path.exists(PROBE):
        raise SystemExit(f"{PROBE} not found: cargo build --release --example latency_probe")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise SystemExit("the reference peer needs redis-py: pip install redis")
    has_throttle = throttle_flag(args.binary)
    args.realtime = not args.normal_priority and can_fifo()
    if not args.normal_priority and not args.realtime:
        print("cannot run the probe under SCHED_FIFO (needs CAP_SYS_NICE): normal priority")
    if not has_throttle:
        print(f"{args.binary} has no `sweep --throttle` (built before the adaptive throttle): "
              "skipping the default-sweep phases; its plain sweep is the `off` phase")

    server = h.PrivateRedis()
    rows, busy_load = {}, []
    with h.servers_and_scratch([server], prefix="token-sweeper-latency-") as workdir:
        data = os.path.join(workdir, "data.resp")
        # Live tokens expire an hour or more from now: reloads never turn one expired.
        expired = h.write_dataset(data, args.users, args.tokens, server.now_ms(),
                                  live_ms=(3_600_000, 30 * h.DAY_MS))
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                   TOKEN_SWEEPER__SWEEP__PATTERN="*-tokens")
        for pair in args.sweeper_env:
            key, sep, value = pair.partition("=")
            if not sep or not key.startswith("TOKEN_SWEEPER__"):
                raise SystemExit(f"--sweeper-env wants TOKEN_SWEEPER__SECTION__KEY=VALUE: {pair}")
            env[key] = value
        sweep = [args.binary, "sweep", "--json"]
        default = ("sweeper", sweep + ["--throttle", "adaptive"], env) if has_throttle else None
        off = ("sweeper", sweep + (["--throttle", "off"] if has_throttle else []), env)
        peer = ("peer", [sys.executable, os.path.join(h.ROOT, "bench/reference_peer.py"),
                         server.url, "*-tokens", str(server.now_ms())], None)
        quiet = [("idle", None), ("default sweep", default), ("off sweep", off),
                 ("reference peer", peer)]
        busy = [("idle, busy", None), ("default sweep, busy", default), ("off sweep, busy", off)]
        for run in range(args.runs):
            for name, phase in quiet:
                if name == "idle" or phase:
                    rows.setdefault(name, []).append(run_phase(server, args, data, expired, phase))
            if args.no_busy:
                continue
            load = Traffic("load", server, args.users)
            try:
                server.cli("FLUSHALL")
                h.load(server, data)
                rate, reached = calibrate(server, load)
                busy_load.append((rate, reached))
                for name, phase in busy:
                    if name.startswith("idle") or phase:
                        stop_after = args.busy_seconds if name == "default sweep, busy" else None
                        rows.setdefault(name, []).append(
                            run_phase(server, args, data, expired, phase, load, rate, stop_after))
            finally:
                done = load.finish()
            if done["skipped"]:
                # Redis fell 200,000 commands behind it: the load was heavier than calibrated.
                print(f"the background load skipped {done['skipped']:,} of "
                      f"{done['sent'] + done['skipped']:,} commands", file=sys.stderr)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    report(args, expired, has_throttle, rows, busy_load)


def median(runs, key):
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def report(args, expired, has_throttle, rows, busy_load) -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\ndataset: {args.users:,} users x {args.tokens} tokens, {expired:,} expired; "
          f"probe: 1 ZSCORE / 0.5 ms, open loop, "
          f"{'SCHED_FIFO' if args.realtime else 'normal priority'}; {args.runs} run(s), medians; "
          f"{os.cpu_count()} cores; {load}")
    for rate, reached in busy_load:
        print(f"background load: {rate:,} ZSCORE/s, Redis main thread {reached:.0%} busy")
    print("\n| phase | probe p50 ms | probe p99 ms | probe p99.9 ms | sweep s "
          "| Redis main thread | sweeper peak RSS MB | probe send lag p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for name, runs in rows.items():
        med[name] = {k: median(runs, k) for k in ("p50", "p99", "p999", "wall", "busy", "lag99")}
        rss = [r["rss"] for r in runs if r["rss"] is not None]
        med[name]["rss"] = max(rss) if rss else None
        m = med[name]
        wall = f"{m['wall']:.2f}" if m["wall"] is not None else "—"
        rss = f"{m['rss'] / 1e6:.1f}" if m["rss"] is not None else "—"
        print(f"| {name} | {m['p50']:.2f} | {m['p99']:.2f} | {m['p999']:.2f} | {wall} "
              f"| {m['busy']:.0%} | {rss} | {m['lag99']:.2f} |")
    for name, runs in rows.items():
        extra = [r["extra"] for r in runs if r["extra"]]
        if extra:
            print(f"{name}: {json.dumps(extra)}")
    if "default sweep, busy" in med:
        for r in rows["default sweep, busy"]:
            done = "finished, every expired member removed" if r["finished"] else (
                f"stopped after {args.busy_seconds:.0f} s as planned, every live member kept")
            print(f"default sweep under load: removed {r['removed']:,} of {expired:,} expired "
                  f"members in {r['wall']:.1f} s, {r['removed'] / r['wall']:,.0f} members/s ({done})")
        med["default sweep, busy"]["progress"] = min(r["removed"] for r in rows["default sweep, busy"])

    checks = targets(med, has_throttle)
    print()
    for verdict, text in checks:
        print(f"{verdict}: {text}")
    if args.check and any(v == "FAIL" for v, _ in checks):
        raise SystemExit(1)


def targets(med, has_throttle) -> list:
    """Issue #13's targets: (PASS|FAIL|SKIP, description) each."""
    out = []

    def check(ok, text):
        out.append(("PASS" if ok else "FAIL", text))

    def ratio(a, b):
        return med[a]["p99"] / med[b]["p99"]

    peer = med.get("reference peer")
    if has_throttle:
        d = med["default sweep"]
        check(ratio("default sweep", "idle") <= 2.0,
              f"default sweep probe p99 {d['p99']:.2f} ms = "
              f"{ratio('default sweep', 'idle'):.2f}x idle (target <= 2x)")
        check(d["wall"] <= peer["wall"],
              f"default sweep {d['wall']:.2f} s vs reference peer {peer['wall']:.2f} s "
              f"(target: no slower)")
        if "default sweep, busy" in med:
            check(ratio("default sweep, busy", "idle, busy") <= 2.5,
                  f"default sweep under load probe p99 = "
                  f"{ratio('default sweep, busy', 'idle, busy'):.2f}x idle under load "
                  f"(target <= 2.5x)")
            check(med["default sweep, busy"]["progress"] > 0,
                  "default sweep under load progresses (removed members in every run)")
    else:
        out.append(("SKIP", "default (adaptive) sweep targets: this binary has no --throttle"))
    o = med["off sweep"]
    check(o["wall"] <= 0.5 * peer["wall"],
          f"off sweep {o['wall']:.2f} s = {o['wall'] / peer['wall']:.2f}x the peer's "
          f"(target <= 0.5x)")
    check(o["busy"] >= 0.80, f"off sweep keeps Redis {o['busy']:.0%} busy (target >= 80%)")
    check(o["rss"] <= 25e6, f"off sweep peak RSS {o['rss'] / 1e6:.1f} MB (target <= 25 MB)")
    return out


if __name__ == "__main__":
    main()
