"""Deployment checks of helm/hookgate with the real tools (run by tests/deploy/run, which installs them).

For the default values, every option on (ci/all-on-values.yaml), every Secret referenced (existing-secrets) and
three replicas with Redis: `helm template`, every manifest validated against the Kubernetes schemas
(kubernetes-validate, offline), the Prometheus Operator resources checked by shape (and their rules by promtool),
then the pod is "mounted" into a temp dir from the rendered ConfigMap and Secrets, exactly at the container's
mount paths, and the rendered TOML must pass `hookgate check-config`. Renders that must fail, must fail saying why.
"""
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import http.client

import kubernetes_validate
import yaml

from ports import free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "helm", "hookgate")
HELM = os.environ["HELM"]
PROMTOOL = os.environ["PROMTOOL"]
HOOKGATE = os.environ["HOOKGATE_BIN"]
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CHECKS = 0


def ok(cond, what):
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1


def helm_template(*args, expect_fail=False):
    cmd = [HELM, "template", "gw", CHART, "--namespace", "payments", *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if expect_fail:
        ok(p.returncode != 0, f"helm template {' '.join(args)} should have failed")
        return p.stderr
    if p.returncode != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed:\n{p.stderr}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def validate_schemas(docs):
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{d['kind']}/{d['metadata']['name']} invalid for Kubernetes {v}: {e.message} at {list(e.path)}")
            ok(True, "")


def anchors(markdown):
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    for line in open(markdown):
        m = re.match(r"#+ (.*)", line)
        if m:
            out.add(re.sub(r"[^a-z0-9 _-]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def check_runbooks():
    plain = yaml.safe_load(open(os.path.join(CHART, "files", "alerts.yaml")))
    have = anchors(os.path.join(ROOT, "docs", "operations.md"))
    for grp in plain["groups"]:
        for r in grp["rules"]:
            url = r["annotations"]["runbook_url"]
            ok(url.startswith("docs/operations.md#") and url.split("#")[1] in have, f"{r['alert']}: runbook {url} is not a heading of docs/operations.md")


def check_crds(docs):
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    for sm in by_kind(docs, "ServiceMonitor"):
        ok(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if sel.items() <= s["metadata"]["labels"].items()]
        ok(len(matched) == 1, f"ServiceMonitor selects exactly one Service, got {[m['metadata']['name'] for m in matched]}")
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            ok(ep["port"] in ports and ep["path"] == "/metrics", f"ServiceMonitor endpoint {ep} names a port of {ports}")
            ok(set(ep) <= {"port", "path", "interval", "scrapeTimeout"}, f"ServiceMonitor endpoint keys {set(ep)}")
        ok(set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}, "ServiceMonitor spec keys")
    for pr in by_kind(docs, "PrometheusRule"):
        ok(pr["apiVersion"] == "monitoring.coreos.com/v1" and set(pr["spec"]) == {"groups"}, "PrometheusRule shape")
        plain = yaml.safe_load(open(os.path.join(CHART, "files", "alerts.yaml")))
        names = lambda g: [r["alert"] for grp in g["groups"] for r in grp["rules"]]
        ok(names(pr["spec"]) == names(plain), "PrometheusRule carries every alert of files/alerts.yaml")
        for grp in pr["spec"]["groups"]:
            for r in grp["rules"]:
                ok(set(r) <= {"alert", "expr", "for", "labels", "annotations"}, f"rule keys {set(r)}")
                ok(r["annotations"]["runbook_url"].startswith("https://") and "/docs/operations.md#" in r["annotations"]["runbook_url"], f"runbook_url {r['annotations']['runbook_url']}")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump({"groups": pr["spec"]["groups"]}, f)
        p = subprocess.run([PROMTOOL, "check", "rules", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        ok(p.returncode == 0, f"promtool check rules on the PrometheusRule's groups:\n{p.stdout}{p.stderr}")
    for cm in by_kind(docs, "ConfigMap"):
        if "hookgate.json" in cm.get("data", {}):
            ok(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap has the sidecar label")
            ok(json.loads(cm["data"]["hookgate.json"]) == json.load(open(os.path.join(CHART, "files", "dashboard.json"))),
               "dashboard ConfigMap holds files/dashboard.json")


def check_pod(docs, values_drain, replicas, pdb=True):
    sts = by_kind(docs, "StatefulSet")
    ok(len(sts) == 1, "one StatefulSet")
    sts = sts[0]
    ok(sts["spec"]["replicas"] == replicas, f"replicas {sts['spec']['replicas']}")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc, psc = c["securityContext"], pod["securityContext"]
    ok(psc["runAsNonRoot"] and psc["runAsUser"] != 0 and psc["seccompProfile"]["type"] == "RuntimeDefault", "pod security context")
    ok(sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"], "container security context")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        ok(c[probe]["httpGet"] == {"path": path, "port": "admin"}, f"{probe} on the admin port")
    ok(c["resources"]["requests"] and c["resources"]["limits"], "resources")
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    ok(pod["terminationGracePeriodSeconds"] > values_drain + pre, f"grace {pod['terminationGracePeriodSeconds']} > drain {values_drain} + preStop {pre}")
    vct = [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]]
    ok(vct == ["data"], "volumeClaimTemplate data")
    headless = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    ok(len(headless) == 1 and headless[0]["metadata"]["name"] == sts["spec"]["serviceName"], "headless Service is the StatefulSet's")
    client = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") != "None"]
    ok(len(client) == 1 and [p["targetPort"] for p in client[0]["spec"]["ports"]] == ["public"], "client Service: public port only")
    ok(len(by_kind(docs, "PodDisruptionBudget")) == (1 if pdb else 0), "PodDisruptionBudget")
    return sts, c, pod, ports


def mount_pod(docs, c, pod, root, existing):
    """Writes, under root, every file the container would see from its ConfigMap and Secret volumes."""
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    vols = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        v = vols.get(m["name"], {})  # absent: the volumeClaimTemplate (data)
        if "configMap" in v and v["configMap"]["name"] in cms:
            files = cms[v["configMap"]["name"]]["data"]
        elif "secret" in v:
            name = v["secret"]["secretName"]
            if name in secrets:
                files = {k: base64.b64decode(x).decode() for k, x in secrets[name]["data"].items()}
            else:
                ok(name in existing, f"Secret {name} is neither rendered nor a known existing one")
                files = existing[name]
        else:
            os.makedirs(root + m["mountPath"], exist_ok=True)
            continue
        os.makedirs(root + m["mountPath"], exist_ok=True)
        for k, body in files.items():
            with open(os.path.join(root + m["mountPath"], k), "w") as f:
                f.write(body)
    env = {}
    for e in c["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[e["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
            else:
                env[e["name"]] = existing[ref["name"]][ref["key"]]
        else:
            env[e["name"]] = e["value"]
    return env


def check_config(docs, existing=None):
    """The rendered TOML, with the pod's files in place, passes `hookgate check-config`."""
    sts, c, pod, ports = check_pod(docs, 0, by_kind(docs, "StatefulSet")[0]["spec"]["replicas"], bool(by_kind(docs, "PodDisruptionBudget")))
    args = c["args"]
    ok(args[:2] == ["run", "--config"], f"container args {args}")
    with tempfile.TemporaryDirectory() as root:
        env = mount_pod(docs, c, pod, root, existing or {})
        config_path = root + args[2]
        text = open(config_path).read()
        # Every absolute path of the config must be one the pod mounts: point them into the temp root.
        mounts = [m["mountPath"] for m in c["volumeMounts"]]
        for path in re.findall(r'"(/[^"]*)"', text):
            if path.startswith(("/webhooks", "/tyro", "/poll")):
                continue
            ok(any(path == m or path.startswith(m + "/") for m in mounts), f"config path {path} is under a volume mount {mounts}")
        under = lambda path: any(path == m or path.startswith(m + "/") for m in mounts)
        text = re.sub(r'"(/[^"]*)"', lambda x: f'"{root}{x.group(1)}"' if under(x.group(1)) else x.group(0), text)
        with open(config_path, "w") as f:
            f.write(text)
        full_env = dict(os.environ, **env)
        p = subprocess.run([HOOKGATE, "check-config", "--config", config_path], capture_output=True, text=True, env=full_env)
        ok(p.returncode == 0, f"hookgate check-config of the rendered config failed ({p.returncode}):\n{p.stderr}\n{text}")
        effective = p.stdout
        ok(f'listen = "0.0.0.0:{ports["admin"]}"' in effective and f'listen = "0.0.0.0:{ports["public"]}"' in effective, "listen addresses match the container ports")
        data_mount = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data"][0]
        ok(f'data_dir = "{root}{data_mount}/' in effective, "data_dir is on the volumeClaimTemplate's mount")
        ok("<redacted>" in effective or "urls_env" in effective, "secrets redacted")
        return effective


def post(port, cafile, path, body, headers):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the chart's certificate names the Service, the test dials 127.0.0.1
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("POST", path, body, headers)
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, r.reason


def run_replicas(docs, prefix):
    """Runs every replica of the StatefulSet as the pod would (its own volume, the same ConfigMap and Secrets),
    with the listen ports moved to free loopback ones and the broker URL pointed at the local RabbitMQ; each must
    turn ready, and a provider retry answered by another replica must be a duplicate (the shared Redis)."""
    sts = by_kind(docs, "StatefulSet")[0]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    procs, replicas = [], []
    with tempfile.TemporaryDirectory() as base:
        try:
            for i in range(sts["spec"]["replicas"]):
                root = os.path.join(base, f"{sts['metadata']['name']}-{i}")
                env = mount_pod(docs, c, pod, root, {})
                config_path = root + c["args"][2]
                text = open(config_path).read()
                mounts = [m["mountPath"] for m in c["volumeMounts"]]
                under = lambda path: any(path == m or path.startswith(m + "/") for m in mounts)
                text = re.sub(r'"(/[^"]*)"', lambda x: f'"{root}{x.group(1)}"' if under(x.group(1)) else x.group(0), text)
                public, admin = free_port(), free_port()
                text = text.replace('listen = "0.0.0.0:8443"', f'listen = "127.0.0.1:{public}"').replace('listen = "0.0.0.0:9090"', f'listen = "127.0.0.1:{admin}"')
                open(config_path, "w").write(text)
                env["HOOKGATE_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672/%2f"
                log = open(os.path.join(base, f"replica-{i}.log"), "w")
                procs.append(subprocess.Popen([HOOKGATE] + c["args"][:1] + ["--config", config_path], env=dict(os.environ, **env), stdout=log, stderr=subprocess.STDOUT))
                replicas.append((public, admin, root))
            for i, (public, admin, root) in enumerate(replicas):
                deadline = time.monotonic() + 60
                while True:
                    ok(procs[i].poll() is None, f"replica {i} exited {procs[i].returncode}: {open(os.path.join(base, f'replica-{i}.log')).read()[-2000:]}")
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
                        conn.request("GET", "/readyz")
                        if conn.getresponse().status == 200:
                            break
                    except OSError:
                        pass
                    ok(time.monotonic() < deadline, f"replica {i} not ready in 60 s")
                    time.sleep(0.2)
            secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
            providers = [d for n, d in secrets.items() if n.endswith("-providers")][0]
            password = base64.b64decode(providers["data"]["instamed-password"]).decode()
            basic = "Basic " + base64.b64encode(f"instamed:{password}".encode()).decode()
            fixture = json.load(open(os.path.join(ROOT, "tests", "fixtures", "instamed-approved.json")))
            body = json.dumps(dict(fixture, TransactionID=f"{prefix}-{time.time_ns()}"))
            headers = {"Authorization": basic, "Content-Type": "application/json"}
            answers = []
            for public, _, root in replicas:
                cafile = root + "/etc/hookgate/tls/tls.crt"
                answers.append(post(public, cafile, "/webhooks/instamed", body, headers))
            ok(answers == [(200, "Stored")] + [(200, "Duplicate")] * (len(replicas) - 1), f"one event, then a retry on each other replica: {answers}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    rc = p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    raise AssertionError("a replica did not drain and exit within 30 s of SIGTERM")
                ok(rc == 0, f"a replica exited {rc} after SIGTERM")
    return len(replicas)


def drain_seconds(docs):
    cm = [d for d in by_kind(docs, "ConfigMap") if "hookgate.toml" in d["data"]][0]
    m = re.search(r'drain_timeout = "(\d+)s"', cm["data"]["hookgate.toml"])
    return int(m.group(1)) if m else 20


def certs(tmp):
    """A server certificate and key, a client CA and its CRL, made with openssl."""
    run = lambda *a: subprocess.run(a, cwd=tmp, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
        "-out", "server.crt", "-subj", "/CN=webhooks.example.com", "-addext", "subjectAltName=DNS:webhooks.example.com", "-days", "30")
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-subj", "/CN=partner-ca", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-days", "30")
    open(os.path.join(tmp, "index.txt"), "w").close()
    open(os.path.join(tmp, "crlnumber"), "w").write("01\n")
    open(os.path.join(tmp, "ca.cnf"), "w").write("[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\ncrlnumber=crlnumber\ndefault_md=sha256\ndefault_crl_days=30\n")
    run("openssl", "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.crt", "-out", "ca.crl")
    return {k: os.path.join(tmp, f) for k, f in [("crt", "server.crt"), ("key", "server.key"), ("ca", "ca.crt"), ("crl", "ca.crl")]}


def main():
    p = subprocess.run([HELM, "lint", "--strict", CHART], capture_output=True, text=True)
    ok(p.returncode == 0, f"helm lint --strict:\n{p.stdout}{p.stderr}")
    for values in sorted(os.listdir(os.path.join(CHART, "ci"))):
        p = subprocess.run([HELM, "lint", "--strict", CHART, "-f", os.path.join(CHART, "ci", values)], capture_output=True, text=True)
        ok(p.returncode == 0, f"helm lint --strict -f ci/{values}:\n{p.stdout}{p.stderr}")
    print("helm lint --strict: ok (default values and every ci/*-values.yaml)")
    check_runbooks()
    print("every alert's runbook_url is a heading of docs/operations.md")

    # Default values.
    docs = helm_template()
    validate_schemas(docs)
    check_crds(docs)
    check_pod(docs, drain_seconds(docs), 1)
    ok(not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule"), "Operator resources are off by default")
    eff = check_config(docs)
    ok("shared" not in re.findall(r"^(\w+) =", eff, re.M), "no shared store by default")
    print(f"default values: {len(docs)} manifests valid, check-config ok")

    # Every option on, with real certificates, client CA and CRL.
    with tempfile.TemporaryDirectory() as tmp:
        c = certs(tmp)
        docs = helm_template("-f", os.path.join(CHART, "ci", "all-on-values.yaml"), "--set-file", f"tls.cert={c['crt']}",
                             "--set-file", f"tls.key={c['key']}", "--set-file", f"tls.clientCA.pem={c['ca']}",
                             "--set-file", f"tls.clientCA.crls.client-ca\\.crl={c['crl']}")
        kinds = sorted({d["kind"] for d in docs})
        ok(kinds == ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule", "Secret", "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet"], f"kinds {kinds}")
        validate_schemas(docs)
        check_crds(docs)
        check_pod(docs, drain_seconds(docs), 2)
        eff = check_config(docs)
        dashboards = [cm for cm in by_kind(docs, "ConfigMap") if "hookgate.json" in cm.get("data", {})]
        ok(len(dashboards) == 1, f"all-on renders one dashboard ConfigMap, not {len(dashboards)}")
        ok(not any("redis-pw" in json.dumps(cm.get("data", {})) for cm in by_kind(docs, "ConfigMap")), "no Redis password in a ConfigMap")
        ok("redis-pw" not in eff, "no Redis password in check-config's output")
        for needle in ('[pollers.instamed]', 'client_ca = "', 'crls = [', 'shared_env = "HOOKGATE_SHARED_URL"', 'shared_prefix = "payments-hookgate"', 'spool_key_file = "'):
            ok(needle in eff, f"all-on effective config has {needle}")
        print(f"all options on: {len(docs)} manifests valid (Kubernetes {', '.join(K8S_VERSIONS)}), CRD shapes ok, check-config ok")

        # Every Secret referenced instead of made.
        docs = helm_template("-f", os.path.join(CHART, "ci", "existing-secrets-values.yaml"))
        validate_schemas(docs)
        ok(not by_kind(docs, "Secret"), "no chart-made Secret when every one is referenced")
        existing = {
            "hookgate-tls-from-cert-manager": {"tls.crt": open(c["crt"]).read(), "tls.key": open(c["key"]).read()},
            "partner-cas": {"ca.crt": open(c["ca"]).read()},
            "vault-spool-key": {"key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
            "vault-provider-secrets": {k: "x" + k for k in ["instamed-password", "tyro-hmac-secret", "tyro-session-key", "card-webhook-secret"]}
            | {"standard-webhooks-secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
            "rabbitmq-hookgate-user": {"connection-string": "amqp://u:p@rabbitmq:5672/%2f"},
            "redis-hookgate": {"redis-url": "rediss://:redis-pw@redis.cache.svc:6380"},
        }
        check_config(docs, existing)
        print("existing Secrets: manifests valid, check-config ok")

    # A cluster's nodes in broker.url, separated by commas: they stay in the Secret, and check-config resolves
    # them from HOOKGATE_BROKER_URL (broker.urls_env).
    nodes = "amqp://u:pw0@rabbit-0:5672/%2f,amqp://u:pw1@rabbit-1:5672/%2f"
    docs = helm_template("--set", "broker.url=" + nodes.replace(",", "\\,"))
    (secret,) = [d for d in by_kind(docs, "Secret") if "url" in d.get("data", {})]
    ok(base64.b64decode(secret["data"]["url"]).decode() == nodes, "the Secret holds every node")
    ok(all("pw0" not in yaml.safe_dump(d) for d in by_kind(docs, "ConfigMap")), "no node's credentials in the ConfigMap")
    eff = check_config(docs)
    ok('urls_env = "HOOKGATE_BROKER_URL"' in eff and "pw0" not in eff, "the config names the variable, not the URLs")
    print("a cluster's nodes in broker.url: kept in the Secret, check-config resolves them")

    # Every optional part off.
    docs = helm_template("-f", os.path.join(CHART, "ci", "all-off-values.yaml"))
    validate_schemas(docs)
    check_pod(docs, drain_seconds(docs), 1, pdb=False)
    ok(not by_kind(docs, "ServiceAccount") and not by_kind(docs, "PodDisruptionBudget"), "no ServiceAccount, no PDB")
    eff = check_config(docs)
    ok("[server.tls]" not in eff and "spool_key_file" not in eff, "plain HTTP, no spool key")
    ok("lifecycle" not in by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0], "no preStop")
    print("every option off: manifests valid, check-config ok")

    # Three replicas with Redis: one config that every replica (same ConfigMap, own volume) accepts.
    docs = helm_template("-f", os.path.join(CHART, "ci", "replicas-values.yaml"))
    validate_schemas(docs)
    check_pod(docs, drain_seconds(docs), 3)
    eff = check_config(docs)
    ok('shared_env = "HOOKGATE_SHARED_URL"' in eff and 'shared_prefix = "gw-hookgate"' in eff, "replicas share Redis under the release's prefix")
    ok(not any("redis://" in json.dumps(cm.get("data", {})) for cm in by_kind(docs, "ConfigMap")), "the Redis URL is in a Secret, not the ConfigMap")
    print("replicaCount 3 + sharedStore: check-config ok")
    # ... and every replica runs with it: the shared RabbitMQ (own exchange), the shared Redis (own prefix).
    prefix = f"hookgate-deploy-test-{os.getpid()}"
    docs = helm_template("-f", os.path.join(CHART, "ci", "replicas-values.yaml"), "--set", f"sharedStore.prefix={prefix}",
                         "--set", "config.broker.exchange=hookgate.deploy-test", "--set", "config.broker.alternate_exchange=")
    try:
        n = run_replicas(docs, prefix)
    finally:
        keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{prefix}*"], capture_output=True, text=True).stdout.split()
        if keys:
            subprocess.run(["redis-cli", "del", *keys], capture_output=True)
    print(f"replicaCount 3 + sharedStore: {n} replicas ready on the rendered config; a retry on another replica is a Duplicate; each drains and exits 0")

    # Renders that must be refused, with the reason.
    err = helm_template("--set", "replicaCount=3", expect_fail=True)
    ok("replicaCount is 3 but sharedStore.enabled is false" in err and "published a second time" in err, f"replicas without Redis: {err}")
    err = helm_template("--set", "terminationGracePeriodSeconds=20", expect_fail=True)
    ok("terminationGracePeriodSeconds (20) must be at least config.server.drain_timeout (20s)" in err, f"grace period: {err}")
    err = helm_template("--set", "sharedStore.enabled=true", "--set", "sharedStore.url=http://x", expect_fail=True)
    ok("not a redis:// or rediss:// URL" in err, f"bad redis url: {err}")
    err = helm_template("--set", "config.broker.urls={amqp://u:p@rabbit-0:5672/%2f,amqp://u:p@rabbit-1:5672/%2f}", expect_fail=True)
    ok("would put the broker's credentials into the ConfigMap" in err, f"broker urls in the ConfigMap: {err}")
    err = helm_template("--set", "config.broker.urls_file=/etc/urls", expect_fail=True)
    ok("not config.broker.urls_file" in err, f"a broker form the chart owns: {err}")
    print("refused renders: replicas without Redis, grace period below the drain deadline, bad Redis URL, broker URLs in the ConfigMap")
    print(f"chart checks: {CHECKS} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"chart check FAILED: {e}", file=sys.stderr)
        sys.exit(1)
