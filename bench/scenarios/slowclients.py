#!/usr/bin/env python3
"""Scenario `slowclients`: bodies that trickle or stall, and 1,000 idle connections.

(a) One server with REQUEST_BODY_TIMEOUT_SECS=2 (BENCH_BODY_TIMEOUT_S) and the default
    minimum body rate (REQUEST_BODY_MIN_RATE 1024 B/s over REQUEST_BODY_RATE_WINDOW_SECS 30 s;
    BENCH_MIN_RATE / BENCH_RATE_WINDOW_S change them). Each case declares a 1,000-byte body and
    then sends it at 1 byte/s (BENCH_TRICKLE_MAX_S, 45 s at most) to
      PUT /v1/files/part/{id}/0                 (raw part)
      POST /v1/files/part                       (base64 JSON part, uploadId first)
      POST /v1/files/upload?user_id&filename     (one-request, raw)
      POST /v1/files/upload                      (one-request, multipart)
    plus a control that sends 10 bytes and then nothing (a stall). Each must be cut off (408
    or the connection closed) and leave nothing: the session shows receivedBytes 0 and its
    folder only session.json, no .upload-* work folder, nothing in .parts/.staging, no
    one-request reservation in the quota ledger. The time to the cut is reported. A last case
    sends a raw part slowly but above the minimum (1.5 x the rate for 40 s): it must be stored.
(b) A second server with REQUEST_HEADER_TIMEOUT_SECS=15 and KEEPALIVE_TIMEOUT_SECS=25
    (BENCH_HEADER_TIMEOUT_S, BENCH_KEEPALIVE_S; shorter than the defaults 30 / 75 s so the
    watch is short). A normal client measures GET /healthz (keep-alive, and one new connection
    per request) and a 4 KiB download, p50/p99 over BENCH_IDLE_SAMPLES (400) requests each,
    first alone, then while 1,000 idle TCP connections (BENCH_IDLE_CONNS) that never send a
    byte are open (checked still open after the measurement), and reports the ratio. Then it
    watches for BENCH_IDLE_WATCH_S (35 s) when the server closes those idle connections (due
    at the header timeout after they opened), 100 keep-alive connections left idle after one
    request (due at the keep-alive timeout) and 20 connections sending their request head at
    1 byte/s (slowloris, due at the header timeout), and whether its descriptors come back.
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
MIN_RATE = int(os.environ.get("BENCH_MIN_RATE", "1024"))
RATE_WINDOW = int(os.environ.get("BENCH_RATE_WINDOW_S", "30"))
TRICKLE_MAX = float(os.environ.get("BENCH_TRICKLE_MAX_S", "45"))
HEADER_TIMEOUT = int(os.environ.get("BENCH_HEADER_TIMEOUT_S", "15"))
KEEPALIVE = int(os.environ.get("BENCH_KEEPALIVE_S", "25"))
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "1000"))
SAMPLES = int(os.environ.get("BENCH_IDLE_SAMPLES", "400"))
WATCH = float(os.environ.get("BENCH_IDLE_WATCH_S", "35"))
DECLARED = 1000
# The slow but acceptable client: 1.5 x the minimum rate for 40 s (shorter if TRICKLE_MAX is).
SLOW_OK_RATE = MIN_RATE * 3 // 2
SLOW_OK_SECONDS = int(max(1.0, min(40.0, TRICKLE_MAX - 5)))


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

    async def new_session(name: str, size: int = DECLARED) -> str:
        h, b = jbody({"mode": "single", "files": [{"name": name, "size": size}], "meta": {"user_id": "slow"}})
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
    slow_size = SLOW_OK_RATE * SLOW_OK_SECONDS
    sid = await new_session("slow-ok.bin", slow_size)
    cases.append(dict(name=f"{SLOW_OK_RATE} B/s for {SLOW_OK_SECONDS} s to PUT part (above the minimum)",
                      session=sid, head=head_for("PUT", f"/v1/files/part/{sid}/0", "application/octet-stream",
                                                 slow_size),
                      prefix=b"", stall_after=slow_size, rate=SLOW_OK_RATE, accept=True))
    results = await asyncio.gather(*(trickle(server.port, c["head"], c["prefix"], c.get("rate", 1),
                                             c["stall_after"]) for c in cases))
    await asyncio.sleep(1.5)   # let the server drop what the cut requests held
    out = []
    for c, (outcome, dt, sent, since_last) in zip(cases, results):
        left: List[str] = []
        if c.get("accept"):
            r = await http.request("GET", f"/v1/files/uploads/{c['session']}", svc())
            if not (outcome.startswith("answered") and "200" in outcome):
                left.append(f"not stored: {outcome}")
            elif r.status != 200 or r.json().get("receivedBytes") != c["stall_after"]:
                left.append(f"session status {r.status} {r.body[:200]!r}")
        elif c["session"]:
            r = await http.request("GET", f"/v1/files/uploads/{c['session']}", svc())
            if r.status != 200:
                left.append(f"session status {r.status}")
            elif r.json().get("receivedBytes") != 0:
                left.append(f"receivedBytes {r.json().get('receivedBytes')}")
            files = sorted(os.listdir(os.path.join(server.root, ".parts", c["session"])))
            if files != ["session.json"]:
                left.append(f"session folder holds {files}")
        out.append(dict(case=c["name"], outcome=outcome, seconds=dt, sent=sent, left=left, since_last=since_last,
                        control=c.get("control", False), accept=c.get("accept", False)))
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
    t_meas = time.monotonic()
    with_idle = await measure(server.port, path)
    meas_s = time.monotonic() - t_meas
    fds2 = len(os.listdir(f"/proc/{server.pid}/fd"))
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
    fds3 = len(os.listdir(f"/proc/{server.pid}/fd")) if alive else -1
    for _, w in idle + ka + slow:
        w.close()
    return dict(base=base, with_idle=with_idle, fds0=fds0, fds1=fds1, fds2=fds2, fds3=fds3, meas_s=meas_s,
                closed=closed, idle_age=idle_age,
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
    srv_a = L.Server(root_a, env={"REQUEST_BODY_TIMEOUT_SECS": str(BODY_TIMEOUT),
                                  "REQUEST_BODY_MIN_RATE": str(MIN_RATE),
                                  "REQUEST_BODY_RATE_WINDOW_SECS": str(RATE_WINDOW)})
    srv_a.start()
    L.log(f"(a) trickles: server {srv_a.url} with REQUEST_BODY_TIMEOUT_SECS={BODY_TIMEOUT}, "
          f"min rate {MIN_RATE} B/s over {RATE_WINDOW} s; up to {TRICKLE_MAX:.0f} s")
    res_a = asyncio.run(part_a(srv_a))
    srv_a.stop()
    root_b = os.path.join(tmp, "root-b")
    srv_b = L.Server(root_b, env={"REQUEST_HEADER_TIMEOUT_SECS": str(HEADER_TIMEOUT),
                                  "KEEPALIVE_TIMEOUT_SECS": str(KEEPALIVE)})
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
        if c["accept"]:
            ok = not c["left"]
            failed |= not ok
            row(f"(a) {c['case']}", f"{c['outcome']} after {c['seconds']:.1f} s ({c['sent']} B sent)",
                f"min {MIN_RATE} B/s over {RATE_WINDOW} s", "-", "stored", "PASS" if ok else "FAIL")
            continue
        cut = c["outcome"] != "NOT cut off"
        ok = cut and not c["left"]
        failed |= not ok
        ref = (f"idle timeout {BODY_TIMEOUT} s" if c["control"]
               else f"min {MIN_RATE} B/s over {RATE_WINDOW} s")
        row(f"(a) {c['case']}", f"{c['outcome']} after {c['seconds']:.1f} s ({c['sent']} B sent, "
            f"last {c['since_last']:.1f} s before)",
            ref, "-", "cut, nothing left",
            "PASS" if ok else "FAIL")
    bad_cases = [c for c in res_a if c.get("left")]
    for k in ("healthz keep-alive", "healthz new connection", "4 KiB GET keep-alive"):
        b, w = res_b["base"][k], res_b["with_idle"][k]
        p50b, p99b, p50w, p99w = (percentile(b, 50), percentile(b, 99), percentile(w, 50), percentile(w, 99))
        row(f"(b) {k}: p50 / p99 with {IDLE_CONNS} idle",
            f"{ms(p50w)} / {ms(p99w)} ms", f"{ms(p50b)} / {ms(p99b)} ms alone",
            f"{p50w / p50b:.2f} / {p99w / p99b:.2f}", "all served", "PASS")
    row("(b) server fds: before / with idle / after the measurement",
        f"{res_b['fds0']} / {res_b['fds1']} / {res_b['fds2']}",
        f"+{IDLE_CONNS} expected", "-", "-", "info")
    still_open = res_b["fds2"] >= res_b["fds1"] - 5
    row("(b) idle connections open during the whole measurement",
        f"{'yes' if still_open else 'NO'} ({res_b['meas_s']:.1f} s)", f"header timeout {HEADER_TIMEOUT} s",
        "-", "yes", "PASS" if still_open else "FAIL")
    failed |= not still_open
    for name, n in res_b["counts"].items():
        t = sorted(res_b["closed"][name])
        due = KEEPALIVE if name.startswith("keep-alive") else HEADER_TIMEOUT
        age = res_b["idle_age"] if name.startswith("idle") else 0
        if t:
            first, last = t[0] + age, t[-1] + age
            val = f"{len(t)} of {n} closed, after {first:.1f}-{last:.1f} s"
        else:
            first = last = 0.0
            val = f"0 of {n} closed in {WATCH:.0f} s"
        ok = len(t) == n and due - 1.0 <= first and last <= due + 3.0
        failed |= not ok
        what = "keep-alive timeout" if name.startswith("keep-alive") else "header timeout"
        row(f"(b) server closes {name}", val, f"{what} {due} s", "-", f"all, at {due} s",
            "PASS" if ok else "FAIL")
    fds_back = 0 <= res_b["fds3"] <= res_b["fds0"] + 5
    row("(b) server fds after the watch", str(res_b["fds3"]), f"{res_b['fds0']} before", "-",
        "back to before", "PASS" if fds_back else "FAIL")
    failed |= not fds_back
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
