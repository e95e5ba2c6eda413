#!/usr/bin/env python3
"""API clients of scenario `s3` (bench/scenarios/s3.sh). Stdlib only.

    s3api.py fill URL TOKEN USER COUNT CLIENTS
        COUNT small files (64-4159 bytes, spread over 10 folders like lib/mkfiles.py) uploaded
        by CLIENTS threads, each on its own keep-alive connection, through
        POST /v1/files/upload (raw body, X-Content-SHA256). Every answer must be 200 with the
        file's size and SHA-256. Prints "COUNT BYTES SECONDS".
    s3api.py list URL TOKEN USER CALLS EXPECT
        CALLS x GET /v1/files/all?user_id=USER over one keep-alive connection; each call is
        timed from sending the request to the last byte of the answer. The first and last
        answers must count EXPECT files (total_count and items). Prints one time a line
        (milliseconds).
    s3api.py init URL TOKEN USER CALLS
        CALLS x POST /v1/files/init (mode single, one 1 KiB file) over one keep-alive
        connection, timed as above; then (untimed) every session is aborted with
        DELETE /v1/files/uploads/{id}. Prints one time a line (milliseconds).
Any other status, or a broken connection, ends the run with exit 1 and the reason on stderr.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

FOLDERS = ["", "docs", "docs/2024", "docs/2025", "photos", "photos/2024/summer",
           "photos/2025", "music", "video/raw", "archive"]
NAMES = [("report", ".pdf"), ("photo", ".jpg"), ("notes", ".txt"), ("song", ".mp3"),
         ("clip", ".mp4"), ("data", ".csv")]


def fail(msg: str) -> None:
    print(f"s3api: {msg}", file=sys.stderr)
    sys.exit(1)


class Client:
    """One keep-alive connection to the server; reconnects only when the server closed it."""

    def __init__(self, url: str, token: str):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes, float]:
        h = {"X-Service-Token": self.token}
        h.update(headers or {})
        for attempt in (0, 1):
            try:
                t0 = time.perf_counter()
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data, time.perf_counter() - t0
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed between requests: once more on a
                # new one (the request never reached it).
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def fill(url: str, token: str, user: str, count: int, clients: int) -> None:
    blob = random.Random(4).randbytes(4096 + 64)
    next_i = iter(range(count))
    lock = threading.Lock()
    errors: list[str] = []
    total = [0]

    def worker() -> None:
        c = Client(url, token)
        rnd = random.Random()
        while not errors:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            folder = FOLDERS[i % len(FOLDERS)]
            stem, ext = NAMES[i % len(NAMES)]
            size = 64 + rnd.randrange(4096)
            data = blob[:size - 8] + i.to_bytes(8, "big")
            sha = hashlib.sha256(data).hexdigest()
            q = {"user_id": user, "filename": f"{stem} {i:05d}{ext}"}
            if folder:
                q["folder"] = folder
            path = "/v1/files/upload?" + urllib.parse.urlencode(q)
            try:
                st, body, _ = c.request("POST", path, data, {
                    "Content-Type": "application/octet-stream", "X-Content-SHA256": sha})
            except OSError as e:
                errors.append(f"upload {i}: {e!r}")
                return
            if st != 200:
                errors.append(f"upload {i}: {st} {body[:300]!r}")
                return
            f = json.loads(body)["files"][0]
            if f["size"] != size or f["sha256"] != sha:
                errors.append(f"upload {i}: answered {f}")
                return
            with lock:
                total[0] += size

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        fail(errors[0])
    print(count, total[0], f"{secs:.3f}")


def listing(url: str, token: str, user: str, calls: int, expect: int) -> None:
    c = Client(url, token)
    path = "/v1/files/all?" + urllib.parse.urlencode({"user_id": user})
    times = []
    for i in range(calls):
        st, body, secs = c.request("GET", path)
        if st != 200:
            fail(f"listing: {st} {body[:300]!r}")
        if i in (0, calls - 1):
            doc = json.loads(body)
            n = len(doc["files"])
            if doc["total_count"] != expect or n != expect:
                fail(f"listing: total_count {doc['total_count']}, {n} items, expected {expect}")
        times.append(secs)
    print("\n".join(f"{t * 1000:.3f}" for t in times))


def init(url: str, token: str, user: str, calls: int) -> None:
    c = Client(url, token)
    body = json.dumps({"mode": "single", "files": [{"name": "probe.bin", "size": 1024}],
                       "meta": {"user_id": user}}).encode()
    ids, times = [], []
    for _ in range(calls):
        st, data, secs = c.request("POST", "/v1/files/init", body,
                                   {"Content-Type": "application/json"})
        if st != 200:
            fail(f"init: {st} {data[:300]!r}")
        ids.append(json.loads(data)["uploadId"])
        times.append(secs)
    for u in ids:
        st, data, _ = c.request("DELETE", f"/v1/files/uploads/{u}")
        if st != 200:
            fail(f"abort {u}: {st} {data[:300]!r}")
    print("\n".join(f"{t * 1000:.3f}" for t in times))


def main() -> int:
    a = sys.argv[1:]
    if len(a) == 6 and a[0] == "fill":
        fill(a[1], a[2], a[3], int(a[4]), int(a[5]))
    elif len(a) == 6 and a[0] == "list":
        listing(a[1], a[2], a[3], int(a[4]), int(a[5]))
    elif len(a) == 5 and a[0] == "init":
        init(a[1], a[2], a[3], int(a[4]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
