#!/usr/bin/env python3
"""A load client that accounts for every request it starts.

ab drops requests still in flight when its time limit (-t) ends, and its
socket timeout (-s) only fires when every connection is idle, so one hung
connection among active ones is never reported. This client runs
CONCURRENCY workers for SECONDS (bounded: it stops by itself); each request
has its own timeout, and at the end every worker finishes (or times out)
the request it started. A request counts as done only with status 200 and
the whole body.

  http_load.py URL --concurrency 50 --seconds 30 [--keepalive] [--timeout 10]

Prints one JSON object: started, completed, failed, failures by reason,
slowest request (ms), and for each failure (first 20): when it started
(wall clock, s), its client port, and why.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--keepalive", action="store_true", help="reuse each worker's connection")
    a = p.parse_args()
    u = urllib.parse.urlsplit(a.url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    end = time.monotonic() + a.seconds
    lock = threading.Lock()
    totals = {"started": 0, "completed": 0, "failed": 0, "slowest_ms": 0.0}
    reasons = {}
    failures = []

    def worker():
        conn = None
        while time.monotonic() < end:
            with lock:
                totals["started"] += 1
            t0 = time.monotonic()
            wall0 = time.time()
            local = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
                    conn.connect()
                local = conn.sock.getsockname()[1]
                conn.request("GET", path, headers={} if a.keepalive else {"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                length = r.getheader("Content-Length")
                if r.status != 200 or (length is not None and int(length) != len(body)):
                    raise ValueError(f"status {r.status}, {len(body)} of {length} bytes")
                ok, why = True, None
            except Exception as e:  # every failure is counted by its kind
                ok, why = False, type(e).__name__
            if not ok or not a.keepalive:
                if conn is not None:
                    conn.close()
                conn = None
            ms = (time.monotonic() - t0) * 1000
            with lock:
                totals["slowest_ms"] = max(totals["slowest_ms"], ms)
                if ok:
                    totals["completed"] += 1
                else:
                    totals["failed"] += 1
                    reasons[why] = reasons.get(why, 0) + 1
                    if len(failures) < 20:
                        failures.append({"at": round(wall0, 3), "port": local, "why": why, "ms": round(ms)})
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals["failures"] = reasons
    totals["first_failures"] = failures
    totals["slowest_ms"] = round(totals["slowest_ms"], 1)
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
