#!/usr/bin/env python3
"""Uploads a file as base64 JSON parts, the way the old SDK does, and times it.

    json_parts.py URL TOKEN FILE SHA256_HEX [--part-mib 8] [--user bench] [--settle S]

init (mode "chunked"), then for each slice i (from 0) POST /v1/files/part with
{"uploadId":..,"partNumber":i,"chunkBase64":..} over one persistent connection, sent one
after the other, then complete with the SHA-256. The bodies are encoded in memory before
the clock starts (the file size in base64, ~1.37x); end_to_end_s runs from the first part
to the end of complete. Prints one JSON object with the timings
(seconds) to stdout; exits 1 on any non-200 answer or a hash mismatch. Stdlib only.
"""
import argparse
import base64
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse

TIMEOUT = 300  # seconds per request


def fail(msg: str) -> None:
    print(f"BROKEN: {msg}", file=sys.stderr)
    sys.exit(1)


def connect(url: str) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def call(conn, method, path, token, body_parts, ctype="application/json"):
    """Sends one request whose body is the concatenation of body_parts; returns JSON."""
    length = sum(len(p) for p in body_parts)
    conn.putrequest(method, path, skip_accept_encoding=True)
    conn.putheader("X-Service-Token", token)
    conn.putheader("Content-Type", ctype)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    for p in body_parts:
        conn.send(p)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        fail(f"{method} {path} -> {resp.status}: {data[:500]!r}")
    return json.loads(data)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("token")
    ap.add_argument("file")
    ap.add_argument("sha256")
    ap.add_argument("--part-mib", type=int, default=8)
    ap.add_argument("--user", default="bench")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait between encoding and sending")
    a = ap.parse_args()

    size = os.path.getsize(a.file)
    part = a.part_mib << 20
    conn = connect(a.url)

    t0 = time.perf_counter()
    init = json.dumps({
        "mode": "chunked",
        "files": [{"name": "big-json.bin", "size": size}],
        "meta": {"user_id": a.user},
    }).encode()
    upload_id = call(conn, "POST", "/v1/files/init", a.token, [init])["uploadId"]
    t_init = time.perf_counter()

    # The bodies are built before the clock starts: Python's base64 encoder runs at only
    # ~330 MB/s on this machine, so encoding inside the timed loop would measure the
    # client. The encode time is reported on its own (client_b64_s).
    e0 = time.perf_counter()
    bodies = []
    with open(a.file, "rb") as f:
        i = 0
        while True:
            chunk = f.read(part)
            if not chunk:
                break
            head = b'{"uploadId":"%s","partNumber":%d,"chunkBase64":"' % (upload_id.encode(), i)
            bodies.append(b"".join([head, base64.b64encode(chunk), b'"}']))
            i += 1
    encode = time.perf_counter() - e0
    parts = len(bodies)
    time.sleep(a.settle)

    lat = []
    t_start = time.perf_counter()
    for i, body in enumerate(bodies):
        p0 = time.perf_counter()
        r = call(conn, "POST", "/v1/files/part", a.token, [body])
        lat.append(time.perf_counter() - p0)
        if r.get("partNumber") != i:
            fail(f"part {i}: unexpected answer {r}")
        bodies[i] = None  # free as we go
    t_parts = time.perf_counter()

    done = json.dumps({
        "uploadId": upload_id,
        "sha256": a.sha256,
        "meta": {"user_id": a.user},
    }).encode()
    r = call(conn, "POST", "/v1/files/complete", a.token, [done])
    t_done = time.perf_counter()
    conn.close()
    if r.get("sha256") != a.sha256:
        fail(f"complete returned sha256 {r.get('sha256')}, file has {a.sha256}")
    if r.get("size") != size:
        fail(f"complete returned size {r.get('size')}, file has {size}")

    print(json.dumps({
        "upload_id": upload_id,
        "key": r.get("key"),
        "size": size,
        "parts": parts,
        "init_s": t_init - t0,
        "parts_s": t_parts - t_start,
        "complete_s": t_done - t_parts,
        "end_to_end_s": t_done - t_start,
        "client_b64_s": encode,
        "part_s_min": min(lat, default=0),
        "part_s_median": sorted(lat)[len(lat) // 2] if lat else 0,
        "part_s_max": max(lat, default=0),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
