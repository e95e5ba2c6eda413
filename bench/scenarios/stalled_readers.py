#!/usr/bin/env python3
"""Scenario `stalled_readers` (issue 16 item 2): clients that ask for a large response and
never read it.

One server with RESPONSE_STALL_TIMEOUT_SECS=10 (BENCH_STALL_TIMEOUT_S). Two phases, one after
the other: BENCH_STALL_CONNS (200) connections with a 2 KiB receive buffer (SO_RCVBUF before
connect) each send one GET and then read nothing, for
  (1) /storage/...: one file of BENCH_STALL_FILE_MB (64) MiB;
  (2) a Stored batch ZIP of two such files.
Before each phase the server's VmHWM is reset (/proc/PID/clear_refs) and its VmRSS and open
descriptors noted (the idle baseline); during the phase they are sampled every 100 ms. The
figures: peak RSS and descriptors above the baseline (and per connection), the time from the
last request sent until the descriptors are back at the baseline (due at the stall timeout),
and the RSS once they are. The server must answer /healthz all along and be alive at the end.
The old code had no stall timeout (nothing was freed: issue 16 measured +713 MB for 300 ZIP
readers and +74 MB, 2 descriptors each, for /storage), so the reference is the idle baseline.
Everything on 127.0.0.1; bounded by BENCH_STALL_WATCH_S (timeout + 20 s) a phase.
"""
from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
import urllib.request
from typing import Dict, List

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.environ.get("BENCH_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import loadlib as L  # noqa: E402
from loadlib import row  # noqa: E402

CONNS = int(os.environ.get("BENCH_STALL_CONNS", "200"))
STALL = int(os.environ.get("BENCH_STALL_TIMEOUT_S", "10"))
FILE_MB = int(os.environ.get("BENCH_STALL_FILE_MB", "64"))
WATCH = float(os.environ.get("BENCH_STALL_WATCH_S", str(STALL + 20)))
# A stalled connection may hold a few hundred KiB of response bytes (issue 16).
PER_CONN_LIMIT_KIB = 512
# Freed at the stall timeout, with room for a loaded machine.
FREE_MARGIN_S = 5.0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def upload(url: str, name: str, data: bytes) -> str:
    req = urllib.request.Request(f"{url}/v1/files/upload?user_id=stall&filename={name}", data=data,
                                 method="POST", headers={"X-Service-Token": L.TOKEN,
                                                         "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.loads(r.read())
    files = body.get("files") or [body]
    return files[0]["key"]


def batch_token(url: str, keys: List[str]) -> str:
    req = urllib.request.Request(f"{url}/v1/files/batch-download", method="POST",
                                 data=json.dumps({"keys": keys}).encode(),
                                 headers={"X-Service-Token": L.TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["token"]


def healthz_ms(url: str) -> float:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            r.read()
            if r.status != 200:
                return float("inf")
    except Exception:  # noqa: BLE001
        return float("inf")
    return (time.perf_counter() - t0) * 1000


def phase(srv: L.Server, what: str, path: str) -> Dict[str, float]:
    pid = srv.pid
    time.sleep(1.0)
    fds0 = fds(pid)
    rss0 = srv.status_kib("VmRSS")
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    socks = []
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    for _ in range(CONNS):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(head)
        socks.append(s)
    sent = time.monotonic()
    L.log(f"{what}: {CONNS} readers that never read; baseline {rss0} KiB RSS, {fds0} fds")
    peak_fds, peak_rss, freed_at, rss_freed, health = fds0, rss0, None, None, []
    next_health = sent
    while time.monotonic() - sent < WATCH:
        n, rss = fds(pid), srv.status_kib("VmRSS")
        peak_fds, peak_rss = max(peak_fds, n), max(peak_rss, rss)
        if time.monotonic() >= next_health:
            health.append(healthz_ms(srv.url))
            next_health += 1.0
        if n <= fds0 and time.monotonic() - sent > 1.0:
            freed_at = time.monotonic() - sent
            rss_freed = rss
            break
        time.sleep(0.1)
    hwm = srv.status_kib("VmHWM")
    peak_rss = max(peak_rss, hwm)
    for s in socks:
        s.close()
    time.sleep(1.0)
    return dict(fds0=fds0, rss0=rss0, peak_fds=peak_fds, peak_rss=peak_rss,
                freed=freed_at if freed_at is not None else float("nan"),
                rss_freed=rss_freed if rss_freed is not None else srv.status_kib("VmRSS"),
                fds_after=fds(pid), rss_after=srv.status_kib("VmRSS"),
                health_max=max(health) if health else float("nan"))


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(4096, 4 * CONNS + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    load_before = L.machine_load()
    tmp = L.bench_tmpdir()
    srv = L.Server(os.path.join(tmp, "root"), env={"RESPONSE_STALL_TIMEOUT_SECS": str(STALL),
                                                   "MAX_BODY_MB": "4096"})
    srv.start()
    L.log(f"server {srv.url}, RESPONSE_STALL_TIMEOUT_SECS={STALL}; {load_before}")
    data = os.urandom(FILE_MB << 20)
    k1 = upload(srv.url, "big1.bin", data)
    k2 = upload(srv.url, "big2.bin", data[::-1])
    token = batch_token(srv.url, [k1, k2])
    # One full read of each, so both start from warm caches and a filled buffer pool.
    for p in (f"/{k1}", f"/v1/files/batch-download/{token}"):
        with urllib.request.urlopen(srv.url + p, timeout=120) as r:
            while r.read(1 << 20):
                pass

    rows = []
    for what, path in (("/storage file", f"/{k1}"), ("batch ZIP", f"/v1/files/batch-download/{token}")):
        rows.append((what, phase(srv, what, path)))
    alive = srv.alive()

    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    row("setup", f"{CONNS} readers a phase, {FILE_MB} MiB file / 2-file ZIP, stall timeout {STALL} s")
    row("load at start", load_before)
    for what, r in rows:
        extra_kib = r["peak_rss"] - r["rss0"]
        per_conn = extra_kib / CONNS
        row(f"{what}: peak RSS (idle baseline)", mib(r["peak_rss"]), mib(r["rss0"]))
        row(f"{what}: peak RSS above baseline, per connection", f"{per_conn:.0f} KiB", "-", "-",
            f"< {PER_CONN_LIMIT_KIB} KiB", "PASS" if per_conn < PER_CONN_LIMIT_KIB else "FAIL")
        row(f"{what}: peak descriptors (idle baseline)",
            f"{r['peak_fds']} ({(r['peak_fds'] - r['fds0']) / CONNS:.2f} a connection)", str(r["fds0"]))
        freed = r["freed"]
        ok = freed == freed and STALL - 0.5 <= freed <= STALL + FREE_MARGIN_S
        shown = f"{freed:.1f} s" if freed == freed else f"not within {WATCH:.0f} s"
        row(f"{what}: descriptors back at baseline after", shown, f"timeout {STALL} s", "-",
            f"{STALL}-{STALL + FREE_MARGIN_S:.0f} s", "PASS" if ok else "FAIL")
        row(f"{what}: RSS once freed / 1 s after clients closed", f"{mib(r['rss_freed'])} / {mib(r['rss_after'])}",
            mib(r["rss0"]))
        row(f"{what}: descriptors 1 s after clients closed", str(r["fds_after"]), str(r["fds0"]), "-",
            f"<= {r['fds0']}", "PASS" if r["fds_after"] <= r["fds0"] else "FAIL")
        row(f"{what}: /healthz slowest during the phase", f"{r['health_max']:.1f} ms")
    row("server alive after all", "yes" if alive else "NO", "-", "-", "yes", "PASS" if alive else "FAIL")
    L.print_table()
    return 0


if __name__ == "__main__":
    L.run_main(main)
