"""Renders docs/frameworks.md from the reports scripts/frameworks wrote.

Usage: table.py REPORTS_DIR VERSIONS_FILE RATE GRACE DELAY ROOT > docs/frameworks.md
"""
import json
import sys
from pathlib import Path

FRAMEWORKS = [
    ("gunicorn", "gunicorn (sync workers, `--graceful-timeout 5`)"),
    ("uvicorn", "uvicorn"),
    ("node-http", "Node `http` + `server.close()`"),
    ("express-terminus", "Express + `@godaddy/terminus`"),
    ("go-net-http", "Go `net/http` + `Shutdown`"),
    ("axum", "axum `with_graceful_shutdown`"),
    ("actix-web", "actix-web"),
    ("dropless-lifecycle", "dropless-lifecycle (defaults)"),
]
CHECKS = ["readiness", "new conns", "in flight", "idle keep-alive", "busy keep-alive",
          "h2 GOAWAY", "exit", "startup"]
CELL = {"pass": "pass", "fail": "**FAIL**", "not_applicable": "n/a", "unexpected": "**UNEXPECTED**"}

# What each framework gets wrong by default, read from the run recorded
# below (scripts/frameworks regenerates the table, not these words).
READING = {
    "gunicorn": "Finishes its requests, but its health endpoint never says 503 and its listener "
                "closes at SIGTERM: every request a load balancer sends during its endpoint lag is "
                "refused. Sync workers do not keep connections alive, so HTTP/1.1 keep-alive "
                "cannot go wrong.",
    "uvicorn": "Stops accepting at once and finishes requests in flight; keep-alive requests "
               "after SIGTERM are where it loses.",
    "node-http": "`server.close()` (Node 19 and later) closes idle keep-alive connections, but "
                 "the listener closes at SIGTERM with no readiness change.",
    "express-terminus": "terminus turns the health check to 503, but by default (no "
                        "`beforeShutdown` delay) it closes the listener at once anyway.",
    "go-net-http": "`Shutdown` is the model HTTP/1.1 drain: listener closed, idle connections "
                   "closed, in-flight finished; nothing keeps serving for the endpoint lag.",
    "axum": "`with_graceful_shutdown` finishes requests in flight; no pre-stop delay.",
    "actix-web": "Handles SIGTERM itself and finishes in-flight requests; no pre-stop delay.",
    "dropless-lifecycle": "Readiness 503 at SIGTERM, `Connection: close` on the last "
                          "responses, one more message on idle keep-alive connections; with its "
                          "default pre-stop of 0 s it relies on the deployer (or `pre_stop`) for "
                          "the endpoint lag.",
}


def main():
    reports, versions_file, rate, grace, delay, root = sys.argv[1:7]
    reports = Path(reports)
    versions = {}
    for line in Path(versions_file).read_text().splitlines():
        name, _, version = line.partition(" ")
        versions[name] = version
    out = []
    w = out.append
    w("# Graceful shutdown of real frameworks, checked\n")
    w("`dropless check` (see [check.md](check.md)) run on the talk's hello app on each "
      "framework, written the way the framework documents a graceful shutdown and nothing "
      "more (sources in `frameworks/`). `GET /` answers after "
      f"`HELLO_REST_REQUEST_DELAY={delay}` s; each app serves `/health`. Every check ran at "
      f"{rate} req/s with a {grace} grace period, `--health-path /health`.\n")
    w("Reproduce: `scripts/frameworks` (installs the runtimes and packages, builds, checks, "
      "and writes this file; under 15 minutes on a fresh 2-core machine).\n")
    w("| framework | " + " | ".join(f"{i + 1} {c}" for i, c in enumerate(CHECKS))
      + " | Kubernetes, no preStop: failed per restart |")
    w("| --- " * (len(CHECKS) + 2) + "|")
    details = []
    for key, title in FRAMEWORKS:
        path = reports / f"{key}.json"
        report = json.loads(path.read_text()) if path.exists() else {"error": "not run"}
        if "error" in report:
            w(f"| {title} | " + " | ".join(["(not run)"] * len(CHECKS))
              + f" | {report['error']} |")
            continue
        cells = [CELL[c["verdict"]] for c in report["checks"]]
        failed = report["meaning"]["kubernetes_failed_requests"]
        w(f"| {title} | " + " | ".join(cells) + f" | {failed} |")
        details.append((key, title, report))
    w("")
    w("## Versions\n")
    for key, title in FRAMEWORKS:
        if key in versions:
            w(f"- {title}: {versions[key]}")
    if "python" in versions:
        w(f"- Python {versions['python']}")
    w("")
    w("## Reading\n")
    w("The talk's lesson holds: the frameworks finish the requests in flight, and HTTP/1.1 "
      "keep-alive and the load balancer's endpoint lag are where requests are lost. None "
      "keeps serving after SIGTERM on its own, so behind a Kubernetes Service without a "
      "preStop hook every one of them loses the requests sent in the lag; behind dropless, "
      "which stops routing and drains before it sends SIGTERM, all of them are safe.\n")
    for key, title, report in details:
        w(f"### {title}\n")
        if key in READING:
            w(READING[key] + "\n")
        command = " ".join(report["command"])
        w(f"Command: `dropless check --rate {rate} --grace {grace} --health-path /health -- "
          f"{command.replace(root + '/', '')}`\n")
        for c in report["checks"]:
            w(f"- {c['number']} {c['name']}: {CELL[c['verdict']]}, {c['evidence']}")
        m = report["meaning"]
        w(f"- behind dropless: {m['dropless']}")
        w(f"- behind Kubernetes without a preStop hook: {m['kubernetes']}")
        fixes = "; then ".join(m["fixes"]) or "none needed"
        w(f"- smallest fix: {fixes}")
        w("")
    print("\n".join(out))


main()
