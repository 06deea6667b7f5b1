#!/usr/bin/env python3
"""The parts of bench/proxy_vs_peers.sh that are easier in Python.

  wrk < OUTPUT                 -> "REQ/S P99_MS REQUESTS ERRORS"
  h2load LOG < OUTPUT          -> the same, p99 computed from h2load's
                                  --log-file (one line per request)
  idle PORT N tls|plain        -> opens N keep-alive connections, one request
                                  each, prints "open N"; on a line on stdin
                                  prints how many are still open, then waits
                                  to be killed
  rss PID                      -> RSS of PID and its descendants, KB
  report RESULTS NA MEM OUT    -> the tables, in markdown, on stdout and in OUT
"""
import os
import re
import socket
import ssl
import statistics
import sys
import threading

PROXIES = ["dropless", "nginx", "haproxy", "traefik", "caddy"]
NAMES = {"dropless": "dropless", "nginx": "nginx", "haproxy": "HAProxy",
         "traefik": "Traefik", "caddy": "Caddy"}
PROTOCOLS = {
    "plain": "HTTP/1.1 keep-alive",
    "close": "HTTP/1.1 `Connection: close`",
    "tls": "HTTPS (TLS 1.3) keep-alive",
    "tls-close": "HTTPS (TLS 1.3) `Connection: close`",
    "h2c": "h2c",
    "h2": "h2 over TLS",
}
# The peers dropless is held against (issue 17: the better of the two).
RIVALS = ["nginx", "haproxy"]


def ms(value):
    """wrk's latency ("1.23ms", "850.00us", "1.02s") in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", value)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(text):
    n = rps = p99 = None
    errors = 0
    for line in text.splitlines():
        f = line.split()
        if "requests in" in line:
            n = int(f[0])
        elif line.startswith("Requests/sec"):
            rps = float(f[1])
        elif f[:1] == ["99%"]:
            p99 = ms(f[1])
        elif line.strip().startswith("Socket errors"):
            errors += sum(int(x) for x in re.findall(r"\d+", line))
        elif line.strip().startswith("Non-2xx or 3xx responses"):
            errors += int(f[-1])
    if n is None or rps is None or p99 is None:
        sys.exit("wrk printed no result:\n" + text)
    print(rps, p99, n, errors)


def parse_h2load(text, log):
    m = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", text)
    r = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (m and r and s):
        sys.exit("h2load printed no result:\n" + text)
    done, failed = int(r.group(1)), int(r.group(3))
    # "failed" counts errored and timed-out requests too.
    errors = failed + int(s.group(2)) + int(s.group(3)) + int(s.group(4))
    # --log-file: start time (us since the epoch), status, elapsed us.
    elapsed = sorted(int(line.split()[2]) for line in open(log) if line.strip())
    p99 = elapsed[min(len(elapsed) - 1, int(len(elapsed) * 0.99))] / 1000 if elapsed else 0.0
    print(float(m.group(1)), p99, done, errors)


def idle(port, n, tls):
    """Holds N idle keep-alive connections, each after one request."""
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    conns, failures = [], []
    lock = threading.Lock()

    def opener(count):
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                if ctx:
                    s = ctx.wrap_socket(s)
                s.sendall(req)
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"ok"):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError(f"closed after {data[:40]!r}")
                    data += chunk
                with lock:
                    conns.append(s)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    failures.append(repr(e))

    # A few threads, so the connections open faster than one at a time
    # (the sockets and TLS handshakes release the GIL).
    threads = [threading.Thread(target=opener, args=(n // 8 + (i < n % 8),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"{len(failures)} connections failed, first: {failures[0]}", file=sys.stderr)
    print("open", len(conns), flush=True)
    sys.stdin.readline()
    # A connection the proxy closed meanwhile is readable (EOF).
    import select
    poll = select.poll()
    for s in conns:
        poll.register(s.fileno(), select.POLLIN | select.POLLHUP)
    closed = {fd for fd, _ in poll.poll(0)}
    print("still", len(conns) - len(closed), flush=True)
    threading.Event().wait()


def rss(pid):
    """VmRSS of PID and all its descendants, KB."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(p))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += next(int(line.split()[1]) for line in open(f"/proc/{p}/status")
                          if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    print(total)


def report(results, na_file, mem_file, out, fields_file):
    rows = [line.split() for line in open(results)] if os.path.exists(results) else []
    # (proto, proxy) -> the fields dropless adds that this proxy did not.
    missing = {}
    for line in open(fields_file):
        proto, proxy, names = line.rstrip("\n").split(" ", 2)
        missing[(proto, proxy)] = names.replace(",", ", ")
    na = {}
    if os.path.exists(na_file):
        for line in open(na_file):
            proto, proxy, reason = line.rstrip("\n").split(" ", 2)
            na[(proto, proxy)] = reason
    mem = [line.split() for line in open(mem_file)] if os.path.exists(mem_file) else []
    env = os.environ
    lines = []
    say = lines.append
    say(f"Settings: ROUNDS={env['ROUNDS']} DURATION={env['DURATION']}s WARMUP={env['WARMUP']}s, "
        f"wrk -t{env['WRK_THREADS']} -c{env['CONNECTIONS']}, h2load -c{env['CONNECTIONS']} "
        f"-m{env['STREAMS']}; every proxy 2 threads or workers; backend nginx `return 200` "
        f"(1 worker); idle clients for the memory table: {env.get('IDLE', '?')}; "
        f"dropless at {env.get('COMMIT', '?')}.")
    say("")
    medians = {}
    for proto in PROTOCOLS:
        mine = [r for r in rows if r[0] == proto]
        if not mine and not any(k[0] == proto for k in na):
            continue
        say(f"### {PROTOCOLS[proto]} (`PROTO={proto}`)")
        say("")
        say("| proxy | median req/s | spread (min–max) | median p99 ms | CPU µs/req "
            "| client, backend CPU µs/req | failed requests "
            "| backend connections opened | rounds (req/s, ! = errors) |")
        say("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | --- |")
        for proxy in PROXIES:
            runs = [r for r in mine if r[1] == proxy]
            if (proto, proxy) in na or not runs:
                say(f"| {NAMES[proxy]} | n/a | | | | | | | {na.get((proto, proxy), 'not run')} |")
                continue
            rps = [float(r[3]) for r in runs]
            p99 = statistics.median(float(r[4]) for r in runs)
            n = sum(int(r[5]) for r in runs)
            errors = sum(int(r[6]) for r in runs)
            cpu = statistics.median(float(r[7]) for r in runs)
            client = statistics.median(float(r[9]) for r in runs)
            backend = statistics.median(float(r[10]) for r in runs)
            medians[(proto, proxy)] = (statistics.median(rps), p99, cpu)
            each = " ".join(f"{float(r[3]):.0f}" + ("!" if int(r[6]) else "") for r in runs)
            say(f"| {NAMES[proxy]} | {statistics.median(rps):.0f} | {min(rps):.0f}–{max(rps):.0f} "
                f"| {p99:.2f} | {cpu:.1f} | {client:.1f}, {backend:.1f} | {errors} of {n} | {sum(int(r[8]) for r in runs)} | {each} |")
        say("")
        lacking = [f"{NAMES[p]} ({missing[(proto, p)]})" for p in PROXIES if (proto, p) in missing]
        say("Every proxy adds X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and "
            "X-Request-Id to the request and X-Request-Id to the response"
            + (f", except: {'; '.join(lacking)}." if lacking else "."))
        say("")
        d = medians.get((proto, "dropless"))
        rivals = [p for p in RIVALS if (proto, p) in medians]
        if d and rivals:
            best = max(rivals, key=lambda p: medians[(proto, p)][0])
            low_p99 = min(rivals, key=lambda p: medians[(proto, p)][1])
            low_cpu = min(rivals, key=lambda p: medians[(proto, p)][2])
            say(f"dropless / best of nginx and HAProxy: throughput "
                f"{d[0] / medians[(proto, best)][0]:.2f}× ({NAMES[best]}), p99 "
                f"{d[1] / medians[(proto, low_p99)][1]:.2f}× ({NAMES[low_p99]}), CPU per request "
                f"{d[2] / medians[(proto, low_cpu)][2]:.2f}× ({NAMES[low_cpu]}).")
            say("")
    if mem:
        say("### Memory: idle keep-alive client connections (`PROTO=mem`)")
        say("")
        say("| proxy | connections | RSS before MB | RSS holding them MB | KB per connection |")
        say("| --- | --- | ---: | ---: | ---: |")
        for transport in ("plain", "tls"):
            for proxy in PROXIES:
                for r in mem:
                    if r[0] == transport and r[1] == proxy:
                        before, held, n, still = int(r[2]), int(r[3]), int(r[4]), int(r[5])
                        kind = "HTTPS" if transport == "tls" else "HTTP/1.1"
                        note = "" if still == n else f" ({n - still} closed by the proxy meanwhile)"
                        asked = int(env.get("IDLE", n))
                        if n < asked:
                            note += f" ({asked - n} of {asked} could not be opened)"
                        per = f"{(held - before) / still:.2f}" if still else "n/a"
                        say(f"| {NAMES[proxy]} | {still} {kind}{note} | {before / 1024:.1f} "
                            f"| {held / 1024:.1f} | {per} |")
        say("")
    if medians or mem:
        say("### Summary")
        say("")
    if medians:
        say("| protocol | " + " | ".join(f"{NAMES[p]} req/s" if p == "dropless" else NAMES[p]
                                         for p in PROXIES)
            + " | dropless CPU µs/req (best peer) |")
        say("| --- | " + " | ".join("---:" for _ in PROXIES) + " | --- |")
        for proto, title in PROTOCOLS.items():
            if not any(k[0] == proto for k in list(medians) + list(na)):
                continue
            cells = []
            for p in PROXIES:
                cells.append(f"{medians[(proto, p)][0]:.0f}" if (proto, p) in medians else "n/a")
            d = medians.get((proto, "dropless"))
            rivals = [p for p in RIVALS if (proto, p) in medians]
            cpu = "n/a"
            if d and rivals:
                low = min(rivals, key=lambda p: medians[(proto, p)][2])
                cpu = f"{d[2]:.1f} ({NAMES[low]} {medians[(proto, low)][2]:.1f})"
            say(f"| {title} | " + " | ".join(cells) + f" | {cpu} |")
        say("")
    if mem:
        n = max(int(r[5]) for r in mem)
        say(f"| {n} idle client connections: RSS MB (KB per connection) | "
            + " | ".join(NAMES[p] for p in PROXIES) + " |")
        say("| --- | " + " | ".join("---:" for _ in PROXIES) + " |")
        for transport, title in (("plain", "HTTP/1.1 keep-alive"), ("tls", "HTTPS keep-alive")):
            got = {r[1]: r for r in mem if r[0] == transport}
            if not got:
                continue
            cells = []
            for p in PROXIES:
                r = got.get(p)
                if not r or not int(r[5]):
                    cells.append("n/a")
                    continue
                before, held, still = int(r[2]), int(r[3]), int(r[5])
                cells.append(f"{held / 1024:.1f} ({(held - before) / still:.1f})")
            say(f"| {title} | " + " | ".join(cells) + " |")
        say("")
    text = "\n".join(lines)
    print(text)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "wrk":
        parse_wrk(sys.stdin.read())
    elif cmd == "h2load":
        parse_h2load(sys.stdin.read(), args[0])
    elif cmd == "idle":
        idle(int(args[0]), int(args[1]), args[2] == "tls")
    elif cmd == "rss":
        rss(int(args[0]))
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(f"unknown command {cmd}")
