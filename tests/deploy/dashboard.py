"""Every query of the Grafana dashboard returns data from a real Prometheus scraping a real hookgate.

Starts hookgate (TLS with a test certificate on free loopback ports, the shared RabbitMQ with its own exchange, a temp data_dir),
a consumer bound to the exchange (`hookgate tail`), and Prometheus (own port, own data dir, scrape interval 1 s,
the chart's alert rules loaded). Sends webhooks through the gateway: new events, provider retries, bad
credentials, a bad signature, an unknown path, an event that arrives after a later one, events no queue is bound
for, a plaintext client on the TLS port, InstaMed polling jobs against a fake InstaMed over real HTTP. Then runs every panel
target and template-variable query against Prometheus's HTTP API: each must return series, and each series must
carry the labels the query groups by. Every alert rule must evaluate without error on the real series.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ports import free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "helm", "hookgate")
HOOKGATE = os.environ["HOOKGATE_BIN"]
PROMETHEUS = os.environ["PROMETHEUS"]
EXCHANGE = "hookgate.deploy-test"
PASSWORD = "dashboard-test-password"
CARD_SECRET = "dashboard-card-secret"
CHECKS = 0


def ok(cond, what):
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1


TLS = None  # the client context trusting the gateway's test certificate


def http(url, data=None, headers=None, method=None, timeout=10):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=TLS if url.startswith("https:") else None) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(what, cond, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


SOAP_ANSWER = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<GetSSOTokenStatusResponse xmlns="http://tempuri.org/"><GetSSOTokenStatusResult>{}</GetSSOTokenStatusResult>
</GetSSOTokenStatusResponse></soap:Body></soap:Envelope>"""


class FakeInstaMed(BaseHTTPRequestHandler):
    """InstaMed's SSO status service and NVP receipt over real HTTP: a token starting with "done" is COMPLETE (its
    receipt names the transaction after it), any other stays NEW until it expires."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path.endswith("SSOService.asmx"):
            token = re.search(r"<tokenID>([^<]*)</tokenID>", body)
            status = "COMPLETE" if token and token.group(1).startswith("done") else "NEW"
            self.answer("text/xml; charset=utf-8", SOAP_ANSWER.format(status))
        else:
            token = urllib.parse.parse_qs(body).get("singleSignOnToken", ["done-x"])[0]
            tx = token.removeprefix("done-")
            self.answer("text/plain", f"transactionStatus=C&transactionID={tx}&transactionDate=2016-01-15T20:37:21Z&responseCode=000&cardBrand=VISA&lastFourDigits=1111")

    def answer(self, content_type, text):
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def certificate(tmp):
    """A self-signed certificate for 127.0.0.1 (openssl), so the gateway serves TLS as in production."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{tmp}/tls.key", "-out", f"{tmp}/tls.crt", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-days", "30"], check=True, capture_output=True)
    return ssl.create_default_context(cafile=f"{tmp}/tls.crt")


def gateway_config(tmp, port, admin, fake):
    return f"""
[server]
listen = "127.0.0.1:{port}"
drain_timeout = "5s"
[server.tls]
cert = "{tmp}/tls.crt"
key = "{tmp}/tls.key"
[admin]
listen = "127.0.0.1:{admin}"
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "{EXCHANGE}"
alternate_exchange = ""
publish_timeout = "2s"
[storage]
data_dir = "{tmp}/data"
[logging]
format = "json"
level = "warn"
[sources.instamed]
preset = "instamed"
[sources.instamed.auth]
basic = [{{ username = "instamed", password = "{PASSWORD}" }}]
[sources.prepaid-card]
preset = "prepaid-card"
[sources.prepaid-card.auth]
hmac = {{ scheme = "x-signature", secrets = ["{CARD_SECRET}"] }}
[pollers.instamed]
source = "instamed"
sso_url = "http://{fake}/Forms/WebServices/SSOService.asmx"
nvp_url = "http://{fake}/payment/NVP.aspx"
account_id = "acct-1"
alias = "alias"
password = "sso-password"
merchant_id = "m"
store_id = "s"
terminal_id = "t"
interval = "200ms"
token_ttl = "3s"
request_timeout = "2s"
unauthenticated = true
"""


def traffic(base, round_no):
    """One round of deliveries; returns how many requests it sent."""
    fixture = json.load(open(os.path.join(ROOT, "tests", "fixtures", "instamed-approved.json")))
    basic = {"Authorization": "Basic " + base64.b64encode(f"instamed:{PASSWORD}".encode()).decode(), "Content-Type": "application/json"}
    bad = dict(basic, Authorization="Basic " + base64.b64encode(b"instamed:wrong").decode())
    sent = 0
    txn = f"dash-{os.getpid()}-{round_no}"

    def post(path, body, headers, want, reason=None):
        nonlocal sent
        status, text = http(base + path, json.dumps(body).encode() if not isinstance(body, bytes) else body, headers, "POST")
        sent += 1
        ok(status == want, f"POST {path}: {status}, expected {want}")
        if reason is not None:
            ok(text.decode().strip() == reason, f"POST {path}: {text!r}, expected {reason}")

    settled = dict(fixture, TransactionID=txn, TransactionStatus="Settlement")
    post("/webhooks/instamed", settled, basic, 200, "Stored")
    post("/webhooks/instamed", settled, basic, 200, "Duplicate")   # provider retry
    post("/webhooks/instamed", dict(settled, TransactionStatus="Approved"), basic, 200, "Stored")  # after a later one: out of order
    post("/webhooks/instamed", settled, bad, 401)
    card = json.load(open(os.path.join(ROOT, "tests", "fixtures", "prepaid-card-purchase.json")))
    body = json.dumps(dict(card, TransactionId=txn)).encode()
    sig = hmac.new(CARD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    post("/webhooks/prepaid-card", body, {"X-Signature": sig, "Content-Type": "application/json"}, 200)
    post("/webhooks/prepaid-card", body, {"X-Signature": "00" * 32, "Content-Type": "application/json"}, 401)
    post("/webhooks/nowhere", b"{}", {"Content-Type": "application/json"}, 404)
    # A client speaking plain HTTP to the TLS port: a failed handshake.
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5) as raw:
        raw.sendall(b"POST /webhooks/instamed HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            raw.recv(100)
        except OSError:
            pass
    # InstaMed polling: one token that completes, one that stays NEW until it expires.
    for token in (f"done-{txn}", f"new-{txn}"):
        status, _ = http(base + "/poll/instamed", json.dumps({"token": token}).encode(), {"Content-Type": "application/json"}, "POST")
        ok(status == 202, f"poll registration: {status}")
    return sent


def prom_query(prom, q):
    status, body = http(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
    doc = json.loads(body)
    ok(status == 200 and doc.get("status") == "success", f"query {q!r}: {status} {body[:300]!r}")
    return doc["data"]["result"]


def substitute(expr):
    return expr.replace("$__rate_interval", "30s").replace("$job", "hookgate").replace("$source", ".+")


def grouped_labels(expr):
    """The labels a query's outermost aggregation groups by (`by (a, b)`), minus le (consumed by quantiles)."""
    m = re.search(r"\bby \(([^)]*)\)", expr)
    return [x.strip() for x in m.group(1).split(",") if x.strip() and x.strip() != "le"] if m else []


def check_dashboard(prom):
    dash = json.load(open(os.path.join(CHART, "files", "dashboard.json")))
    names = set(json.loads(http(f"{prom}/api/v1/label/__name__/values")[1])["data"])
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ok(len(panels) >= 12, "dashboard has its panels")
    for p in panels:
        ok(p["targets"], f"panel {p['title']!r} has queries")
        for t in p["targets"]:
            expr = substitute(t["expr"])
            for metric in set(re.findall(r"\b((?:hookgate|process)_[a-z_]+)\b", expr)):
                ok(metric in names, f"panel {p['title']!r}: metric {metric} is not exposed by hookgate")
            result = prom_query(prom, expr)
            ok(result, f"panel {p['title']!r}: {expr} returned no data")
            for series in result:
                for label in grouped_labels(expr):
                    ok(series["metric"].get(label), f"panel {p['title']!r}: series {series['metric']} lacks label {label}")
                legend = re.findall(r"\{\{(\w+)\}\}", t.get("legendFormat", ""))
                for label in legend:
                    ok(label in series["metric"], f"panel {p['title']!r}: legend label {label} not in {series['metric']}")
        print(f"  panel {p['title']!r}: {len(p['targets'])} queries with data")
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
        ok(m, f"variable {v['name']}: {v['query']['query']}")
        match = substitute(m.group(1))
        status, body = http(f"{prom}/api/v1/series?" + urllib.parse.urlencode({"match[]": match}))
        values = {s.get(m.group(2)) for s in json.loads(body)["data"]} - {None}
        ok(values, f"variable {v['name']}: no values of {m.group(2)} in {match}")
        print(f"  variable ${v['name']}: {sorted(values)}")


def check_rules(prom):
    wait_for("rule evaluation", lambda: all(r.get("lastEvaluation", "").startswith("20") and not r["lastEvaluation"].startswith("0001")
                                           for g in json.loads(http(f"{prom}/api/v1/rules")[1])["data"]["groups"] for r in g["rules"]), 30)
    groups = json.loads(http(f"{prom}/api/v1/rules")[1])["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    ok(len(rules) >= 10, f"alert rules loaded: {len(rules)}")
    for r in rules:
        ok(r["health"] == "ok", f"rule {r['name']}: {r['health']} {r.get('lastError')}")
    print(f"  {len(rules)} alert rules evaluate without error on the real series")


def main():
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            port, admin, pport = free_port(), free_port(), free_port()
            fake = ThreadingHTTPServer(("127.0.0.1", 0), FakeInstaMed)
            threading.Thread(target=fake.serve_forever, daemon=True).start()
            global TLS
            TLS = certificate(tmp)
            cfg = os.path.join(tmp, "hookgate.toml")
            open(cfg, "w").write(gateway_config(tmp, port, admin, f"127.0.0.1:{fake.server_address[1]}"))
            log = open(os.path.join(tmp, "hookgate.log"), "w")
            procs.append(subprocess.Popen([HOOKGATE, "run", "--config", cfg], stdout=log, stderr=subprocess.STDOUT))
            gateway = procs[0]

            def ready():
                ok(gateway.poll() is None, f"hookgate exited with {gateway.returncode}")
                return http(f"http://127.0.0.1:{admin}/readyz", timeout=2)[0] == 200

            wait_for("hookgate /readyz", ready)
            # A consumer bound to InstaMed's routing keys, so those events are routed (and confirmed) as in
            # production; the card processor's find no binding: returned, parked, counted as unroutable.
            procs.append(subprocess.Popen([HOOKGATE, "tail", "--config", cfg, "--bind", "instamed.#"], stdout=subprocess.DEVNULL, stderr=log))
            time.sleep(1.0)
            prom_cfg = os.path.join(tmp, "prometheus.yml")
            open(prom_cfg, "w").write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{os.path.join(CHART, "files", "alerts.yaml")}]
scrape_configs:
  - job_name: hookgate
    static_configs: [{{ targets: ["127.0.0.1:{admin}"] }}]
""")
            plog = open(os.path.join(tmp, "prometheus.log"), "w")
            procs.append(subprocess.Popen([PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp}/prom",
                                           f"--web.listen-address=127.0.0.1:{pport}"], stdout=plog, stderr=subprocess.STDOUT))
            prom = f"http://127.0.0.1:{pport}"
            wait_for("Prometheus ready", lambda: http(f"{prom}/-/ready", timeout=2)[0] == 200)
            wait_for("first scrape", lambda: prom_query(prom, 'up{job="hookgate"} == 1'))
            sent = 0
            for i in range(4):
                sent += traffic(f"https://127.0.0.1:{port}", i)
                time.sleep(1.5)
            wait_for("Prometheus to see every answer",
                     lambda: (r := prom_query(prom, "sum(hookgate_requests_total)")) and float(r[0]["value"][1]) == sent)
            wait_for("poll jobs to finish (complete and expired)",
                     lambda: {x["metric"]["state"] for x in prom_query(prom, "hookgate_poll_jobs > 0")} >= {"complete", "expired"})
            time.sleep(2)
            check_dashboard(prom)
            check_rules(prom)
        except AssertionError:
            for name in ("hookgate.log", "prometheus.log"):
                path = os.path.join(tmp, name)
                if os.path.exists(path):
                    sys.stderr.write(f"--- {name} (last lines)\n" + "".join(open(path).readlines()[-20:]))
            raise
        finally:
            if "fake" in locals():
                fake.shutdown()
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    print(f"dashboard checks: {CHECKS} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"dashboard check FAILED: {e}", file=sys.stderr)
        sys.exit(1)
