"""Renders docs/frameworks.md from the reports scripts/frameworks wrote.

Usage: table.py REPORTS_DIR VERSIONS_FILE RATE GRACE DELAY ROOT > docs/frameworks.md
"""
import json
import shlex
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
    "gunicorn": "Its health endpoint never turns 503 and the arbiter stops accepting at SIGTERM, "
                "but the listening socket stays open in the workers until they exit: connections "
                "made meanwhile wait in the listen backlog and are reset unanswered (check 2). With "
                "fewer workers than requests in flight, requests already waiting there at SIGTERM "
                "are reset too. Sync workers answer with `Connection: close`, so keep-alive cannot "
                "go wrong.",
    "uvicorn": "Stops accepting at once, finishes the requests in flight and closes idle "
               "keep-alive connections, but ends a busy keep-alive connection after its response "
               "without `Connection: close` (check 5): a client reusing it at that moment races "
               "the close. It exits by re-raising SIGTERM.",
    "node-http": "On Node 20 `server.close()` closes the idle keep-alive connections once, but a "
                 "connection that keeps getting requests stays open, is answered without "
                 "`Connection: close`, and keeps the server alive: it never exits and is killed "
                 "after the grace period, and requests on those connections race their close "
                 "(checks 4, 5, 7). This is the talk's keep-alive lesson.",
    "express-terminus": "terminus would answer 503 on its health check, but without a "
                        "`beforeShutdown` delay it closes the listener at SIGTERM, so nobody sees "
                        "the 503 (check 1). It closes idle keep-alive connections at once (a "
                        "request sent as one closed was lost in this run, check 4) and ends busy "
                        "ones without `Connection: close` (check 5). It exits by re-raising "
                        "SIGTERM.",
    "go-net-http": "`Shutdown` is a correct HTTP/1.1 drain: listener closed, idle connections "
                   "closed, `Connection: close` on busy ones, in-flight requests finished. Only the "
                   "readiness change and a pre-stop delay are missing, as for every framework here.",
    "axum": "hyper's graceful shutdown: in-flight finished, idle closed, `Connection: close` on "
            "busy connections, GOAWAY on HTTP/2 (h2c answered in this build, where hyper's HTTP/2 "
            "is compiled in for dropless-lifecycle; axum's default features alone leave it out).",
    "actix-web": "Handles SIGTERM itself: closes its listener and the idle keep-alive "
                 "connections at once and finishes in-flight requests with `Connection: close`. "
                 "Closing at once races: in this run a connection made as SIGTERM arrived was "
                 "reset, and a request sent on a keep-alive connection as it closed was lost "
                 "(checks 2 and 4). No readiness change, no pre-stop delay.",
    "dropless-lifecycle": "`Connection: close` on busy connections, one more message on idle "
                          "ones (closed after 1 s), GOAWAY on HTTP/2. Its readiness turns 503 at "
                          "SIGTERM, but with the default `pre_stop` of 0 s the listener closes at "
                          "the same moment (check 1): set `pre_stop`, or deploy it with dropless.",
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
      "and writes this file; measured here: 3 min 54 s on a fresh clone with nothing built "
      "(the language runtimes installed and the pip, npm and cargo download caches warm), "
      "1 min 7 s with everything built).\n")
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
      "which stops routing and drains before it sends SIGTERM, all of them are safe. "
      "Checks 2 and 4 count races (a connection or a request meeting a close): one seen is a "
      "real loss, but a run without one does not prove there is none, so a framework that "
      "closes at once can pass them in one run and fail them in the next.\n")
    for key, title, report in details:
        w(f"### {title}\n")
        if key in READING:
            w(READING[key] + "\n")
        command = shlex.join(report["command"])
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
