"""Load with verification, and the same load with SIGKILLs (scenarios `load` and `crash`).

N clients (BENCH_LOAD_CLIENTS, 64), each on its own keep-alive connection, run for
BENCH_LOAD_SECONDS (60) a weighted mix of:
  single_raw        init single, PUT /v1/files/part/{id}/0 (raw), complete with sha256
  chunked_b64       init chunked, 2-6 base64 JSON parts (POST /v1/files/part), often out of
                    order, sometimes chunkBase64 before uploadId (the staging path), sometimes
                    a part sent twice (replaced), a session status check, complete
  chunked_raw       init chunked, 2-5 raw PUT parts out of order, complete
  direct_raw        POST /v1/files/upload?user_id&filename[&folder] raw body (X-Content-SHA256 half the time)
  direct_multipart  POST /v1/files/upload multipart, 1-2 files
  range / full GET  /storage/{key} with one Range (206, bytes checked) or whole (200)
  list              GET /v1/files/all: every file confirmed before the request and not being
                    deleted is listed with its size; nothing deleted before it is listed
  signed            GET /v1/files/signed-url, then the URL (with a Range half the time)
  zip               POST /v1/files/batch-download of 2-4 files, GET the archive, every entry's
                    bytes hashed against the ledger, testzip()
  delete            DELETE one of the client's own files
Files are spread over BENCH_LOAD_USERS (8) users, 0 B - 4 MiB (BENCH_LOAD_MAX_KIB), folders
and non-ASCII names included. The client keeps a ledger (key -> sha256, size) of every upload
answered 200 and of every delete. A file being read is pinned (its owner does not delete it
meanwhile), so any 404 of a confirmed file is a loss.

At the end: every live file downloaded and hashed, every user's listing equal to the
ledger (keys, sizes, totals), one more ZIP of up to 40 files checked entry by entry, zero
5xx; then the server is stopped and UPLOAD_ROOT walked (no orphan sidecar, no dot-file
under storage/, quota ledgers equal to the bytes on disk).

Crash mode (scenario `crash`): a killer SIGKILLs the server BENCH_CRASH_KILLS (6) times at
random moments and restarts it on the same port and root. Clients retry refused
connections; a request cut by a kill has an unknown outcome and is resolved: parts are
resent after GET /v1/files/uploads/{id}; a cut complete is retried if the session is still
there, else its file must exist; a cut one-request upload may or may not exist; a cut
delete is repeated until 200 or 404. Right before each kill the killer leaves a session
half sent (parts 0 and 2 of 3); after the restart it must resume (status lists the parts,
part 1 is sent, complete succeeds). After the run the server is restarted once more
(start-up sweep and quota reconcile) and the same checks run, plus: each listed file not in
the ledger must be the bytes of a cut upload, each leftover session answers its status.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import sys
import time
import urllib.parse
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

sys.path.insert(0, os.environ.get("BENCH_LIB") or os.path.dirname(os.path.abspath(__file__)))
import loadlib as L  # noqa: E402
from loadlib import ConnError, Http, jbody, percentile, row, svc  # noqa: E402

KIB = 1024
MIB = 1024 * 1024

# ------------------------------------------------------------------ content

POOL_LEN = 24 * MIB
_POOL: bytes = b""


def pool() -> bytes:
    global _POOL
    if not _POOL:
        _POOL = random.Random(20261128).randbytes(POOL_LEN)
    return _POOL


def content(seed: int, size: int) -> bytes:
    """Unique bytes per seed (its 8 bytes first), the rest a slice of a random pool."""
    head = seed.to_bytes(8, "big")
    if size <= 8:
        return head[8 - size:] if size else b""
    off = (seed * 7919 * 4099) % (POOL_LEN - size)
    return head + pool()[off:off + size - 8]


# ------------------------------------------------------------------ ledger


@dataclass
class FileRec:
    key: str
    user: str
    size: int
    sha: str
    seed: int
    client: int
    name: str
    confirmed_at: float
    pins: int = 0
    deleting: bool = False


@dataclass
class Unknown:
    """An upload whose answer was lost to a kill."""
    user: str
    size: int
    sha: str
    seed: int
    kind: str
    must_exist: bool  # complete cut, session gone afterwards: the file must be there
    matched: Optional[str] = None


class Ledger:
    def __init__(self):
        self.live: Dict[str, FileRec] = {}
        self.pickable: List[str] = []
        self._idx: Dict[str, int] = {}
        self.by_client: Dict[int, Set[str]] = {}
        self.by_user: Dict[str, Set[str]] = {}
        self.deleted: Dict[str, float] = {}        # key -> time its delete was confirmed
        self.delete_started: Dict[str, float] = {}
        self.unknown: List[Unknown] = []
        self.confirmed_total = 0

    def add(self, rec: FileRec) -> None:
        if rec.key in self.live or rec.key in self.deleted:
            raise AssertionError(f"key returned twice: {rec.key}")
        self.live[rec.key] = rec
        self._idx[rec.key] = len(self.pickable)
        self.pickable.append(rec.key)
        self.by_client.setdefault(rec.client, set()).add(rec.key)
        self.by_user.setdefault(rec.user, set()).add(rec.key)
        self.confirmed_total += 1

    def _unpick(self, key: str) -> None:
        i = self._idx.pop(key, None)
        if i is None:
            return
        last = self.pickable.pop()
        if last != key:
            self.pickable[i] = last
            self._idx[last] = i

    def pick(self, rng: random.Random, n: int = 1) -> List[FileRec]:
        if not self.pickable:
            return []
        keys = [self.pickable[rng.randrange(len(self.pickable))] for _ in range(n)]
        return [self.live[k] for k in keys]

    def start_delete(self, rec: FileRec) -> None:
        rec.deleting = True
        self.delete_started[rec.key] = time.monotonic()
        self._unpick(rec.key)

    def confirm_delete(self, rec: FileRec) -> None:
        self.live.pop(rec.key, None)
        self.by_client.get(rec.client, set()).discard(rec.key)
        self.by_user.get(rec.user, set()).discard(rec.key)
        self.deleted[rec.key] = time.monotonic()


# ------------------------------------------------------------------ stats


class Stats:
    def __init__(self):
        self.lat: Dict[str, List[float]] = {}
        self.codes: Dict[str, Dict[int, int]] = {}
        self.requests = 0
        self.five_xx: List[str] = []
        self.failures: List[str] = []
        self.conn_errors = 0         # requests cut (crash mode: by a kill)
        self.refused_retries = 0
        self.ops: Dict[str, int] = {}
        self.counters: Dict[str, int] = {}

    def note(self, kind: str, res: L.Response, path: str) -> None:
        self.requests += 1
        self.lat.setdefault(kind, []).append(res.seconds)
        c = self.codes.setdefault(kind, {})
        c[res.status] = c.get(res.status, 0) + 1
        if res.status >= 500:
            self.five_xx.append(f"{kind} {path[:120]} -> {res.status} {res.body[:200]!r}")

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        if len(self.failures) <= 30:
            L.log(f"FAILURE: {msg}")

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


class OpAbort(Exception):
    """Stop this operation (already recorded)."""


def storage_path(key: str) -> str:
    assert key.startswith("storage/"), key
    return "/storage/" + urllib.parse.quote(key[len("storage/"):], safe="/")


def key_url(key: str) -> str:
    return urllib.parse.quote(key, safe="/")


NAMES = ["photo.jpg", "notes.txt", "data.bin", "report final.pdf", "clip.mp4", "page.html",
         "archive.zip", "résumé.txt", "файл.dat", "图片.png", "a+b&c=d.bin", "no_ext"]
FOLDERS = [None, None, "docs", "a/b", "photos/2026/nov", "Ünïcode dir"]


class Run:
    def __init__(self, server: L.Server, crash: bool, clients: int, seconds: float, users: int,
                 max_kib: int, seed: int):
        self.server = server
        self.crash = crash
        self.n_clients = clients
        self.seconds = seconds
        self.users = [f"load-u{i}" for i in range(users)]
        self.max_size = max_kib * KIB
        self.rng = random.Random(seed)
        self.seed_base = seed * 1_000_000_000
        self.next_seed = 0
        self.ledger = Ledger()
        self.stats = Stats()
        self.deadline = 0.0
        self.kills = 0
        self.kill_log: List[str] = []
        self.resumed_probes = 0
        self.half_made: List[str] = []
        self.server_down = asyncio.Event()
        self.bytes_up = 0
        self.bytes_down = 0

    # ---------------------------------------------------------- plumbing

    def new_seed(self) -> int:
        self.next_seed += 1
        return self.seed_base + self.next_seed

    def pick_size(self, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.02:
            return 0
        if r < 0.60:
            return rng.randint(1, 64 * KIB)
        if r < 0.90:
            return rng.randint(64 * KIB, min(MIB, self.max_size))
        return rng.randint(min(MIB, self.max_size), self.max_size)

    async def call(self, http: Http, kind: str, method: str, path: str, headers=None, body=None,
                   timeout=None) -> L.Response:
        """One request. Refused connections (server down) are retried for up to 60 s: the
        request never left. Other connection failures raise ConnError (outcome unknown)."""
        t_end = time.monotonic() + 60
        while True:
            try:
                res = await http.request(method, path, headers, body, timeout)
                self.stats.note(kind, res, path)
                if body:
                    self.bytes_up += len(body)
                self.bytes_down += len(res.body)
                return res
            except ConnError as e:
                if not e.sent and self.crash and time.monotonic() < t_end:
                    self.stats.refused_retries += 1
                    await asyncio.sleep(0.05)
                    continue
                self.stats.conn_errors += 1
                if not self.crash:
                    self.stats.fail(f"connection error: {e}")
                    raise OpAbort() from None
                raise

    def expect(self, res: L.Response, want, what: str) -> None:
        ok = res.status in want if isinstance(want, (tuple, list, set)) else res.status == want
        if not ok:
            if res.status < 500:  # 5xx are already counted
                self.stats.fail(f"{what}: status {res.status} {res.body[:200]!r}")
            raise OpAbort()

    def confirm(self, client: int, user: str, key: str, size: int, sha: str, seed: int, name: str,
                answer: dict, what: str) -> None:
        if answer.get("size") != size or (answer.get("sha256") or "").lower() != sha:
            self.stats.fail(f"{what}: answer says size {answer.get('size')} sha {answer.get('sha256')}, "
                            f"sent {size} {sha}")
        if not key.startswith(f"storage/{user}/"):
            self.stats.fail(f"{what}: key {key} not under the user {user}")
        try:
            self.ledger.add(FileRec(key, user, size, sha, seed, client, name, time.monotonic()))
        except AssertionError as e:
            self.stats.fail(str(e))

    # ---------------------------------------------------------- uploads

    def new_file(self, rng: random.Random):
        seed = self.new_seed()
        size = self.pick_size(rng)
        data = content(seed, size)
        return seed, size, data, L.sha256_hex(data)

    def name_for(self, rng: random.Random, seed: int) -> str:
        base = rng.choice(NAMES)
        stem, dot, ext = base.rpartition(".")
        return f"{stem}-{seed % 100000}.{ext}" if dot else f"{base}-{seed % 100000}"

    async def session_upload(self, http: Http, cid: int, rng: random.Random, kind: str) -> None:
        user = self.users[cid % len(self.users)]
        seed, size, data, sha = self.new_file(rng)
        name = self.name_for(rng, seed)
        folder = rng.choice(FOLDERS)
        mode = "single" if kind == "single_raw" else "chunked"
        if kind == "single_raw" or size == 0:
            cuts = [0, size]
        else:
            k = rng.randint(2, 6 if kind == "chunked_b64" else 5)
            inner = sorted(rng.sample(range(1, size), min(k - 1, size - 1))) if size > 1 else []
            cuts = [0] + inner + [size]
        base_no = rng.choice([0, 1])
        parts = [(base_no + i, data[cuts[i]:cuts[i + 1]]) for i in range(len(cuts) - 1)]
        if size == 0 and kind != "single_raw":
            parts = []   # an empty file: complete with no part at all
        order = list(parts)
        if len(order) > 1 and rng.random() < 0.6:
            rng.shuffle(order)
        init = {"mode": mode, "files": [{"name": name, "size": size}], "meta": {"user_id": user}}
        if folder:
            init["folder"] = folder
        h, b = jbody(init)
        try:
            res = await self.call(http, "init", "POST", "/v1/files/init", svc(h), b)
        except ConnError:
            self.stats.inc("cut: init (session may exist, never resumed)")
            return
        self.expect(res, 200, "init")
        uid = res.json()["uploadId"]

        async def send(n: int, chunk: bytes) -> None:
            for attempt in range(30):
                try:
                    if kind == "chunked_b64":
                        b64 = base64.b64encode(chunk).decode()
                        if rng.random() < 0.2:   # chunk before uploadId: the staging path
                            obj = {"chunkBase64": b64, "partNumber": n, "uploadId": uid}
                        else:
                            obj = {"uploadId": uid, "partNumber": n, "chunkBase64": b64}
                        hh, bb = jbody(obj)
                        r = await self.call(http, "part_json", "POST", "/v1/files/part", svc(hh), bb)
                    else:
                        r = await self.call(http, "part_put", "PUT", f"/v1/files/part/{uid}/{n}",
                                            svc({"Content-Type": "application/octet-stream"}), chunk)
                except ConnError:
                    self.stats.inc("cut: part (resent)")
                    continue
                self.expect(r, 200, f"part {n} of {uid}")
                if r.json().get("partNumber") != n:
                    self.stats.fail(f"part answer {r.body[:100]!r} for part {n}")
                return
            self.stats.fail(f"part {n} of {uid}: no answer after 30 tries")
            raise OpAbort()

        sent = 0
        for i, (n, chunk) in enumerate(order):
            await send(n, chunk)
            sent += len(chunk)
            if i == 0 and len(order) > 1 and rng.random() < 0.25:
                await send(n, chunk)   # the same part again: replaces it
            if kind != "single_raw" and rng.random() < 0.15:
                st = await self.status(http, uid)
                if st is not None and st.get("receivedBytes") != sent:
                    self.stats.fail(f"session {uid}: receivedBytes {st.get('receivedBytes')} after {sent} sent")
        await self.finish_session(http, cid, user, uid, parts, size, sha, seed, name, send)

    async def status(self, http: Http, uid: str) -> Optional[dict]:
        for _ in range(30):
            try:
                r = await self.call(http, "session_status", "GET", f"/v1/files/uploads/{uid}", svc())
            except ConnError:
                continue
            if r.status == 404:
                return None
            self.expect(r, 200, f"status of {uid}")
            return r.json()
        raise OpAbort()

    async def finish_session(self, http, cid, user, uid, parts, size, sha, seed, name, send) -> None:
        for attempt in range(10):
            h, b = jbody({"uploadId": uid, "sha256": sha, "meta": {"user_id": user, "run": "load"}})
            try:
                res = await self.call(http, "complete", "POST", "/v1/files/complete", svc(h), b)
            except ConnError:
                self.stats.inc("cut: complete")
                st = await self.status(http, uid)
                if st is None:
                    # Gone: the complete went through before the kill (a complete the kill
                    # cut short gives the session back at start-up). Its file must exist.
                    self.ledger.unknown.append(Unknown(user, size, sha, seed, "complete", True))
                    self.stats.inc("cut complete: session gone, file must exist")
                    return
                self.stats.inc("cut complete: session given back, completed again")
                have = {p["partNumber"]: p["size"] for p in st.get("parts", [])}
                for n, chunk in parts:
                    if have.get(n) != len(chunk):
                        self.stats.inc("cut complete: part resent")
                        await send(n, chunk)
                continue
            if res.status == 404 and attempt > 0:
                self.ledger.unknown.append(Unknown(user, size, sha, seed, "complete", True))
                return
            self.expect(res, 200, f"complete {uid}")
            ans = res.json()
            self.confirm(cid, user, ans["key"], size, sha, seed, name, ans, f"complete {uid}")
            return
        self.stats.fail(f"complete {uid}: gave up after 10 tries")

    async def direct_raw(self, http: Http, cid: int, rng: random.Random) -> None:
        user = self.users[cid % len(self.users)]
        seed, size, data, sha = self.new_file(rng)
        name = self.name_for(rng, seed)
        q = {"user_id": user, "filename": name}
        folder = rng.choice(FOLDERS)
        if folder:
            q["folder"] = folder
        h = {"Content-Type": "application/octet-stream"}
        if rng.random() < 0.5:
            h["X-Content-SHA256"] = sha
        try:
            res = await self.call(http, "upload_raw", "POST", "/v1/files/upload?" + urllib.parse.urlencode(q),
                                  svc(h), data)
        except ConnError:
            self.ledger.unknown.append(Unknown(user, size, sha, seed, "upload_raw", False))
            self.stats.inc("cut: one-request upload (outcome unknown)")
            return
        self.expect(res, 200, "upload raw")
        f = res.json()["files"]
        if len(f) != 1:
            self.stats.fail(f"upload raw answered {len(f)} files")
            return
        self.confirm(cid, user, f[0]["key"], size, sha, seed, name, f[0], "upload raw")

    async def direct_multipart(self, http: Http, cid: int, rng: random.Random) -> None:
        user = self.users[cid % len(self.users)]
        files = [self.new_file(rng) for _ in range(rng.choice([1, 1, 2]))]
        boundary = uuid.uuid4().hex
        out = io.BytesIO()
        fields = [("user_id", user)]
        folder = rng.choice(FOLDERS)
        if folder and folder.isascii():
            fields.append(("folder", folder))
        for k, v in fields:
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        names = []
        for seed, size, data, sha in files:
            name = f"mp-{seed % 100000}.bin"
            names.append(name)
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                      f'Content-Type: application/octet-stream\r\n\r\n'.encode())
            out.write(data)
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
        try:
            res = await self.call(http, "upload_multipart", "POST", "/v1/files/upload",
                                  svc({"Content-Type": f"multipart/form-data; boundary={boundary}"}),
                                  out.getvalue())
        except ConnError:
            for seed, size, data, sha in files:
                self.ledger.unknown.append(Unknown(user, size, sha, seed, "upload_multipart", False))
            self.stats.inc("cut: one-request upload (outcome unknown)")
            return
        self.expect(res, 200, "upload multipart")
        got = res.json()["files"]
        if len(got) != len(files):
            self.stats.fail(f"multipart of {len(files)} files answered {len(got)}")
            return
        for (seed, size, data, sha), name, f in zip(files, names, got):
            self.confirm(cid, user, f["key"], size, sha, seed, name, f, "upload multipart")

    # ---------------------------------------------------------- reads

    def check_bytes(self, rec: FileRec, got: bytes, start: int, what: str) -> bool:
        want = content(rec.seed, rec.size)[start:start + len(got)]
        if got != want:
            self.stats.fail(f"{what}: {rec.key} bytes {start}+{len(got)} differ from what was sent")
            return False
        return True

    async def read_file(self, http: Http, rng: random.Random, signed: bool) -> None:
        recs = self.ledger.pick(rng)
        if not recs:
            return
        rec = recs[0]
        rec.pins += 1
        try:
            if signed:
                try:
                    r = await self.call(http, "sign", "GET",
                                        "/v1/files/signed-url?key=" + urllib.parse.quote(rec.key, safe=""), svc())
                except ConnError:
                    return
                self.expect_live(rec, r, "signed-url")
                url = r.json()["url"]
                if not url.startswith(self.server.url + "/"):
                    self.stats.fail(f"signed url {url} does not start with {self.server.url}")
                    return
                path, kind_full, kind_range = url[len(self.server.url):], "get_signed", "get_signed"
                hdr: Dict[str, str] = {}
            else:
                path, kind_full, kind_range = storage_path(rec.key), "get_full", "get_range"
                hdr = {}
            ranged = rec.size > 0 and rng.random() < (0.5 if signed else 0.8)
            if ranged:
                a = rng.randrange(rec.size)
                b = min(rec.size - 1, a + rng.randint(0, 256 * KIB))
                hdr["Range"] = f"bytes={a}-{b}"
            try:
                r = await self.call(http, kind_range if ranged else kind_full, "GET", path, hdr)
            except ConnError:
                return
            if ranged:
                self.expect_live(rec, r, "ranged GET", want=206)
                cr = r.headers.get("content-range", "")
                if cr != f"bytes {a}-{b}/{rec.size}" or len(r.body) != b - a + 1:
                    self.stats.fail(f"range {a}-{b} of {rec.key} ({rec.size}): Content-Range {cr!r}, "
                                    f"{len(r.body)} bytes")
                    return
                self.check_bytes(rec, r.body, a, "ranged GET")
            else:
                self.expect_live(rec, r, "GET")
                if len(r.body) != rec.size or L.sha256_hex(r.body) != rec.sha:
                    self.stats.fail(f"GET {rec.key}: {len(r.body)} bytes, sha differs from what was sent")
        finally:
            rec.pins -= 1

    def expect_live(self, rec: FileRec, r: L.Response, what: str, want: int = 200) -> None:
        if r.status == 404:
            self.stats.fail(f"{what}: 404 for a confirmed, pinned file {rec.key} (lost)")
            raise OpAbort()
        self.expect(r, want, f"{what} {rec.key}")

    async def listing(self, http: Http, rng: random.Random) -> None:
        user = rng.choice(self.users)
        t_send = time.monotonic()
        confirmed = {k for k in self.ledger.by_user.get(user, set())}
        try:
            r = await self.call(http, "list", "GET", "/v1/files/all?user_id=" + urllib.parse.quote(user), svc())
        except ConnError:
            return
        self.expect(r, 200, f"list {user}")
        body = r.json()
        listed = {f["key"]: f["size"] for f in body["files"]}
        if body.get("total_count") != len(listed) or body.get("total_size") != sum(listed.values()):
            self.stats.fail(f"list {user}: totals {body.get('total_count')}/{body.get('total_size')} vs "
                            f"{len(listed)}/{sum(listed.values())} in the list")
        for k in confirmed:
            rec = self.ledger.live.get(k)
            started = self.ledger.delete_started.get(k)
            if rec is None or (started is not None):
                continue  # a delete began: either answer is right
            if k not in listed:
                self.stats.fail(f"list {user}: confirmed file {k} missing")
            elif listed[k] != rec.size:
                self.stats.fail(f"list {user}: {k} size {listed[k]} != {rec.size}")
        for k in listed:
            t_del = self.ledger.deleted.get(k)
            if t_del is not None and t_del < t_send:
                self.stats.fail(f"list {user}: {k} listed after its delete was answered")

    async def zip_op(self, http: Http, rng: random.Random, n: Optional[int] = None) -> int:
        recs = self.ledger.pick(rng, n or rng.randint(2, 4))
        if not recs:
            return 0
        for rec in recs:
            rec.pins += 1
        try:
            h, b = jbody({"keys": [r.key for r in recs]})
            try:
                r = await self.call(http, "zip_post", "POST", "/v1/files/batch-download", svc(h), b)
            except ConnError:
                return 0
            if r.status == 404:
                self.stats.fail(f"batch-download: 404 for confirmed files: {r.body[:200]!r}")
                return 0
            self.expect(r, 200, "batch-download POST")
            tok = r.json()["token"]
            try:
                r = await self.call(http, "zip_get", "GET", f"/v1/files/batch-download/{tok}", timeout=120)
            except ConnError:
                return 0
            self.expect(r, 200, "batch-download GET")
            cl = r.headers.get("content-length")
            if cl is not None and int(cl) != len(r.body):
                self.stats.fail(f"zip: Content-Length {cl}, {len(r.body)} bytes")
            try:
                zf = zipfile.ZipFile(io.BytesIO(r.body))
                bad = zf.testzip()
                if bad:
                    self.stats.fail(f"zip: bad entry {bad}")
                infos = zf.infolist()
                got = sorted(L.sha256_hex(zf.read(i)) for i in infos)
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                self.stats.fail(f"zip of {len(recs)} files unreadable: {e!r}")
                return 0
            want = sorted(rec.sha for rec in recs)
            if got != want:
                self.stats.fail(f"zip: entries' sha256 differ from the ledger ({len(got)} entries, "
                                f"{len(want)} files: {[rec.key for rec in recs]})")
                return 0
            self.stats.inc("zip entries verified", len(recs))
            return len(recs)
        finally:
            for rec in recs:
                rec.pins -= 1

    async def delete_op(self, http: Http, cid: int, rng: random.Random) -> None:
        mine = [k for k in self.ledger.by_client.get(cid, ()) if self.ledger.live[k].pins == 0
                and not self.ledger.live[k].deleting]
        if not mine:
            return
        rec = self.ledger.live[rng.choice(mine)]
        self.ledger.start_delete(rec)
        cut = False
        for _ in range(30):
            try:
                r = await self.call(http, "delete", "DELETE", f"/v1/files/{key_url(rec.key)}", svc())
            except ConnError:
                cut = True
                self.stats.inc("cut: delete (repeated)")
                continue
            if r.status == 404 and cut:
                self.ledger.confirm_delete(rec)   # the cut delete went through
                return
            if r.status == 404:
                self.stats.fail(f"delete: 404 for a confirmed file {rec.key} (lost)")
                self.ledger.confirm_delete(rec)
                return
            self.expect(r, 200, f"delete {rec.key}")
            self.ledger.confirm_delete(rec)
            return
        self.stats.fail(f"delete {rec.key}: no answer after 30 tries")

    # ---------------------------------------------------------- clients

    WEIGHTS = [("single_raw", 12), ("chunked_b64", 10), ("chunked_raw", 5), ("direct_raw", 10),
               ("direct_multipart", 5), ("read", 30), ("list", 8), ("signed", 8), ("zip", 4),
               ("delete", 8)]

    async def client(self, cid: int) -> None:
        rng = random.Random(self.rng.random())
        http = Http(self.server.port, timeout=120)
        ops, weights = zip(*self.WEIGHTS)
        try:
            while time.monotonic() < self.deadline:
                op = rng.choices(ops, weights)[0]
                if not self.ledger.pickable and op in ("read", "signed", "zip"):
                    op = "direct_raw"
                self.stats.ops[op] = self.stats.ops.get(op, 0) + 1
                try:
                    if op in ("single_raw", "chunked_b64", "chunked_raw"):
                        await self.session_upload(http, cid, rng, op)
                    elif op == "direct_raw":
                        await self.direct_raw(http, cid, rng)
                    elif op == "direct_multipart":
                        await self.direct_multipart(http, cid, rng)
                    elif op == "read":
                        await self.read_file(http, rng, signed=False)
                    elif op == "signed":
                        await self.read_file(http, rng, signed=True)
                    elif op == "list":
                        await self.listing(http, rng)
                    elif op == "zip":
                        await self.zip_op(http, rng)
                    elif op == "delete":
                        await self.delete_op(http, cid, rng)
                except OpAbort:
                    pass
                except ConnError as e:
                    self.stats.inc("ops cut by a kill")
                    if not self.crash:
                        self.stats.fail(f"connection error: {e}")
        finally:
            await http.close()

    # ---------------------------------------------------------- killer

    async def killer(self, kills: int) -> None:
        http = Http(self.server.port, timeout=60)
        t0 = time.monotonic()
        span = self.seconds - 4
        times = sorted(t0 + 2 + span * (i + 0.5 + self.rng.uniform(-0.35, 0.35)) / kills for i in range(kills))
        loop = asyncio.get_running_loop()
        for at in times:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            probe = await self.probe_start(http)
            hwm = self.server.note_hwm()
            await loop.run_in_executor(None, self.server.kill)
            self.kills += 1
            t_kill = time.monotonic()
            dt = await loop.run_in_executor(None, self.server.start)
            self.kill_log.append(f"kill {self.kills} at {t_kill - t0:.1f} s (VmHWM {hwm} KiB), "
                                 f"back after {time.monotonic() - t_kill:.2f} s")
            L.log(self.kill_log[-1])
            await http.close()
            if probe:
                await self.probe_resume(http, *probe)
        await http.close()

    async def probe_start(self, http: Http):
        """A 3-part session with parts 0 and 2 sent, left for the kill."""
        user = self.users[0]
        seed = self.new_seed()
        size = 3 * MIB - 12345
        data = content(seed, size)
        parts = [(0, data[:MIB]), (1, data[MIB:2 * MIB]), (2, data[2 * MIB:])]
        try:
            h, b = jbody({"mode": "chunked", "files": [{"name": f"probe-{seed % 100000}.bin", "size": size}],
                          "meta": {"user_id": user}})
            r = await self.call(http, "init", "POST", "/v1/files/init", svc(h), b)
            self.expect(r, 200, "probe init")
            uid = r.json()["uploadId"]
            for n in (2, 0):
                r = await self.call(http, "part_put", "PUT", f"/v1/files/part/{uid}/{n}",
                                    svc({"Content-Type": "application/octet-stream"}), parts[n][1])
                self.expect(r, 200, "probe part")
        except (ConnError, OpAbort):
            self.stats.fail("resume probe: could not start a session before the kill")
            return None
        return uid, user, seed, size, data, parts

    async def probe_resume(self, http: Http, uid, user, seed, size, data, parts) -> None:
        try:
            st = await self.status(http, uid)
            if st is None:
                self.stats.fail(f"resume probe: session {uid} lost by the kill (404)")
                return
            have = {p["partNumber"]: p["size"] for p in st["parts"]}
            if have != {0: MIB, 2: len(parts[2][1])} or st.get("receivedBytes") != MIB + len(parts[2][1]):
                self.stats.fail(f"resume probe: after the kill the session shows {st}")
                return
            r = await self.call(http, "part_put", "PUT", f"/v1/files/part/{uid}/1",
                                svc({"Content-Type": "application/octet-stream"}), parts[1][1])
            self.expect(r, 200, "probe part 1")
            sha = L.sha256_hex(data)
            h, b = jbody({"uploadId": uid, "sha256": sha})
            r = await self.call(http, "complete", "POST", "/v1/files/complete", svc(h), b)
            self.expect(r, 200, "probe complete")
            ans = r.json()
            self.confirm(-1, user, ans["key"], size, sha, seed, f"probe-{seed % 100000}.bin", ans, "probe complete")
            self.resumed_probes += 1
        except (ConnError, OpAbort):
            self.stats.fail(f"resume probe {uid}: failed after the restart")

    # ---------------------------------------------------------- final checks

    async def verify_all(self) -> Dict[str, int]:
        """Downloads every live file; compares every listing with the ledger; resolves the
        cut uploads; one big ZIP."""
        out = {"verified": 0, "lost": 0, "corrupt": 0, "phantom": 0, "listing_mismatch": 0,
               "unknown_found": 0, "unknown_absent": 0, "must_exist_missing": 0}
        keys = list(self.ledger.live.keys())
        conns = [Http(self.server.port, timeout=120) for _ in range(16)]
        idle: asyncio.Queue = asyncio.Queue()
        for c in conns[2:]:
            idle.put_nowait(c)

        async def fetch(i: int, key: str) -> Optional[bytes]:
            http = await idle.get()
            try:
                r = await http.request("GET", storage_path(key))
            finally:
                idle.put_nowait(http)
            self.stats.note("verify_get", r, key)
            if r.status == 404:
                return None
            if r.status != 200:
                self.stats.fail(f"verify GET {key}: {r.status}")
                return None
            return r.body

        bodies = await asyncio.gather(*(fetch(i, k) for i, k in enumerate(keys)))
        for key, body in zip(keys, bodies):
            rec = self.ledger.live[key]
            if body is None:
                out["lost"] += 1
                self.stats.fail(f"LOST: {key} ({rec.size} bytes) answered 200 at upload, now 404")
            elif len(body) != rec.size or L.sha256_hex(body) != rec.sha:
                out["corrupt"] += 1
                self.stats.fail(f"CORRUPT: {key}: {len(body)} bytes, sha256 differs")
            else:
                out["verified"] += 1
        # Deleted keys must stay gone.
        for key in list(self.ledger.deleted)[:200]:
            r = await conns[0].request("HEAD", storage_path(key))
            if r.status != 404:
                self.stats.fail(f"deleted {key} answers {r.status}")
        # Listings.
        unknown_by_user: Dict[str, List[Unknown]] = {}
        for u in self.ledger.unknown:
            unknown_by_user.setdefault(u.user, []).append(u)
        extra_listed: List[tuple] = []
        for user in self.users:
            r = await conns[0].request("GET", "/v1/files/all?user_id=" + urllib.parse.quote(user),
                                       svc())
            self.stats.note("verify_list", r, user)
            if r.status != 200:
                self.stats.fail(f"final list {user}: {r.status}")
                out["listing_mismatch"] += 1
                continue
            body = r.json()
            listed = {f["key"]: f["size"] for f in body["files"]}
            if body["total_count"] != len(listed) or body["total_size"] != sum(listed.values()):
                self.stats.fail(f"final list {user}: totals {body['total_count']}/{body['total_size']} "
                                f"!= {len(listed)}/{sum(listed.values())}")
                out["listing_mismatch"] += 1
            mine = {k: self.ledger.live[k].size for k in self.ledger.by_user.get(user, set())}
            for k, s in mine.items():
                if k not in listed:
                    out["listing_mismatch"] += 1
                    self.stats.fail(f"final list {user}: {k} missing")
                elif listed[k] != s:
                    out["listing_mismatch"] += 1
                    self.stats.fail(f"final list {user}: {k} size {listed[k]} != {s}")
            for k, s in listed.items():
                if k not in mine:
                    extra_listed.append((user, k, s))
        # Files nobody was told about: each must be the bytes of a cut upload.
        for user, k, s in extra_listed:
            r = await conns[0].request("GET", storage_path(k))
            sha = L.sha256_hex(r.body) if r.status == 200 else None
            cand = [u for u in unknown_by_user.get(user, []) if u.matched is None and u.sha == sha and u.size == s]
            if not cand:
                out["phantom"] += 1
                self.stats.fail(f"PHANTOM: {k} ({s} bytes) is listed but was never confirmed, and is "
                                f"not the bytes of any cut upload")
                continue
            cand.sort(key=lambda u: not u.must_exist)
            cand[0].matched = k
            out["unknown_found"] += 1
            out["verified"] += 1
            self.ledger.live[k] = FileRec(k, user, s, sha, cand[0].seed, -2, "", time.monotonic())
            self.ledger.by_user.setdefault(user, set()).add(k)
        for u in self.ledger.unknown:
            if u.matched is None:
                if u.must_exist:
                    out["must_exist_missing"] += 1
                    self.stats.fail(f"LOST: a complete cut by a kill whose session was gone afterwards left "
                                    f"no file (user {u.user}, {u.size} bytes)")
                else:
                    out["unknown_absent"] += 1
        # One more ZIP over up to 40 files.
        zrng = random.Random(7)
        self.ledger.pickable = list(self.ledger.live.keys())
        self.ledger._idx = {k: i for i, k in enumerate(self.ledger.pickable)}
        n_zip = min(40, len(self.ledger.pickable))
        if n_zip:
            recs = zrng.sample(self.ledger.pickable, n_zip)
            self.ledger.pickable = recs
            self.ledger._idx = {k: i for i, k in enumerate(recs)}
            # zip_op picks with replacement; use all of them instead.
            out["final_zip_entries"] = await self.final_zip(conns[1], [self.ledger.live[k] for k in recs])
        for c in conns:
            await c.close()
        return out

    async def final_zip(self, http: Http, recs: List[FileRec]) -> int:
        h, b = jbody({"keys": [r.key for r in recs]})
        r = await http.request("POST", "/v1/files/batch-download", svc(h), b)
        self.stats.note("zip_post", r, "final")
        if r.status != 200:
            self.stats.fail(f"final zip POST: {r.status} {r.body[:200]!r}")
            return 0
        r = await http.request("GET", "/v1/files/batch-download/" + r.json()["token"], timeout=300)
        self.stats.note("zip_get", r, "final")
        if r.status != 200:
            self.stats.fail(f"final zip GET: {r.status}")
            return 0
        zf = zipfile.ZipFile(io.BytesIO(r.body))
        if zf.testzip():
            self.stats.fail("final zip: testzip found a bad entry")
        got = sorted(L.sha256_hex(zf.read(i)) for i in zf.infolist())
        if got != sorted(rec.sha for rec in recs):
            self.stats.fail("final zip: entries differ from the ledger")
            return 0
        return len(recs)

    async def leftover_sessions(self, ids: List[str]) -> int:
        """Every session left in .parts must answer its status (so a client can resume). A
        folder without a readable session.json (an init cut between mkdir and the write;
        its client never got the id) must answer 404 and is counted apart."""
        http = Http(self.server.port)
        ok = 0
        for uid in ids:
            r = await http.request("GET", f"/v1/files/uploads/{uid}", svc())
            self.stats.note("session_status", r, uid)
            d = os.path.join(self.server.root, ".parts", uid)
            sj = os.path.join(d, "session.json")
            readable = os.path.exists(sj) and os.path.getsize(sj) > 0
            if not readable:
                self.half_made.append(f"{uid}: holds {sorted(os.listdir(d))}, status {r.status}")
                if r.status == 404:
                    ok += 1
                elif r.status < 500:
                    self.stats.fail(f"half-made session {uid}: status {r.status}")
                continue
            if r.status != 200:
                self.stats.fail(f"leftover session {uid}: status {r.status} {r.body[:200]!r}")
                continue
            st = r.json()
            # Part files, and parts appended to the data file (seg_{n}_{offset}_{size});
            # a part file wins over a segment of the same number.
            sizes = {}
            segs = {}
            d = os.path.join(self.server.root, ".parts", uid)
            for n in os.listdir(d):
                if n.startswith("part_") and not n.endswith(".sum"):
                    sizes[n[5:]] = os.path.getsize(os.path.join(d, n))
                elif n.startswith("seg_") and n.count("_") == 3:
                    _, num, _, size = n.split("_")
                    segs[num] = int(size)
            on_disk = sum(sizes.values()) + sum(v for k, v in segs.items() if k not in sizes)
            if st.get("receivedBytes") != on_disk:
                self.stats.fail(f"leftover session {uid}: receivedBytes {st.get('receivedBytes')} != {on_disk}")
                continue
            ok += 1
        await http.close()
        return ok


# ------------------------------------------------------------------ main


def main(crash: bool) -> int:
    clients = int(os.environ.get("BENCH_LOAD_CLIENTS", "64"))
    seconds = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
    users = int(os.environ.get("BENCH_LOAD_USERS", "8"))
    max_kib = int(os.environ.get("BENCH_LOAD_MAX_KIB", "4096"))
    kills = int(os.environ.get("BENCH_CRASH_KILLS", "6"))
    seed = int(os.environ.get("BENCH_LOAD_SEED", str(int(time.time()))))
    mode = "crash" if crash else "load"
    if crash and os.environ.get("BENCH_CRASH_POINTS_ONLY") == "1":
        return points_only()
    load_before = L.machine_load()
    L.log(f"{mode}: {clients} clients, {seconds:.0f} s, {users} users, files 0 B-{max_kib} KiB, seed {seed}"
          + (f", {kills} kills" if crash else "") + f"; {load_before}")
    tmp = L.bench_tmpdir()
    root = os.path.join(tmp, "root")
    os.makedirs(root)
    server = L.Server(root)
    server.start()
    L.log(f"server pid {server.pid} on {server.url}, root {root}")
    pool()
    run = Run(server, crash, clients, seconds, users, max_kib, seed)

    async def drive():
        run.deadline = time.monotonic() + seconds
        cpu0 = time.process_time()
        scpu0 = server.cpu_s()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(run.client(i)) for i in range(clients)]
        killer = asyncio.create_task(run.killer(kills)) if crash else None
        # Bounded: clients stop starting ops at the deadline; an op in flight gets 240 s more.
        done, pending = await asyncio.wait(tasks + ([killer] if killer else []), timeout=seconds + 240)
        for t in pending:
            t.cancel()
        if pending:
            run.stats.fail(f"{len(pending)} clients still busy 240 s after the deadline (hang?)")
        for t in done:
            if t.exception() is not None:
                e = t.exception()
                run.stats.fail(f"client crashed: {e!r}")
        wall = time.monotonic() - t0
        return wall, time.process_time() - cpu0, server.cpu_s() - scpu0 if not crash else None

    wall, client_cpu, server_cpu = asyncio.run(drive())
    st = run.stats
    hwm_run = server.note_hwm()
    L.log(f"run done: {st.requests} requests in {wall:.1f} s; {run.ledger.confirmed_total} uploads confirmed, "
          f"{len(run.ledger.deleted)} deleted, {len(run.ledger.live)} live")

    pre_reconcile = None
    if crash:
        # The ledgers as the last incarnation kept them, then a restart (start-up sweep and
        # reconcile) before the checks.
        server.stop()
        pre_reconcile = L.check_tree(root)
        server.start()
        L.log("final restart done (start-up sweep + quota reconcile)")
    requests_run = st.requests
    res = asyncio.run(run.verify_all())
    tree_live = L.check_tree(root)
    leftover_ok = asyncio.run(run.leftover_sessions(tree_live.sessions)) if crash else 0
    hwm_final = server.note_hwm()
    rc_stop = server.stop()
    tree = L.check_tree(root)
    err_lines = server.log_lines(" ERROR ")
    kept = server.keep_log() if (st.five_xx or st.failures or err_lines) else ""

    kp_run = kp_pass = 0
    kp_lines: List[str] = []
    if crash and os.environ.get("BENCH_CRASH_POINTS", "1") != "0":
        import killpoints

        L.log("kill points: one SIGKILL at an exact rename/unlink/link each")
        kp_run, kp_pass, kp_lines = killpoints.run_points(tmp)

    # ---- report
    rps = requests_run / wall
    print(f"{mode}: {clients} clients x {seconds:.0f} s, {users} users, files 0 B-{max_kib} KiB, "
          f"{os.cpu_count()} cores, {load_before} at start"
          + (f"; {run.kills} SIGKILLs" if crash else ""))
    row("requests (run)", f"{requests_run}", "-", "-", "-", "info")
    row("requests/s", f"{rps:.1f}", "-", "-", "-", "info")
    row("MB/s up / down", f"{run.bytes_up / wall / 1e6:.1f} / {run.bytes_down / wall / 1e6:.1f}")
    row("client CPU (Python, 1 core max)", f"{client_cpu:.1f} s", f"{wall:.1f} s wall",
        f"{client_cpu / wall:.2f}")
    if server_cpu is not None:
        row("server CPU", f"{server_cpu:.1f} s", f"{wall:.1f} s wall", f"{server_cpu / wall:.2f}")
    order = ["init", "part_put", "part_json", "complete", "session_status", "upload_raw", "upload_multipart",
             "get_range", "get_full", "sign", "get_signed", "list", "zip_post", "zip_get", "delete"]
    for k in order:
        v = st.lat.get(k)
        if not v:
            continue
        codes = ",".join(f"{c}x{n}" for c, n in sorted(st.codes[k].items()))
        row(f"latency {k} (n={len(v)})",
            f"p50 {percentile_ms(v, 50)} ms, p99 {percentile_ms(v, 99)} ms", codes)
    row("uploads confirmed (200)", run.ledger.confirmed_total)
    row("deletes confirmed", len(run.ledger.deleted))
    row("zip entries verified", st.counters.get("zip entries verified", 0) + res.get("final_zip_entries", 0))
    if crash:
        row("kills survived (restarted, served again)", f"{run.kills}", f">= {kills}", "-", f">= {kills}",
            "PASS" if run.kills >= kills else "FAIL")
        row("server restart time (max)", f"{max(server.start_times[1:] or [0]):.2f} s")
        row("sessions resumed after a kill", f"{run.resumed_probes}", f"{run.kills}", "-", "all",
            "PASS" if run.resumed_probes == run.kills else "FAIL")
        row("requests cut by a kill", st.conn_errors)
        row("cut uploads found whole / absent", f"{res['unknown_found']} / {res['unknown_absent']}")
        row("leftover sessions resumable (or 404 if half-made)", f"{leftover_ok} of {len(tree_live.sessions)}",
            f"{len(run.half_made)} half-made", "-", "all",
            "PASS" if leftover_ok == len(tree_live.sessions) else "FAIL")
        for k, v in sorted(st.counters.items()):
            if k.startswith("cut"):
                row(k, v)
    row("files verified (sha256)", res["verified"], f"{len(run.ledger.live)} live", "-", "all",
        "PASS" if res["verified"] == len(run.ledger.live) and not res["lost"] and not res["corrupt"] else "FAIL")
    row("lost / corrupt / phantom files", f"{res['lost'] + res['must_exist_missing']} / {res['corrupt']} / "
        f"{res['phantom']}", "-", "-", "0", "PASS" if not (res['lost'] + res['must_exist_missing'] + res['corrupt']
                                                         + res['phantom']) else "FAIL")
    row("listing mismatches (final)", res["listing_mismatch"], "-", "-", "0",
        "PASS" if not res["listing_mismatch"] else "FAIL")
    row("5xx answers", len(st.five_xx), "-", "-", "0", "PASS" if not st.five_xx else "FAIL")
    row("other failures (all checks)", len(st.failures), "-", "-", "0", "PASS" if not st.failures else "FAIL")
    row("orphans / dot-files under storage/", len(tree.problems), "-", "-", "0",
        "PASS" if not tree.problems else "FAIL")
    if pre_reconcile is not None:
        row("quota drift before reconcile", len(pre_reconcile.quota_problems), "-", "-", "-", "info")
    row("quota ledgers = bytes on disk" + (" (after restart)" if crash else ""),
        f"{len(tree.quota_problems)} mismatches", f"{len(tree.ledgers)} users", "-", "0",
        "PASS" if not tree.quota_problems else "FAIL")
    row("leftovers in .parts", len(tree.parts_leftovers), "-", "-", "-", "info")
    row("quota reserved: sessions / one-request uploads",
        f"{tree.reserved_sessions} / {tree.reserved_uploads} B", "-", "-", "-", "info")
    row("temp files left in .quota", len(tree.quota_tmp), "-", "-", "-", "info")
    row("server ERROR log lines", len(err_lines), "-", "-", "-", "info")
    row("peak RSS (VmHWM)", f"{max(server.peak_hwm_kib, hwm_run, hwm_final) / 1024:.1f} MiB",
        "-", "-", "-", "info")
    row("graceful stop exit status", rc_stop, "0", "-", "0", "PASS" if rc_stop == 0 else "FAIL")
    if kp_run:
        row("kill points (exact steps) passed", f"{kp_pass} of {kp_run}", "-", "-", "all",
            "PASS" if kp_pass == kp_run else "FAIL")
    L.print_table()
    if crash:
        for line in run.kill_log:
            print(f"   {line}")
        for line in kp_lines:
            print(f"   {line}")
        for line in run.half_made:
            print(f"   half-made session folder: {line}")
    for what, items in (("5xx", st.five_xx), ("failure", st.failures), ("storage", tree.problems),
                        ("quota", tree.quota_problems), (".parts leftover", tree.parts_leftovers),
                        ("server ERROR", err_lines)):
        for line in items[:15]:
            print(f"   {what}: {line.rstrip()}")
        if len(items) > 15:
            print(f"   {what}: ... {len(items) - 15} more")
    if kept:
        print(f"   server log kept in {kept}")
    if pre_reconcile is not None:
        for line in pre_reconcile.quota_problems[:10]:
            print(f"   quota before reconcile: {line}")
    ops = ", ".join(f"{k} {v}" for k, v in sorted(st.ops.items()))
    print(f"   operations started: {ops}")
    bad = (st.five_xx or st.failures or tree.problems or tree.quota_problems or res["lost"] or res["corrupt"]
           or res["phantom"] or res["must_exist_missing"] or rc_stop != 0
           or (crash and run.kills < kills) or kp_pass < kp_run)
    if bad:
        print(f"{mode}: FAIL", file=sys.stderr)
        return 1
    return 0


def points_only() -> int:
    """BENCH_CRASH_POINTS_ONLY=1: only the kill points (about 30 s), no load."""
    import killpoints

    tmp = L.bench_tmpdir()
    n, ok, lines = killpoints.run_points(tmp)
    print(f"crash (kill points only): {os.cpu_count()} cores, {L.machine_load()}")
    if n:
        row("kill points (exact steps) passed", f"{ok} of {n}", "-", "-", "all", "PASS" if ok == n else "FAIL")
    L.print_table()
    for line in lines:
        print(f"   {line}")
    return 0 if ok == n else 1


def percentile_ms(v: List[float], p: float) -> str:
    return f"{percentile(v, p) * 1000:.1f}"
