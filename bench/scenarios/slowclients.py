#!/usr/bin/env python3
"""Scenario `slowclients`: bodies that trickle or stall, and 1,000 idle connections.

(a) One server with REQUEST_BODY_TIMEOUT_SECS=2 (BENCH_BODY_TIMEOUT_S). Each case declares a
    1,000-byte body and then sends it at 1 byte/s (BENCH_TRICKLE_MAX_S, 30 s at most) to
      PUT /v1/files/part/{id}/0                 (raw part)
      POST /v1/files/part                       (base64 JSON part, uploadId first)
      POST /v1/files/upload?user_id&filename     (one-request, raw)
      POST /v1/files/upload                      (one-request, multipart)
    plus a control that sends 10 bytes and then nothing (a stall). Each must be cut off by the
    read timeout (408 or the connection closed) and leave nothing: the session shows
    receivedBytes 0 and its folder only session.json, no .upload-* work folder, nothing in
    .parts/.staging, no one-request reservation left in the quota ledger. The time to the
    cut is reported.
(b) A second server with default settings. A normal client measures GET /healthz (keep-alive,
    and one new connection per request) and a 4 KiB download, p50/p99 over
    BENCH_IDLE_SAMPLES (400) requests each, first alone, then while 1,000 idle TCP
    connections (BENCH_IDLE_CONNS) that never send a byte are open, and reports the ratio.
    Then it watches for BENCH_IDLE_WATCH_S (45 s) whether the server closes those idle
    connections, 100 keep-alive connections left idle after one request, and 20 connections
    sending their request head at 1 byte/s (slowloris), and reports when (not a failure).
The file-descriptor limit is raised to 4096 or more (as `ulimit -n 4096` would).
"""
from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from typing import Dict, List, Optional, Tuple

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.environ.get("BENCH_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import loadlib as L  # noqa: E402
from loadlib import Http, jbody, percentile, row, svc  # noqa: E402

BODY_TIMEOUT = int(os.environ.get("BENCH_BODY_TIMEOUT_S", "2"))
TRICKLE_MAX = float(os.environ.get("BENCH_TRICKLE_MAX_S", "30"))
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "1000"))
SAMPLES = int(os.environ.get("BENCH_IDLE_SAMPLES", "400"))
WATCH = float(os.environ.get("BENCH_IDLE_WATCH_S", "45"))
DECLARED = 1000


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ (a) trickles


async def open_raw(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def trickle(port: int, head: bytes, prefix: bytes, rate_bytes: int,
                  stall_after: Optional[int]) -> Tuple[str, float, int, float]:
    """Sends `head` and `prefix` at once, then one byte a second of filler (or nothing after
    `stall_after` bytes). Returns (outcome, seconds from the first body byte, bytes sent,
    seconds from the last byte sent)."""
    r, w = await open_raw(port)
    w.write(head + prefix)
    await w.drain()
    t0 = t_last = time.monotonic()
    sent = len(prefix)
    resp = asyncio.create_task(r.readline())
    outcome = ""
    try:
        while time.monotonic() - t0 < TRICKLE_MAX:
            done, _ = await asyncio.wait({resp}, timeout=1.0)
            if done:
                line = resp.result()
                if not line:
                    outcome = "connection closed"
                else:
                    parts = line.decode("latin-1").split()
                    outcome = f"answered {parts[1] if len(parts) > 1 else line!r}"
                break
            if stall_after is None or sent < stall_after:
                try:
                    w.write(b"A" * rate_bytes)
                    await w.drain()
                    sent += rate_bytes
                    t_last = time.monotonic()
                except (ConnectionError, OSError):
                    outcome = "connection reset"
                    break
        else:
            outcome = "NOT cut off"
    except (ConnectionError, OSError):
        outcome = "connection reset"
    t_end = time.monotonic()
    resp.cancel()
    w.close()
    return outcome, t_end - t0, sent, t_end - t_last


def head_for(method: str, path: str, ctype: str, length: int) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Service-Token: {L.TOKEN}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n").encode()


async def part_a(server: L.Server) -> List[dict]:
    http = Http(server.port)

    async def new_session(name: str) -> str:
        h, b = jbody({"mode": "single", "files": [{"name": name, "size": DECLARED}], "meta": {"user_id": "slow"}})
        r = await http.request("POST", "/v1/files/init", svc(h), b)
        assert r.status == 200, r.body
        return r.json()["uploadId"]

    cases = []
    sid = await new_session("stall.bin")
    cases.append(dict(name="stall (10 bytes, then nothing) to PUT part", session=sid,
                      head=head_for("PUT", f"/v1/files/part/{sid}/0", "application/octet-stream", DECLARED),
                      prefix=b"A" * 10, stall_after=10, control=True))
    sid = await new_session("raw.bin")
    cases.append(dict(name="1 B/s to PUT /v1/files/part/{id}/0", session=sid,
                      head=head_for("PUT", f"/v1/files/part/{sid}/0", "application/octet-stream", DECLARED),
                      prefix=b"", stall_after=None))
    sid = await new_session("json.bin")
    prefix = f'{{"uploadId":"{sid}","partNumber":0,"chunkBase64":"'.encode()
    cases.append(dict(name="1 B/s to POST /v1/files/part (JSON)", session=sid,
                      head=head_for("POST", "/v1/files/part", "application/json", len(prefix) + DECLARED + 2),
                      prefix=prefix, stall_after=None))
    cases.append(dict(name="1 B/s to POST /v1/files/upload (raw)", session=None,
                      head=head_for("POST", "/v1/files/upload?user_id=slow&filename=trickle.bin",
                                    "application/octet-stream", DECLARED),
                      prefix=b"", stall_after=None))
    bnd = uuid.uuid4().hex
    prefix = (f'--{bnd}\r\nContent-Disposition: form-data; name="user_id"\r\n\r\nslow\r\n'
              f'--{bnd}\r\nContent-Disposition: form-data; name="file"; filename="mp.bin"\r\n'
              f'Content-Type: application/octet-stream\r\n\r\n').encode()
    cases.append(dict(name="1 B/s to POST /v1/files/upload (multipart)", session=None,
                      head=head_for("POST", "/v1/files/upload", f"multipart/form-data; boundary={bnd}",
                                    len(prefix) + DECLARED + len(bnd) + 8),
                      prefix=prefix, stall_after=None))
    results = await asyncio.gather(*(trickle(server.port, c["head"], c["prefix"], 1, c["stall_after"]) for c in cases))
    await asyncio.sleep(1.5)   # let the server drop what the cut requests held
    out = []
    for c, (outcome, dt, sent, since_last) in zip(cases, results):
        left: List[str] = []
        if c["session"]:
            r = await http.request("GET", f"/v1/files/uploads/{c['session']}", svc())
            if r.status != 200:
                left.append(f"session status {r.status}")
            elif r.json().get("receivedBytes") != 0:
                left.append(f"receivedBytes {r.json().get('receivedBytes')}")
            files = sorted(os.listdir(os.path.join(server.root, ".parts", c["session"])))
            if files != ["session.json"]:
                left.append(f"session folder holds {files}")
        out.append(dict(case=c["name"], outcome=outcome, seconds=dt, sent=sent, left=left, since_last=since_last,
                        control=c.get("control", False)))
    # Shared leftovers: work folders, staging, one-request reservations, storage.
    parts = os.path.join(server.root, ".parts")
    shared = [n for n in os.listdir(parts) if n.startswith(".upload-")]
    shared += [f".staging/{n}" for n in os.listdir(os.path.join(parts, ".staging"))]
    tree = L.check_tree(server.root)
    shared += tree.problems
    for u, led in tree.ledgers.items():
        for rid, b in (led.get("reserved") or {}).items():
            if rid.startswith("upload-"):
                shared.append(f"ledger of {u} still reserves {b} bytes for {rid}")
    if tree.files:
        shared.append(f"{tree.files} files stored under storage/")
    await http.close()
    return out + [dict(case="shared leftovers", left=shared)]


# ------------------------------------------------------------------ (b) idle connections


async def measure(port: int, key_path: str) -> Dict[str, List[float]]:
    res: Dict[str, List[float]] = {"healthz keep-alive": [], "healthz new connection": [], "4 KiB GET keep-alive": []}
    http = Http(port, timeout=30)
    for _ in range(SAMPLES):
        r = await http.request("GET", "/healthz")
        assert r.status == 200, r.status
        res["healthz keep-alive"].append(r.seconds)
    for _ in range(SAMPLES):
        r = await http.request("GET", key_path)
        assert r.status == 200 and len(r.body) == 4096, r.status
        res["4 KiB GET keep-alive"].append(r.seconds)
    await http.close()
    for _ in range(max(50, SAMPLES // 4)):
        t0 = time.perf_counter()
        c = Http(port, timeout=30)
        r = await c.request("GET", "/healthz")
        res["healthz new connection"].append(time.perf_counter() - t0)
        assert r.status == 200
        await c.close()
    return res


async def open_idle(port: int, n: int) -> List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for i in range(0, n, 100):
        batch = await asyncio.gather(*(open_raw(port) for _ in range(min(100, n - i))))
        conns.extend(batch)
    return conns


async def watch_closed(groups: Dict[str, List], seconds: float, slowloris: List) -> Dict[str, List[float]]:
    """Seconds until each connection saw EOF (or a reset); absent = still open."""
    t0 = time.monotonic()
    closed: Dict[str, List[float]] = {k: [] for k in groups}

    async def wait_eof(name, r):
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
        except (ConnectionError, OSError):
            pass
        closed[name].append(time.monotonic() - t0)

    async def drip(w, stop):
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        for i in range(len(head)):
            if stop.is_set():
                return
            try:
                w.write(head[i:i + 1])
                await w.drain()
            except (ConnectionError, OSError):
                return
            await asyncio.sleep(1)

    stop = asyncio.Event()
    tasks = [asyncio.create_task(wait_eof(name, r)) for name, conns in groups.items() for r, _ in conns]
    drips = [asyncio.create_task(drip(w, stop)) for _, w in slowloris]
    await asyncio.wait(tasks, timeout=seconds)
    stop.set()
    for t in tasks + drips:
        t.cancel()
    return closed


async def part_b(server: L.Server) -> dict:
    http = Http(server.port)
    r = await http.request("POST", "/v1/files/upload?user_id=idle&filename=small.bin",
                           svc({"Content-Type": "application/octet-stream"}), os.urandom(4096))
    assert r.status == 200, r.body
    key = r.json()["files"][0]["key"]
    await http.close()
    path = "/" + key
    fds0 = len(os.listdir(f"/proc/{server.pid}/fd"))
    base = await measure(server.port, path)
    idle = await open_idle(server.port, IDLE_CONNS)
    t_idle = time.monotonic()
    await asyncio.sleep(0.5)
    fds1 = len(os.listdir(f"/proc/{server.pid}/fd"))
    with_idle = await measure(server.port, path)
    # Keep-alive connections left idle after one request, and slow request heads.
    ka = []
    for _ in range(100):
        rr, ww = await open_raw(server.port)
        ww.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await ww.drain()
        await rr.readuntil(b"\r\n\r\n")
        ka.append((rr, ww))
    for rr, _ in ka:     # the small JSON body
        await asyncio.sleep(0)
    slow = await open_idle(server.port, 20)
    idle_age = time.monotonic() - t_idle  # the idle connections' age when the watch starts
    closed = await watch_closed({"idle (never sent a byte)": idle, "keep-alive idle after 1 request": ka,
                                 "slowloris (head at 1 B/s)": slow}, WATCH, slow)
    alive = server.alive()
    for _, w in idle + ka + slow:
        w.close()
    return dict(base=base, with_idle=with_idle, fds0=fds0, fds1=fds1, closed=closed, idle_age=idle_age,
                counts={"idle (never sent a byte)": len(idle), "keep-alive idle after 1 request": len(ka),
                        "slowloris (head at 1 B/s)": len(slow)}, alive=alive)


def ms(v: float) -> str:
    return f"{v * 1000:.2f}"


def main() -> int:
    limit = raise_fd_limit(max(4096, IDLE_CONNS + 1000))
    load_before = L.machine_load()
    L.log(f"fd limit {limit}; {load_before}")
    tmp = L.bench_tmpdir()
    root_a = os.path.join(tmp, "root-a")
    srv_a = L.Server(root_a, env={"REQUEST_BODY_TIMEOUT_SECS": str(BODY_TIMEOUT)})
    srv_a.start()
    L.log(f"(a) trickles: server {srv_a.url} with REQUEST_BODY_TIMEOUT_SECS={BODY_TIMEOUT}; up to {TRICKLE_MAX:.0f} s")
    res_a = asyncio.run(part_a(srv_a))
    srv_a.stop()
    root_b = os.path.join(tmp, "root-b")
    srv_b = L.Server(root_b)
    srv_b.start()
    L.log(f"(b) {IDLE_CONNS} idle connections: server {srv_b.url}; watching closes for {WATCH:.0f} s")
    res_b = asyncio.run(part_b(srv_b))
    srv_b.stop()

    print(f"slowclients: {os.cpu_count()} cores, {load_before} at start, fd limit {limit}")
    failed = False
    for c in res_a:
        if c["case"] == "shared leftovers":
            ok = not c["left"]
            row("(a) nothing left by the cut bodies", "nothing" if ok else f"{len(c['left'])} leftovers", "-", "-",
                "nothing", "PASS" if ok else "FAIL")
            failed |= not ok
            continue
        cut = c["outcome"] != "NOT cut off"
        ok = cut and not c["left"]
        failed |= not ok
        row(f"(a) {c['case']}", f"{c['outcome']} after {c['seconds']:.1f} s ({c['sent']} B sent, "
            f"last {c['since_last']:.1f} s before)",
            f"timeout {BODY_TIMEOUT} s", "-", "cut, nothing left",
            "PASS" if ok else "FAIL")
    bad_cases = [c for c in res_a if c.get("left")]
    for k in ("healthz keep-alive", "healthz new connection", "4 KiB GET keep-alive"):
        b, w = res_b["base"][k], res_b["with_idle"][k]
        p50b, p99b, p50w, p99w = (percentile(b, 50), percentile(b, 99), percentile(w, 50), percentile(w, 99))
        row(f"(b) {k}: p50 / p99 with {IDLE_CONNS} idle",
            f"{ms(p50w)} / {ms(p99w)} ms", f"{ms(p50b)} / {ms(p99b)} ms alone",
            f"{p50w / p50b:.2f} / {p99w / p99b:.2f}", "all served", "PASS")
    row("(b) server fds: before / with idle connections", f"{res_b['fds0']} / {res_b['fds1']}",
        f"+{IDLE_CONNS} expected", "-", "-", "info")
    for name, n in res_b["counts"].items():
        t = sorted(res_b["closed"][name])
        if t:
            age = res_b["idle_age"] if name.startswith("idle") else 0
            val = (f"{len(t)} of {n} closed, after {t[0] + age:.1f}-{t[-1] + age:.1f} s")
        else:
            val = f"0 of {n} closed in {WATCH:.0f} s"
        row(f"(b) server closes {name}", val, "-", "-", "-", "info")
    row("(b) server alive after all", "yes" if res_b["alive"] else "NO", "-", "-", "yes",
        "PASS" if res_b["alive"] else "FAIL")
    failed |= not res_b["alive"]
    L.print_table()
    for c in bad_cases:
        for line in c["left"][:10]:
            print(f"   left by {c['case']}: {line}")
    if failed:
        print("slowclients: FAIL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    L.run_main(main)
