#!/usr/bin/env python3
"""Checks deploy/ against the daemon it describes (CI runs it from .ci/run).

    cargo build --release && python3 deploy/check.py

- the rules and the PrometheusRule are generated from params.yml and carry
  the same groups; `promtool check rules` and `promtool test rules` pass;
- the Grafana dashboard is valid JSON, has the datasource and node
  variables, and every panel and query reads the datasource variable;
- every metric name in every dashboard expression and every rule is in a
  real /metrics scrape: the daemon is started against a private
  redis-server holding token sets, scraped once it has swept, then once
  more after a set scored in seconds has made the unit guard refuse a sweep
  (its unit_guard series, at 0 from the start, then counts one);
  `promtool check metrics` on those scrapes reports nothing;
- the Kubernetes manifests: core kinds pass `kubernetes-validate --strict`,
  the Prometheus Operator's kinds (which it cannot know) parse with the
  right apiVersion, and every pod meets the restricted Pod Security
  Standard with a read-only root filesystem and resources set.

Every problem is printed before it exits 1, so one run names them all.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import redis_harness as h  # noqa: E402

RULES = os.path.join(ROOT, "deploy", "prometheus", "token-sweeper.rules.yml")
RULE_TESTS = os.path.join(ROOT, "deploy", "prometheus", "tests.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "token-sweeper.json")
KUBERNETES = os.path.join(ROOT, "deploy", "kubernetes")

# A metric name of the daemon in an expression: not part of a recording
# rule's name (level:metric:operations), which has colons around it.
METRIC = re.compile(r"(?<![\w:])token_sweeper_[a-zA-Z0-9_]+(?![\w:])")
# Series that Prometheus makes itself, not the daemon.
PROMETHEUS_OWN = {"up"}
# Kinds of the Prometheus Operator: kubernetes-validate has no schema for them.
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
OPERATOR_API = "monitoring.coreos.com/v1"

problems = []
quiet = False


def problem(text: str) -> None:
    problems.append(text)
    if not quiet:
        print("FAIL: " + text, file=sys.stderr)


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


# --- rules ----------------------------------------------------------------

def check_rules() -> dict:
    """Returns {metric name: [files]} for the rules."""
    gen = run([sys.executable, os.path.join(ROOT, "deploy", "prometheus", "generate.py"), "--check"])
    if gen.returncode != 0:
        problem("generate.py --check: " + (gen.stderr or gen.stdout).strip())
    for argv in (["promtool", "check", "rules", RULES], ["promtool", "test", "rules", RULE_TESTS]):
        out = run(argv, cwd=os.path.dirname(RULES))
        if out.returncode != 0:
            problem(" ".join(argv[:3]) + " failed:\n" + out.stdout + out.stderr)
        else:
            print(f"ok: {' '.join(argv[:3])}")
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    names = {}
    for group in groups:
        for rule in group["rules"]:
            for name in METRIC.findall(rule["expr"]):
                names.setdefault(name, set()).add("deploy/prometheus/token-sweeper.rules.yml")
            if re.search(r"(?<![\w:])up\{", rule["expr"]):
                names.setdefault("up", set()).add("deploy/prometheus/token-sweeper.rules.yml")
    return names


# --- dashboard ------------------------------------------------------------

def check_dashboard() -> dict:
    try:
        with open(DASHBOARD) as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        problem(f"{DASHBOARD}: not valid JSON: {e}")
        return {}
    where = "deploy/grafana/token-sweeper.json"
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problem(f"{where}: no datasource variable named datasource")
    if variables.get("node", {}).get("type") != "query":
        problem(f"{where}: no query variable named node")
    exprs = []
    for v in variables.values():
        query = v.get("query")
        if isinstance(query, dict):
            exprs.append(query.get("query", ""))
    uses_ds = lambda ds: isinstance(ds, dict) and ds.get("uid") == "${datasource}"  # noqa: E731
    for v in variables.values():
        if v.get("type") == "query" and not uses_ds(v.get("datasource")):
            problem(f"{where}: variable {v['name']} does not read the datasource variable")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    for row in dash.get("panels", []):
        panels += row.get("panels", [])
    if not panels:
        problem(f"{where}: no panels")
    for p in panels:
        if not uses_ds(p.get("datasource")):
            problem(f"{where}: panel {p.get('title')!r} does not read the datasource variable")
        if not p.get("targets"):
            problem(f"{where}: panel {p.get('title')!r} has no query")
        for t in p.get("targets", []):
            if not uses_ds(t.get("datasource")) or not t.get("expr"):
                problem(f"{where}: a query of panel {p.get('title')!r} has no expr or datasource")
            exprs.append(t.get("expr", ""))
    names = {}
    for e in exprs:
        for name in METRIC.findall(e):
            names.setdefault(name, set()).add(where)
    print(f"ok: {where} is valid JSON with {len(panels)} panels and {len(exprs)} queries")
    return names


# --- a real scrape --------------------------------------------------------

def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def wait_for(url: str, pattern: str, deadline_s: float, daemon) -> str:
    """Scrapes until `pattern` matches a line (the daemon polled, not timed:
    the deadline only bounds a daemon that never gets there)."""
    deadline = time.monotonic() + deadline_s
    text = ""
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        try:
            text = scrape(url)
            if re.search(pattern, text, re.M):
                return text
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no line matching {pattern!r} in /metrics after {deadline_s}s:\n{text}")


def real_scrapes(binary: str) -> list:
    server = h.PrivateRedis()
    try:
        now = server.now_ms()
        # Millisecond scores (the default unit): one expired member, one live.
        server.cli("ZADD", "user1-tokens", str(now - 60_000), "a" * 64, str(now + 3_600_000), "b" * 64)
        port = h.free_port()
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                   TOKEN_SWEEPER__SWEEP__INTERVAL="1s",
                   TOKEN_SWEEPER__METRICS__LISTEN=f"127.0.0.1:{port}")
        env.pop("RUST_LOG", None)
        with tempfile.TemporaryFile() as log:
            daemon = subprocess.Popen([binary, "run"], env=env, stdout=log, stderr=log)
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                healthy = wait_for(url, r'^token_sweeper_sweeps_total\{result="ok"\} [1-9]', 30, daemon)
                # A set scored in seconds: the unit guard refuses every sweep
                # from now on, and counts it.
                server.cli("ZADD", "user2-tokens", str(now // 1000 + 3600), "c" * 64)
                refused = wait_for(url, r'^token_sweeper_errors_total\{kind="unit_guard"\} [1-9]', 30, daemon)
                if server.cli("ZSCORE", "user1-tokens", "b" * 64).strip() == "":
                    problem("the daemon removed a live member during the check")
            finally:
                daemon.terminate()
                daemon.wait()
    finally:
        server.stop()
    return [healthy, refused]


def sample_names(text: str) -> set:
    return {re.split(r"[{ ]", line, 1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def check_names(referenced: dict, scrapes: list) -> None:
    available = set().union(*(sample_names(s) for s in scrapes)) | PROMETHEUS_OWN
    missing = sorted(set(referenced) - available)
    for name in missing:
        problem(f"{name} is not in a real /metrics scrape (used in {', '.join(sorted(referenced[name]))})")
    if missing:
        print("missing metric names: " + " ".join(missing), file=sys.stderr)
    else:
        print(f"ok: all {len(referenced)} metric names of the rules and the dashboard are in the scrape")
    clean = True
    for i, text in enumerate(scrapes):
        out = run(["promtool", "check", "metrics"], input=text)
        if out.returncode != 0 or out.stdout.strip() or out.stderr.strip():
            problem(f"promtool check metrics on scrape {i + 1}: {out.stdout}{out.stderr}")
            clean = False
    if clean:
        print(f"ok: promtool check metrics reports nothing on the {len(scrapes)} scrapes")


# --- Kubernetes -------------------------------------------------------------

def check_kubernetes() -> None:
    files = sorted(glob.glob(os.path.join(KUBERNETES, "*.yaml")))
    if not files:
        problem("no manifests in deploy/kubernetes")
        return
    core_docs = []
    for path in files:
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            kind = doc.get("kind")
            if kind in OPERATOR_KINDS:
                if doc.get("apiVersion") != OPERATOR_API:
                    problem(f"{rel}: {kind} has apiVersion {doc.get('apiVersion')}, not {OPERATOR_API}")
                check_operator_kind(rel, doc)
            else:
                core_docs.append(doc)
                check_pod_security(rel, doc)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(core_docs, f)
        core = f.name
    try:
        # As a module of this interpreter: pip may have put the command
        # somewhere off PATH.
        out = run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", core])
        if out.returncode != 0:
            problem("kubernetes-validate --strict:\n" + out.stdout + out.stderr)
        else:
            print(f"ok: kubernetes-validate --strict on {len(core_docs)} core resources")
    finally:
        os.unlink(core)


def check_operator_kind(rel: str, doc: dict) -> None:
    spec = doc.get("spec", {})
    kind = doc["kind"]
    if kind in ("PodMonitor", "ServiceMonitor"):
        endpoints = spec.get("podMetricsEndpoints" if kind == "PodMonitor" else "endpoints", [])
        if not endpoints or not spec.get("selector"):
            problem(f"{rel}: {kind} needs a selector and endpoints")
        for e in endpoints:
            if e.get("path", "/metrics") != "/metrics" or e.get("port") != "metrics":
                problem(f"{rel}: {kind} must scrape port 'metrics' at /metrics")
            jobs = [r for r in e.get("relabelings", []) if r.get("targetLabel") == "job"]
            if not jobs or jobs[0].get("replacement") != "token-sweeper":
                problem(f"{rel}: {kind} must set job=\"token-sweeper\" (the rules select on it)")
    if kind == "PrometheusRule" and not spec.get("groups"):
        problem(f"{rel}: PrometheusRule has no groups")


def pod_spec(doc: dict):
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc.get("spec", {}).get("template", {}).get("spec")
    return None


def check_pod_security(rel: str, doc: dict) -> None:
    """The restricted Pod Security Standard's rules, plus a read-only root
    filesystem and resources on every container."""
    spec = pod_spec(doc)
    if spec is None:
        return
    name = f"{rel}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
    psc = spec.get("securityContext", {})
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problem(f"{name}: host namespaces")
    for vol in spec.get("volumes", []):
        allowed = {"name", "configMap", "secret", "emptyDir", "projected", "downwardAPI",
                   "persistentVolumeClaim", "csi", "ephemeral"}
        if set(vol) - allowed:
            problem(f"{name}: volume {vol.get('name')} of a type the restricted standard forbids")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        sc = c.get("securityContext", {})
        where = f"{name} container {c.get('name')}"

        def pick(key):
            return sc.get(key, psc.get(key))
        if sc.get("privileged"):
            problem(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(f"{where}: allowPrivilegeEscalation must be false")
        if pick("runAsNonRoot") is not True:
            problem(f"{where}: runAsNonRoot must be true")
        if pick("runAsUser") == 0:
            problem(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problem(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"] or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problem(f"{where}: capabilities must drop ALL (and add at most NET_BIND_SERVICE)")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(f"{where}: readOnlyRootFilesystem must be true")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                problem(f"{where}: hostPort")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory") \
                or not res.get("requests", {}).get("cpu"):
            problem(f"{where}: needs a cpu request and a memory request and limit")


def controls() -> None:
    """The checks above catch what they are for: run on broken inputs,
    each must complain (otherwise a check that cannot fail passes all)."""
    global problems, quiet
    found = METRIC.findall('fleet:token_sweeper_a:max > 1 and token_sweeper_b{x="1"}[5m]')
    if found != ["token_sweeper_b"]:
        problem(f"control: metric names in an expression read as {found}")
    with open(os.path.join(KUBERNETES, "standalone.yaml")) as f:
        pod = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "Deployment")
    container = pod["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["securityContext"]["allowPrivilegeEscalation"] = True
    del container["resources"]
    container["securityContext"]["runAsNonRoot"] = False
    kept, problems, quiet = problems, [], True
    check_pod_security("control", pod)
    caught, problems, quiet = problems, kept, False
    for needle in ("readOnlyRootFilesystem", "allowPrivilegeEscalation", "cpu request", "runAsNonRoot"):
        if not any(needle in c for c in caught):
            problem(f"control: the pod security check missed a broken {needle}")
    print(f"ok: the checks catch broken inputs ({len(caught)} problems in the control Deployment)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "token-sweeper"))
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        raise SystemExit(f"{args.binary} not found: cargo build --release")
    referenced = check_rules()
    for name, files in check_dashboard().items():
        referenced.setdefault(name, set()).update(files)
    check_names(referenced, real_scrapes(args.binary))
    check_kubernetes()
    controls()
    if problems:
        print(f"deploy check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("deploy check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
