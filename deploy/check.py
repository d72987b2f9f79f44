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
  (its unit_guard series, at 0 from the start, then counts one), and
  once more from a daemon in index mode (its due index series), and once
  while its full scan runs;
  `promtool check metrics` on those scrapes reports nothing;
- the Kubernetes manifests: core kinds pass `kubernetes-validate --strict`,
  the Prometheus Operator's kinds (which it cannot know) parse with the
  right apiVersion, and every pod meets the restricted Pod Security
  Standards with a read-only root filesystem and resources set; no
  environment variable named like a secret (PASSWORD, SECRET, TOKEN after
  the TOKEN_SWEEPER__ prefix) has a plain value, nor a Redis URL a password;
  the PodMonitor selects every pod with a metrics port, the ServiceMonitor a
  Service with one, and each Service's selector those pods; every probe asks
  a path the daemon serves (read from its router) on a port the container has.

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
# The daemon's router: the paths it serves are read from it, so a probe of
# a path it does not serve (a 404: the pod never ready, or restarted
# forever) fails here rather than in a cluster.
ROUTER = os.path.join(ROOT, "src", "metrics", "readiness.rs")
# After the TOKEN_SWEEPER__ prefix (whose TOKEN is the project's name): a
# variable holding a secret. *_FILE names a path to one, which is fine.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN")
# redis://user:password@host or redis://:password@host: a secret in the URL.
URL_PASSWORD = re.compile(r"^rediss?(\+sentinel|\+cluster)?://[^/@]*:[^/@]+@")

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
    if variables.get("namespace", {}).get("type") != "query":
        problem(f"{where}: no query variable named namespace")
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
    # The job and namespace variables' own queries are what sets the scope.
    scoped = [e for e in exprs if not re.search(r"label_values\(.*, (job|namespace)\)$", e)]
    check_fleet_scope(where, scoped)
    names = {}
    for e in exprs:
        for name in METRIC.findall(e):
            names.setdefault(name, set()).add(where)
    print(f"ok: {where} is valid JSON with {len(panels)} panels and {len(exprs)} queries")
    return names


def check_fleet_scope(where: str, exprs: list) -> None:
    """Every selector of the daemon's series is scoped by the job and
    namespace variables, and every "last success" is taken per fleet (job
    and namespace): a max() across fleets shows the healthy one's success
    and hides a fleet that stopped in another namespace."""
    for e in exprs:
        for selector in re.findall(r"(?<![\w:])token_sweeper_\w+(\{[^}]*\})?", e):
            if 'job=~"$job"' not in selector or 'namespace=~"$namespace"' not in selector:
                problem(f"{where}: {e!r}: a selector without job=~\"$job\" and namespace=~\"$namespace\"")
        for group in re.findall(r"max(?: by \(([^)]*)\))? ?\(token_sweeper_(?:node_)?last_success", e):
            if not {"job", "namespace"} <= {g.strip() for g in group.split(",")}:
                problem(f"{where}: {e!r}: a last success not taken by (job, namespace)")


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
        # Enough sets, swept slowly enough (100 keys/s), that a sweep outlasts
        # the adaptive throttle's first decision windows (250 ms): its signal
        # gauge exists only once its probe has measured something.
        server.cli("EVAL", "for i = 1, 300 do redis.call('ZADD', 'pad' .. i .. '-tokens', ARGV[1], 'm') end",
                   "0", str(now - 60_000))
        port = h.free_port()
        env = dict(os.environ, TOKEN_SWEEPER__REDIS__URL=server.url,
                   TOKEN_SWEEPER__SWEEP__INTERVAL="1s",
                   TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND="100",
                   TOKEN_SWEEPER__METRICS__LISTEN=f"127.0.0.1:{port}")
        env.pop("RUST_LOG", None)
        with tempfile.TemporaryFile() as log:
            daemon = subprocess.Popen([binary, "run"], env=env, stdout=log, stderr=log)
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                healthy = wait_for(url, r'^token_sweeper_sweeps_total\{result="ok"\} [1-9]', 30, daemon)
                wait_for(url, r'^token_sweeper_throttle_signal_seconds\{', 30, daemon)
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
            # Index mode (sweep.due_index): its series exist once an index
            # sweep ran; a full scan's start only while one sweeps (the 301
            # sets at 100 keys/s: about 3 s), every 2 s here.
            server.cli("DEL", "user2-tokens")
            env["TOKEN_SWEEPER__SWEEP__DUE_INDEX__ENABLED"] = "true"
            env["TOKEN_SWEEPER__SWEEP__DUE_INDEX__FULL_SCAN"] = "2s"
            daemon = subprocess.Popen([binary, "run"], env=env, stdout=log, stderr=log)
            try:
                indexed = wait_for(url, r'^token_sweeper_due_index_lag_seconds\{', 30, daemon)
                full = wait_for(url, r'^token_sweeper_full_scan_started_timestamp_seconds\{', 30,
                                daemon)
            finally:
                daemon.terminate()
                daemon.wait()
    finally:
        server.stop()
    return [healthy, refused, indexed, full]


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
    located = []
    for path in files:
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        located += [(rel, d) for d in docs]
        for doc in docs:
            kind = doc.get("kind")
            if kind in OPERATOR_KINDS:
                if doc.get("apiVersion") != OPERATOR_API:
                    problem(f"{rel}: {kind} has apiVersion {doc.get('apiVersion')}, not {OPERATOR_API}")
                check_operator_kind(rel, doc)
            else:
                core_docs.append(doc)
                check_pod_security(rel, doc)
                check_env(rel, doc)
                check_probes(rel, doc)
    check_selectors(located)
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


def containers(doc: dict) -> list:
    spec = pod_spec(doc) or {}
    return spec.get("initContainers", []) + spec.get("containers", [])


def served_paths() -> set:
    with open(ROUTER) as f:
        paths = set(re.findall(r'\.route\(\s*"(/[^"]*)"', f.read()))
    if not paths:
        problem(f"{os.path.relpath(ROUTER, ROOT)}: no .route(\"/...\") to read the served paths from")
    return paths


def check_env(rel: str, doc: dict) -> None:
    """A secret in a manifest's env is in the API server, kubectl describe
    and every copy of the file: it belongs in a Secret (secretKeyRef, or a
    mounted file that a *_FILE variable names)."""
    for c in containers(doc):
        where = f"{rel}: {doc['kind']} {doc.get('metadata', {}).get('name')} container {c.get('name')}"
        for e in c.get("env", []):
            name = str(e.get("name", ""))
            key = name[len("TOKEN_SWEEPER__"):] if name.startswith("TOKEN_SWEEPER__") else name
            if "value" in e and SECRET_NAME.search(key.upper()) and not key.upper().endswith("_FILE"):
                problem(f"{where}: env {name} has a plain value: take it from a Secret "
                        f"(valueFrom.secretKeyRef, or a mounted file and {name}_FILE)")
            if URL_PASSWORD.match(str(e.get("value", ""))):
                problem(f"{where}: env {name} has a password in its URL: use "
                        "TOKEN_SWEEPER__REDIS__PASSWORD_FILE")


def check_probes(rel: str, doc: dict) -> None:
    served = served_paths()
    for c in containers(doc):
        where = f"{rel}: {doc['kind']} {doc.get('metadata', {}).get('name')} container {c.get('name')}"
        ports = {p.get("name") for p in c.get("ports", [])} | {p.get("containerPort") for p in c.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = (c.get(probe) or {}).get("httpGet")
            if not get:
                continue
            if get.get("path") not in served:
                problem(f"{where}: {probe} asks {get.get('path')!r}, which the daemon does not serve "
                        f"(it serves {', '.join(sorted(served))})")
            if get.get("port") not in ports:
                problem(f"{where}: {probe} asks port {get.get('port')!r}, which the container does not have")


def matches(selector: dict, labels: dict) -> bool:
    """An equality selector (matchLabels, or a Service's selector) against labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(located: list) -> None:
    """Each monitor finds the daemons, and each Service its pods: a selector
    that matches nothing scrapes nothing, and every alert reads Absent."""
    pods = []  # (name, pod labels, names of its containers' ports)
    for rel, doc in located:
        if pod_spec(doc) is None:
            continue
        name = f"{rel}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
        if doc["kind"] == "Pod":
            labels = doc.get("metadata", {}).get("labels", {})
        else:
            labels = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
            if not matches(doc.get("spec", {}).get("selector", {}).get("matchLabels", {}), labels):
                problem(f"{name}: its selector does not match its pod template's labels")
        ports = {p.get("name") for c in containers(doc) for p in c.get("ports", [])}
        pods.append((name, labels, ports))
    daemons = [p for p in pods if "metrics" in p[2]]
    services = []
    for rel, doc in located:
        if doc.get("kind") != "Service":
            continue
        spec = doc.get("spec", {})
        name = f"{rel}: Service {doc.get('metadata', {}).get('name')}"
        services.append((doc.get("metadata", {}).get("labels", {}), {p.get("name") for p in spec.get("ports", [])}))
        chosen = [p for p in pods if matches(spec.get("selector", {}), p[1])]
        if not chosen:
            problem(f"{name}: its selector matches no pod template")
        for p in spec.get("ports", []):
            target = p.get("targetPort")
            if isinstance(target, str) and chosen and not any(target in c[2] for c in chosen):
                problem(f"{name}: targetPort {target!r} is no port of the pods it selects")
    for rel, doc in located:
        kind = doc.get("kind")
        if kind not in ("PodMonitor", "ServiceMonitor"):
            continue
        selector = doc.get("spec", {}).get("selector", {})
        name = f"{rel}: {kind} {doc.get('metadata', {}).get('name')}"
        if set(selector) - {"matchLabels"}:
            problem(f"{name}: only matchLabels selectors are checked here")
        wanted = selector.get("matchLabels", {})
        if kind == "PodMonitor":
            for pod_name, labels, _ in daemons:
                if not matches(wanted, labels):
                    problem(f"{name}: its selector {wanted} misses the daemon of {pod_name}")
        elif not any(matches(wanted, labels) and "metrics" in ports for labels, ports in services):
            problem(f"{name}: its selector {wanted} matches no Service with a port named metrics")


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
    control_wiring()
    kept, problems, quiet = problems, [], True
    check_fleet_scope("control", [
        'time() - max(token_sweeper_last_success_timestamp_seconds{job=~"$job", namespace=~"$namespace"})',
        'sum(token_sweeper_lock_held{job=~"$job"})',
    ])
    caught, problems, quiet = problems, kept, False
    if len(caught) != 2:
        problem(f"control: the dashboard scope check caught {caught}, not the 2 broken queries")


def control_wiring() -> None:
    """The env, probe and selector checks on broken copies of the real
    manifests: each breakage must be named; the manifests as shipped must
    not be (a check that complains about everything proves nothing)."""
    located = []
    for path in sorted(glob.glob(os.path.join(KUBERNETES, "*.yaml"))):
        with open(path) as f:
            located += [(os.path.relpath(path, ROOT), d) for d in yaml.safe_load_all(f) if d]

    def run_checks(docs) -> list:
        global problems, quiet
        kept, problems, quiet = problems, [], True
        for rel, d in docs:
            check_env(rel, d)
            check_probes(rel, d)
        check_selectors(docs)
        caught, problems, quiet = problems, kept, False
        return caught

    shipped = run_checks(located)
    if shipped:
        problem("control: the manifests as shipped fail the env, probe or selector checks: " + "; ".join(shipped))

    def broken(what, change, needle):
        docs = json.loads(json.dumps(located))
        change(docs)
        if not any(needle in c for c in run_checks(docs)):
            problem(f"control: the checks missed {what}")

    def doc(docs, kind, file=None):
        return next(d for r, d in docs if d.get("kind") == kind and (file is None or r.endswith(file)))

    def sweeper(docs, file="standalone.yaml"):
        spec = doc(docs, "Deployment", file)["spec"]["template"]["spec"]
        return next(c for c in spec["containers"] if any(p.get("name") == "metrics" for p in c.get("ports", [])))

    broken("a password in a plain env value",
           lambda d: sweeper(d)["env"].append({"name": "TOKEN_SWEEPER__REDIS__PASSWORD", "value": "hunter2"}),
           "TOKEN_SWEEPER__REDIS__PASSWORD has a plain value")
    broken("a token in a plain env value",
           lambda d: sweeper(d, "sidecar.yaml")["env"].append({"name": "AUTH_TOKEN", "value": "x"}),
           "AUTH_TOKEN has a plain value")
    broken("a password in the Redis URL",
           lambda d: sweeper(d)["env"][0].update(value="redis://token-sweeper:hunter2@redis:6379"),
           "password in its URL")
    broken("a PodMonitor selector that misses the sidecar",
           lambda d: doc(d, "Deployment", "sidecar.yaml")["spec"]["template"]["metadata"]["labels"]
           .pop("token-sweeper/metrics"),
           "misses the daemon of deploy/kubernetes/sidecar.yaml")
    broken("a ServiceMonitor selector that matches no Service",
           lambda d: doc(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"].update(
               {"app.kubernetes.io/name": "tokensweeper"}),
           "matches no Service")
    broken("a Service selector that matches no pod",
           lambda d: doc(d, "Service")["spec"]["selector"].update({"app.kubernetes.io/name": "sweeper"}),
           "matches no pod template")
    broken("a probe of a path the daemon does not serve",
           lambda d: sweeper(d)["livenessProbe"]["httpGet"].update(path="/health"),
           "'/health', which the daemon does not serve")
    broken("a probe of a port the container does not have",
           lambda d: sweeper(d)["readinessProbe"]["httpGet"].update(port="http"),
           "port 'http'")
    print("ok: the env, probe and selector checks pass the manifests and catch 8 broken copies")


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
