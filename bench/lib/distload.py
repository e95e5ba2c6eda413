"""The load client of scenario `distributed` (bench/scenarios/distributed.sh, issue 14): N
clients against several instances of the server behind nginx, while the scenario SIGKILLs
and restarts one instance and, later, one Garage node. The scenario starts everything and
hands over through the environment:

  DIST_NGINX          port of nginx (the multi-instance site), which clients use by default
  DIST_INSTANCES      the instances' ports, comma-separated (requests sent to them directly)
  DIST_EVENTS         file the scenario appends "EPOCH kill|up instance|garage NAME ADDR" to
  DIST_STARTED        file this client writes the load's start (epoch seconds) into
  DIST_FAULTS_DONE    file the scenario creates once every fault is over (all restarted)
  DIST_PSQL           psql command line for the catalog (unset: no PostgreSQL checks)
  DIST_TOKEN          the service token
  BENCH_DIST_CLIENTS (64), BENCH_DIST_SECONDS (60), BENCH_DIST_USERS (8),
  BENCH_DIST_MAX_KIB (1024), BENCH_DIST_SEED

Each client runs a weighted mix until the deadline:
  up_json     init (nginx), 2-4 base64 JSON parts (POST /v1/files/part, nginx), complete (nginx)
  up_spread   init (nginx), 1-4 raw parts (PUT /v1/files/part/{id}/{n}) each sent straight
              to another instance (one in five through nginx instead), complete on yet
              another instance
  up_one      one-request raw upload with X-Content-SHA256 (nginx)
  read_full   GET /storage/... whole, SHA-256 checked (nginx or an instance, at random)
  read_range  the same with one Range, bytes checked
  signed      signed URL minted by one instance, fetched from another (the shared key)
  zip         batch token made on one instance, the ZIP fetched from another, entries hashed
  list        a user's listing (nginx): every file confirmed before it, with its size
  delete      one of the client's own files (nginx)
A request answered 5xx or cut is resolved as in scenario `crash` (a part is sent again, to
another instance; a cut complete is looked up and completed again, and if its session is
gone, settled after the run: completed then if the session came back, else its file must
exist; a cut one-request upload may or may not exist; a delete is repeated); a refused one
goes to the next instance. Each request is kept with its times, its target and, through
nginx, the instances nginx tried (X-Bench-Upstream, added by the scenario's copy of the
site). After the run each is classed against the kill times: in flight on the killed
instance, sent to it while it was down, or neither (then any 5xx, cut or refusal fails).

At the end, once the faults are over: every user's listing (through nginx and through each
instance) against the ledger, files nobody was told about matched to cut uploads, every
file downloaded through nginx and hashed, each user's usage (the listing's total_size)
against the sum of its files' sizes, and with DIST_PSQL the catalog's quota rows against
its file rows. Rows go to BENCH_ROWS; exit 1 when a check fails.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import shlex
import subprocess
import sys
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.environ.get("BENCH_LIB") or os.path.dirname(os.path.abspath(__file__)))
import loadlib as L  # noqa: E402
from loadgen import (FOLDERS, NAMES, FileRec, Ledger, Unknown, content, key_url, percentile_ms,  # noqa: E402
                     pool, storage_path)
from loadlib import ConnError, Http, row  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
TOKEN = os.environ.get("DIST_TOKEN", "bench")

# Statuses a request gets when no answer came: cut after it was sent, or refused.
CUT, REFUSED = -1, -2


def svc(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    h = {"X-Service-Token": TOKEN}
    if extra:
        h.update(extra)
    return h


def jbody(obj) -> Tuple[Dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(obj).encode()


@dataclass
class Target:
    name: str      # "nginx" or "i1", "i2", ...
    port: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Req:
    """One request as sent, for the classification against the kills."""
    t0: float
    t1: float
    kind: str
    method: str
    target: str          # Target.name
    addr: str            # Target.addr
    status: int          # HTTP status, CUT or REFUSED
    upstreams: Tuple[str, ...]   # through nginx: the instances it tried, in order
    what: str            # path and a bit of the body, for the report


@dataclass
class CutComplete:
    """A complete cut by a kill whose session was then gone: either it went through (the
    file exists) or the killed instance held the session when it died and it comes back
    once the session is given back; settled after the run."""
    cid: int
    user: str
    uid: str
    size: int
    sha: str
    seed: int
    name: str
    parts: List[Tuple[int, bytes]]


class Failed(Exception):
    """This operation cannot go on (recorded)."""


class Client:
    """A client's connections: one to nginx, one to each instance."""

    def __init__(self, cid: int, targets: List[Target]):
        self.cid = cid
        self.conns = {t.name: Http(t.port, timeout=60) for t in targets}
        self.last_status = 0   # of the last request: an HTTP status, CUT or REFUSED

    async def close(self) -> None:
        for c in self.conns.values():
            await c.close()


class Run:
    def __init__(self, nginx: Target, instances: List[Target], clients: int, seconds: float, users: int,
                 max_kib: int, seed: int):
        self.nginx = nginx
        self.instances = instances
        self.n_clients = clients
        self.seconds = seconds
        self.users = [f"dist-u{i}" for i in range(users)]
        self.max_size = max_kib * KIB
        self.rng = random.Random(seed)
        self.seed_base = seed * 1_000_000_000
        self.next_seed = 0
        self.ledger = Ledger()
        self.cut_completes: List[CutComplete] = []
        self.reqs: List[Req] = []
        self.lat: Dict[str, List[float]] = {}
        self.codes: Dict[str, Dict[int, int]] = {}
        self.failures: List[str] = []
        self.counters: Dict[str, int] = {}
        self.ops: Dict[str, int] = {}
        self.deadline = 0.0
        self.bytes_up = 0
        self.bytes_down = 0

    # ---------------------------------------------------------- plumbing

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        if len(self.failures) <= 30:
            L.log(f"FAILURE: {msg}")

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def new_seed(self) -> int:
        self.next_seed += 1
        return self.seed_base + self.next_seed

    def pick_size(self, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.02:
            return 0
        if r < 0.60:
            return rng.randint(1, min(64 * KIB, self.max_size))
        if r < 0.90:
            return rng.randint(min(64 * KIB, self.max_size), min(256 * KIB, self.max_size))
        return rng.randint(min(256 * KIB, self.max_size), self.max_size)

    def new_file(self, rng: random.Random):
        seed = self.new_seed()
        size = self.pick_size(rng)
        data = content(seed, size)
        return seed, size, data, L.sha256_hex(data)

    def name_for(self, rng: random.Random, seed: int) -> str:
        stem, dot, ext = rng.choice(NAMES).rpartition(".")
        return f"{stem}-{seed % 100000}.{ext}" if dot else f"{ext}-{seed % 100000}"

    def other(self, t: Target, k: int = 1) -> Target:
        """The instance k places after t (wrapping)."""
        i = self.instances.index(t)
        return self.instances[(i + k) % len(self.instances)]

    async def call(self, c: Client, t: Target, kind: str, method: str, path: str, headers=None,
                   body: Optional[bytes] = None, timeout: Optional[float] = None) -> Optional[L.Response]:
        """One request; None when no answer came (cut or refused: recorded, never raised)."""
        conn = c.conns[t.name]
        if conn.reader is not None and conn.reader.at_eof():
            # Closed by the other end while idle (its process was killed, or its keep-alive
            # ran out): a new connection, as HTTP clients check a pooled one before use.
            await conn.close()
        t0 = time.time()
        try:
            res = await conn.request(method, path, headers, body, timeout)
        except ConnError as e:
            st = REFUSED if not e.sent else CUT
            c.last_status = st
            self.reqs.append(Req(t0, time.time(), kind, method, t.name, t.addr, st, (), f"{path[:100]} {e}"))
            return None
        t1 = time.time()
        c.last_status = res.status
        ups = tuple(a.strip() for a in res.headers.get("x-bench-upstream", "").split(",") if a.strip())
        what = path[:100] + (f" {res.body[:160]!r}" if res.status >= 500 else "")
        self.reqs.append(Req(t0, t1, kind, method, t.name, t.addr, res.status, ups, what))
        self.lat.setdefault(kind, []).append(res.seconds)
        cc = self.codes.setdefault(kind, {})
        cc[res.status] = cc.get(res.status, 0) + 1
        self.bytes_up += len(body or b"")
        self.bytes_down += len(res.body)
        return res

    def no_answer(self, c: Client) -> str:
        """What became of the client's last request, which got no good answer."""
        if c.last_status == REFUSED:
            return "refused (instance down)"
        return "answered 5xx or cut"

    def unexpected(self, res: L.Response, what: str) -> None:
        """A 4xx or other answer no step expects: a failure."""
        self.fail(f"{what}: status {res.status} {res.body[:200]!r}")
        raise Failed()

    def confirm(self, cid: int, user: str, answer: dict, size: int, sha: str, seed: int, name: str,
                what: str) -> None:
        key = answer.get("key", "")
        if answer.get("size") != size or (answer.get("sha256") or "").lower() != sha:
            self.fail(f"{what}: answer says size {answer.get('size')} sha {answer.get('sha256')}, sent {size} {sha}")
        if not key.startswith(f"storage/{user}/"):
            self.fail(f"{what}: key {key} not under the user {user}")
        try:
            self.ledger.add(FileRec(key, user, size, sha, seed, cid, name, time.monotonic()))
        except AssertionError as e:
            self.fail(str(e))

    # ---------------------------------------------------------- uploads

    async def init(self, c: Client, user: str, name: str, size: int, mode: str, rng: random.Random) -> str:
        body = {"mode": mode, "files": [{"name": name, "size": size}], "meta": {"user_id": user}}
        folder = rng.choice(FOLDERS)
        if folder:
            body["folder"] = folder
        h, b = jbody(body)
        for _ in range(10):
            res = await self.call(c, self.nginx, "init", "POST", "/v1/files/init", svc(h), b)
            if res is None or res.status >= 500:
                # A session may have been made; it is left to expire (its reservation too).
                self.inc("init answered 5xx or cut: sent again")
                await asyncio.sleep(0.2)
                continue
            if res.status != 200:
                self.unexpected(res, "init")
            return res.json()["uploadId"]
        self.fail("init: no answer after 10 tries")
        raise Failed()

    async def send_part(self, c: Client, uid: str, n: int, chunk: bytes, via: Optional[Target]) -> None:
        """A part as base64 JSON through nginx (via None), or raw (PUT) to `via`: nginx or an
        instance. Sent again on 5xx or a cut; a raw part to an instance then to the next."""
        t = via
        for _ in range(20):
            if t is None:
                h, b = jbody({"uploadId": uid, "partNumber": n, "chunkBase64": base64.b64encode(chunk).decode()})
                res = await self.call(c, self.nginx, "part_json", "POST", "/v1/files/part", svc(h), b)
            else:
                res = await self.call(c, t, "part_raw" if t is not self.nginx else "part_raw_nginx", "PUT",
                                      f"/v1/files/part/{uid}/{n}",
                                      svc({"Content-Type": "application/octet-stream"}), chunk)
            if res is None or res.status >= 500:
                if t is None or t is self.nginx:
                    self.inc("part through nginx answered 5xx or cut: sent again")
                else:
                    self.inc(f"raw part {self.no_answer(c)}: sent again to the next instance")
                    t = self.other(t)
                await asyncio.sleep(0.1)
                continue
            if res.status != 200:
                self.unexpected(res, f"part {n} of {uid}")
            if res.json().get("partNumber") != n:
                self.fail(f"part {n} of {uid}: answer {res.body[:100]!r}")
            if t is not None:
                self.inc("raw parts stored, sent through nginx (PUT)" if t is self.nginx
                         else "raw parts stored, sent straight to an instance")
            return
        self.fail(f"part {n} of {uid}: no answer after 20 tries")
        raise Failed()

    async def session_status(self, c: Client, uid: str) -> Optional[dict]:
        for _ in range(20):
            res = await self.call(c, self.nginx, "session_status", "GET", f"/v1/files/uploads/{uid}", svc())
            if res is None or res.status >= 500:
                await asyncio.sleep(0.2)
                continue
            if res.status == 404:
                return None
            if res.status != 200:
                self.unexpected(res, f"status of {uid}")
            return res.json()
        self.fail(f"status of {uid}: no answer after 20 tries")
        raise Failed()

    async def complete(self, c: Client, t: Target, cid: int, user: str, uid: str, size: int, sha: str,
                       seed: int, name: str, parts: List[Tuple[int, bytes]]) -> None:
        h, b = jbody({"uploadId": uid, "sha256": sha, "meta": {"user_id": user, "run": "distributed"}})
        cut = False
        for _ in range(30):
            res = await self.call(c, t, "complete", "POST", "/v1/files/complete", svc(h), b)
            if res is not None and res.status == 200:
                self.confirm(cid, user, res.json(), size, sha, seed, name, f"complete {uid}")
                return
            if res is not None and res.status == 404 and cut:
                self.cut_completes.append(CutComplete(cid, user, uid, size, sha, seed, name, parts))
                self.inc("complete cut, then its session gone (settled after the run)")
                return
            if res is not None and res.status in (409, 423):
                self.inc(f"complete answered {res.status} (another complete holds the session): asked again")
                await asyncio.sleep(0.5)
                continue
            if res is not None and res.status < 500:
                self.unexpected(res, f"complete {uid}")
            if res is None and c.last_status == REFUSED:
                # Never sent: the next instance gets it.
                self.inc("complete refused (instance down): sent to the next instance")
                t = self.other(t)
                continue
            cut = True
            self.inc("complete answered 5xx or cut: looked up")
            st = await self.session_status(c, uid)
            if st is None:
                self.cut_completes.append(CutComplete(cid, user, uid, size, sha, seed, name, parts))
                self.inc("complete cut, then its session gone (settled after the run)")
                return
            have = {p["partNumber"]: p["size"] for p in st.get("parts", [])}
            for n, chunk in parts:
                if have.get(n) != len(chunk):
                    self.inc("complete cut: part sent again")
                    await self.send_part(c, uid, n, chunk, None)
            if t is not self.nginx:
                t = self.other(t)
            await asyncio.sleep(0.2)
        self.fail(f"complete {uid}: no answer after 30 tries")

    async def settle_cut_completes(self) -> None:
        """After the run: a cut complete's session that is back is completed now (its file
        then checked like any); one still gone must have left its file (matched in verify)."""
        c = Client(-3, [self.nginx] + self.instances)
        for cc in self.cut_completes:
            st = await self.session_status(c, cc.uid)
            if st is None:
                self.ledger.unknown.append(Unknown(cc.user, cc.size, cc.sha, cc.seed, "complete", True))
                self.inc("cut complete settled: session gone, its file must exist")
                continue
            have = {p["partNumber"]: p["size"] for p in st.get("parts", [])}
            for n, chunk in cc.parts:
                if have.get(n) != len(chunk):
                    await self.send_part(c, cc.uid, n, chunk, None)
            before = self.ledger.confirmed_total
            await self.complete(c, self.nginx, cc.cid, cc.user, cc.uid, cc.size, cc.sha, cc.seed, cc.name, cc.parts)
            if self.ledger.confirmed_total > before:
                self.inc("cut complete settled: session given back, completed after the run")
        await c.close()

    def split(self, rng: random.Random, data: bytes, k: int, base: int) -> List[Tuple[int, bytes]]:
        size = len(data)
        if size == 0:
            return []
        k = max(1, min(k, size))
        cuts = [0] + sorted(rng.sample(range(1, size), k - 1)) + [size] if k > 1 else [0, size]
        return [(base + i, data[cuts[i]:cuts[i + 1]]) for i in range(len(cuts) - 1)]

    async def up_json(self, c: Client, rng: random.Random) -> None:
        user = self.users[c.cid % len(self.users)]
        seed, size, data, sha = self.new_file(rng)
        name = self.name_for(rng, seed)
        uid = await self.init(c, user, name, size, "chunked", rng)
        parts = self.split(rng, data, rng.randint(2, 4), rng.choice([0, 1]))
        order = list(parts)
        rng.shuffle(order)
        for n, chunk in order:
            await self.send_part(c, uid, n, chunk, None)
        await self.complete(c, self.nginx, c.cid, user, uid, size, sha, seed, name, parts)
        self.inc("uploads: three-step, JSON parts through nginx")

    async def up_spread(self, c: Client, rng: random.Random) -> None:
        user = self.users[c.cid % len(self.users)]
        seed, size, data, sha = self.new_file(rng)
        name = self.name_for(rng, seed)
        k = rng.randint(1, 4)
        uid = await self.init(c, user, name, size, "single" if k == 1 else "chunked", rng)
        parts = self.split(rng, data, k, 0)
        first = rng.choice(self.instances)
        for i, (n, chunk) in enumerate(parts):
            # One part in five through nginx (its PUT location, which never passes a PUT on).
            via = self.nginx if rng.random() < 0.2 else self.other(first, i)
            await self.send_part(c, uid, n, chunk, via)
        # Completed on an instance other than the one that took the last part.
        await self.complete(c, self.other(first, len(parts)), c.cid, user, uid, size, sha, seed, name, parts)
        self.inc("uploads: three-step, raw parts spread over the instances")

    async def up_one(self, c: Client, rng: random.Random) -> None:
        user = self.users[c.cid % len(self.users)]
        seed, size, data, sha = self.new_file(rng)
        name = self.name_for(rng, seed)
        q = {"user_id": user, "filename": name}
        folder = rng.choice(FOLDERS)
        if folder:
            q["folder"] = folder
        res = await self.call(c, self.nginx, "upload_one", "POST", "/v1/files/upload?" + urllib.parse.urlencode(q),
                              svc({"Content-Type": "application/octet-stream", "X-Content-SHA256": sha}), data)
        if res is None or res.status >= 500:
            self.ledger.unknown.append(Unknown(user, size, sha, seed, "upload_one", False))
            self.inc("one-request upload answered 5xx or cut: outcome unknown")
            return
        if res.status != 200:
            self.unexpected(res, "one-request upload")
        files = res.json().get("files", [])
        if len(files) != 1:
            self.fail(f"one-request upload answered {len(files)} files")
            return
        self.confirm(c.cid, user, files[0], size, sha, seed, name, "one-request upload")
        self.inc("uploads: one request through nginx")

    # ---------------------------------------------------------- reads

    def lost_if_404(self, rec: FileRec, res: L.Response, what: str) -> None:
        if res.status == 404:
            self.fail(f"LOST? {what}: 404 for the confirmed, pinned file {rec.key}")
            raise Failed()

    async def read(self, c: Client, rng: random.Random, ranged: bool) -> None:
        recs = self.ledger.pick(rng)
        if not recs:
            return
        rec = recs[0]
        rec.pins += 1
        try:
            for attempt in range(3):
                t = self.nginx if rng.random() < 0.5 else rng.choice(self.instances)
                hdr: Dict[str, str] = {}
                a = b = 0
                if ranged and rec.size > 0:
                    a = rng.randrange(rec.size)
                    b = min(rec.size - 1, a + rng.randint(0, 64 * KIB))
                    hdr["Range"] = f"bytes={a}-{b}"
                kind = "get_range" if hdr else "get_full"
                res = await self.call(c, t, kind, "GET", storage_path(rec.key), hdr)
                if res is None or res.status >= 500:
                    self.inc(f"read {self.no_answer(c)}: asked again")
                    continue
                self.lost_if_404(rec, res, kind)
                if hdr:
                    if res.status != 206:
                        self.unexpected(res, f"range of {rec.key}")
                    cr = res.headers.get("content-range", "")
                    want = content(rec.seed, rec.size)[a:b + 1]
                    if cr != f"bytes {a}-{b}/{rec.size}" or res.body != want:
                        self.fail(f"range {a}-{b} of {rec.key} ({rec.size}) from {t.name}: Content-Range {cr!r}, "
                                  f"{len(res.body)} bytes, {'same' if res.body == want else 'other'} bytes")
                        return
                    self.inc("ranges verified during the run")
                else:
                    if res.status != 200:
                        self.unexpected(res, f"GET {rec.key}")
                    if len(res.body) != rec.size or L.sha256_hex(res.body) != rec.sha:
                        self.fail(f"GET {rec.key} from {t.name}: {len(res.body)} bytes, SHA-256 differs")
                        return
                    self.inc("whole files verified during the run")
                return
        finally:
            rec.pins -= 1

    async def signed(self, c: Client, rng: random.Random) -> None:
        recs = self.ledger.pick(rng)
        if not recs:
            return
        rec = recs[0]
        rec.pins += 1
        try:
            signer = rng.choice(self.instances)
            res = await self.call(c, signer, "sign", "GET",
                                  "/v1/files/signed-url?key=" + urllib.parse.quote(rec.key, safe=""), svc())
            if res is None or res.status >= 500:
                return
            self.lost_if_404(rec, res, "signed-url")
            if res.status != 200:
                self.unexpected(res, "signed-url")
            url = res.json()["url"]
            base = f"http://127.0.0.1:{self.nginx.port}"
            if not url.startswith(base + "/"):
                self.fail(f"signed URL {url} does not start with PUBLIC_BASE_URL {base}")
                return
            # Verified by another instance than the one that signed it.
            reader = self.other(signer, rng.randint(1, max(1, len(self.instances) - 1)))
            res = await self.call(c, reader, "get_signed", "GET", url[len(base):])
            if res is None or res.status >= 500:
                return
            if res.status == 403:
                self.fail(f"signed URL made by {signer.name} refused by {reader.name} (403): signing keys differ?")
                return
            self.lost_if_404(rec, res, "signed GET")
            if res.status != 200:
                self.unexpected(res, "signed GET")
            if L.sha256_hex(res.body) != rec.sha:
                self.fail(f"signed GET {rec.key} from {reader.name}: SHA-256 differs")
                return
            self.inc("signed URLs verified on another instance")
        finally:
            rec.pins -= 1

    async def zip_op(self, c: Client, rng: random.Random) -> None:
        recs = [r for r in self.ledger.pick(rng, rng.randint(2, 3)) if r.size <= 256 * KIB]
        if len(recs) < 2:
            return
        for rec in recs:
            rec.pins += 1
        try:
            maker = rng.choice(self.instances)
            h, b = jbody({"keys": [r.key for r in recs]})
            res = await self.call(c, maker, "zip_post", "POST", "/v1/files/batch-download", svc(h), b)
            if res is None or res.status >= 500:
                return
            if res.status != 200:
                self.unexpected(res, "batch-download POST")
            tok = res.json()["token"]
            getter = self.other(maker)
            res = await self.call(c, getter, "zip_get", "GET", f"/v1/files/batch-download/{tok}", timeout=120)
            if res is None or res.status >= 500:
                return
            if res.status == 404:
                self.fail(f"batch token made by {maker.name} unknown to {getter.name} (404)")
                return
            if res.status != 200:
                self.unexpected(res, "batch-download GET")
            try:
                zf = zipfile.ZipFile(io.BytesIO(res.body))
                bad = zf.testzip()
                got = sorted(L.sha256_hex(zf.read(i)) for i in zf.infolist())
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                self.fail(f"zip from {getter.name} unreadable: {e!r}")
                return
            if bad or got != sorted(r.sha for r in recs):
                self.fail(f"zip from {getter.name}: entries differ from the ledger (bad entry {bad})")
                return
            self.inc("ZIP entries verified (token made on another instance)", len(recs))
        finally:
            for rec in recs:
                rec.pins -= 1

    async def listing(self, c: Client, rng: random.Random) -> None:
        user = rng.choice(self.users)
        t_send = time.monotonic()
        confirmed = set(self.ledger.by_user.get(user, set()))
        res = await self.call(c, self.nginx, "list", "GET", "/v1/files/all?user_id=" + urllib.parse.quote(user), svc())
        if res is None or res.status >= 500:
            return
        if res.status != 200:
            self.unexpected(res, f"list {user}")
        body = res.json()
        listed = {f["key"]: f["size"] for f in body["files"]}
        if body.get("total_count") != len(listed) or body.get("total_size") != sum(listed.values()):
            self.fail(f"list {user}: totals {body.get('total_count')}/{body.get('total_size')} vs "
                      f"{len(listed)}/{sum(listed.values())} listed")
        for k in confirmed:
            rec = self.ledger.live.get(k)
            if rec is None or k in self.ledger.delete_started:
                continue
            if k not in listed:
                self.fail(f"list {user}: confirmed file {k} missing")
            elif listed[k] != rec.size:
                self.fail(f"list {user}: {k} size {listed[k]} != {rec.size}")
        for k in listed:
            t_del = self.ledger.deleted.get(k)
            if t_del is not None and t_del < t_send:
                self.fail(f"list {user}: {k} listed after its delete was answered")

    async def delete(self, c: Client, rng: random.Random) -> None:
        mine = [k for k in self.ledger.by_client.get(c.cid, ()) if self.ledger.live[k].pins == 0
                and not self.ledger.live[k].deleting]
        if not mine:
            return
        rec = self.ledger.live[rng.choice(mine)]
        self.ledger.start_delete(rec)
        cut = False
        for _ in range(30):
            res = await self.call(c, self.nginx, "delete", "DELETE", f"/v1/files/{key_url(rec.key)}", svc())
            if res is None or res.status >= 500:
                cut = True
                self.inc("delete answered 5xx or cut: sent again")
                await asyncio.sleep(0.2)
                continue
            if res.status == 404 and not cut:
                # nginx may have sent it again itself (DELETE is idempotent to it): not a
                # loss unless the file is still there.
                self.inc("delete answered 404 (nginx passed it on after a failure?)")
            elif res.status not in (200, 404):
                self.unexpected(res, f"delete {rec.key}")
            self.ledger.confirm_delete(rec)
            self.inc("deletes confirmed")
            return
        self.fail(f"delete {rec.key}: no answer after 30 tries")

    # ---------------------------------------------------------- clients

    WEIGHTS = [("up_json", 12), ("up_spread", 12), ("up_one", 10), ("read_full", 14), ("read_range", 14),
               ("signed", 6), ("list", 4), ("zip", 2), ("delete", 4)]

    async def client(self, cid: int) -> None:
        rng = random.Random(self.rng.random())
        c = Client(cid, [self.nginx] + self.instances)
        ops, weights = zip(*self.WEIGHTS)
        try:
            while time.monotonic() < self.deadline:
                op = rng.choices(ops, weights)[0]
                if not self.ledger.pickable and op in ("read_full", "read_range", "signed", "zip"):
                    op = "up_one"
                self.ops[op] = self.ops.get(op, 0) + 1
                try:
                    if op == "up_json":
                        await self.up_json(c, rng)
                    elif op == "up_spread":
                        await self.up_spread(c, rng)
                    elif op == "up_one":
                        await self.up_one(c, rng)
                    elif op == "read_full":
                        await self.read(c, rng, ranged=False)
                    elif op == "read_range":
                        await self.read(c, rng, ranged=True)
                    elif op == "signed":
                        await self.signed(c, rng)
                    elif op == "zip":
                        await self.zip_op(c, rng)
                    elif op == "list":
                        await self.listing(c, rng)
                    elif op == "delete":
                        await self.delete(c, rng)
                except Failed:
                    await asyncio.sleep(0.05)
        finally:
            await c.close()

    # ---------------------------------------------------------- final checks

    async def verify(self) -> Dict[str, int]:
        out = {"verified": 0, "lost": 0, "corrupt": 0, "phantom": 0, "listing_mismatch": 0,
               "instance_listing_mismatch": 0, "unknown_found": 0, "unknown_absent": 0, "must_exist_missing": 0,
               "usage_ok": 0}
        self.usage: Dict[str, Tuple[int, int]] = {}
        conns = [Http(self.nginx.port, timeout=120) for _ in range(12)]
        c0 = conns[0]

        async def get(http: Http, path: str, headers=None) -> L.Response:
            for _ in range(5):
                try:
                    return await http.request("GET", path, headers)
                except ConnError:
                    await asyncio.sleep(0.5)
            raise Failed()

        async def list_user(http: Http, user: str) -> Optional[dict]:
            r = await get(http, "/v1/files/all?user_id=" + urllib.parse.quote(user), svc())
            if r.status != 200:
                self.fail(f"final listing of {user}: {r.status} {r.body[:200]!r}")
                return None
            return r.json()

        # Listings through nginx: files nobody was told about must be cut uploads.
        listings: Dict[str, dict] = {}
        for user in self.users:
            body = await list_user(c0, user)
            if body is None:
                out["listing_mismatch"] += 1
                continue
            listings[user] = body
        unknown_by_user: Dict[str, List[Unknown]] = {}
        for u in self.ledger.unknown:
            unknown_by_user.setdefault(u.user, []).append(u)
        for user, body in listings.items():
            mine = self.ledger.by_user.get(user, set())
            for f in body["files"]:
                k, s = f["key"], f["size"]
                if k in mine:
                    continue
                r = await get(c0, storage_path(k))
                sha = L.sha256_hex(r.body) if r.status == 200 else None
                cand = [u for u in unknown_by_user.get(user, [])
                        if u.matched is None and u.sha == sha and u.size == s]
                if not cand:
                    out["phantom"] += 1
                    self.fail(f"PHANTOM: {k} ({s} bytes) is listed, was never confirmed and is no cut upload")
                    continue
                cand.sort(key=lambda u: not u.must_exist)
                cand[0].matched = k
                out["unknown_found"] += 1
                self.ledger.live[k] = FileRec(k, user, s, sha, cand[0].seed, -2, "", time.monotonic())
                self.ledger.by_user.setdefault(user, set()).add(k)
        for u in self.ledger.unknown:
            if u.matched is None:
                if u.must_exist:
                    out["must_exist_missing"] += 1
                    self.fail(f"LOST: a cut complete whose session was gone left no file ({u.user}, {u.size} B)")
                else:
                    out["unknown_absent"] += 1
        # The listings against the ledger, and each user's usage against its files' sizes.
        for user, body in listings.items():
            listed = {f["key"]: f["size"] for f in body["files"]}
            mine = {k: self.ledger.live[k].size for k in self.ledger.by_user.get(user, set())}
            if listed != mine:
                out["listing_mismatch"] += 1
                missing = sorted(set(mine) - set(listed))[:3]
                extra = sorted(set(listed) - set(mine))[:3]
                self.fail(f"final listing of {user}: {len(listed)} files, ledger {len(mine)} "
                          f"(missing {missing}, extra {extra})")
            total = sum(mine.values())
            self.usage[user] = (body.get("total_size"), total)
            if body.get("total_size") == total and body.get("total_count") == len(mine):
                out["usage_ok"] += 1
            else:
                self.fail(f"usage of {user}: listing says {body.get('total_count')} files, "
                          f"{body.get('total_size')} B; its files: {len(mine)}, {total} B")
        # The same listings straight from every instance.
        for t in self.instances:
            http = Http(t.port, timeout=120)
            for user, body in listings.items():
                other = await list_user(http, user)
                if other is None or {f["key"] for f in other["files"]} != {f["key"] for f in body["files"]} \
                        or other.get("total_size") != body.get("total_size"):
                    out["instance_listing_mismatch"] += 1
                    self.fail(f"listing of {user} from {t.name} differs from nginx's")
            await http.close()
        # Every file, downloaded through nginx.
        keys = list(self.ledger.live.keys())
        idle: asyncio.Queue = asyncio.Queue()
        for cn in conns[1:]:
            idle.put_nowait(cn)

        async def fetch(key: str) -> L.Response:
            http = await idle.get()
            try:
                return await get(http, storage_path(key))
            finally:
                idle.put_nowait(http)

        answers = await asyncio.gather(*(fetch(k) for k in keys))
        for key, r in zip(keys, answers):
            rec = self.ledger.live[key]
            if r.status == 404:
                out["lost"] += 1
                self.fail(f"LOST: {key} ({rec.size} B) was confirmed, now 404")
            elif r.status != 200:
                out["lost"] += 1
                self.fail(f"final GET {key}: {r.status} {r.body[:200]!r}")
            elif len(r.body) != rec.size or L.sha256_hex(r.body) != rec.sha:
                out["corrupt"] += 1
                self.fail(f"CORRUPT: {key}: {len(r.body)} B, SHA-256 differs")
            else:
                out["verified"] += 1
        # Deleted files stay gone.
        for key in list(self.ledger.deleted)[:200]:
            r = await get(c0, storage_path(key))
            if r.status != 404:
                self.fail(f"deleted {key} answers {r.status}")
        for cn in conns:
            await cn.close()
        return out

    # ---------------------------------------------------------- the kills

    def classify(self, events: List[Tuple[float, str, str, str, str]]) -> Dict[str, int]:
        """Each request that touched a killed instance (sent to it directly, or tried by
        nginx) is in flight (sent before the kill, ended after) or sent while it was down
        (between the kill and its restart); every 5xx, cut or refusal outside those, and
        every one during a Garage node's outage, is a failure."""
        kills = []   # (t_kill, t_up, addr, name)
        downs: Dict[str, float] = {}
        for t, what, kind, name, addr in events:
            if kind != "instance":
                continue
            if what == "kill":
                downs[name] = t
            elif what == "up" and name in downs:
                kills.append((downs.pop(name), t, addr, name))
        for name, t in downs.items():
            kills.append((t, float("inf"), next(a for _, w, k, n, a in events if n == name), name))
        out = {"in_flight": 0, "in_flight_bad": 0, "while_down": 0, "while_down_bad": 0, "passed_on": 0,
               "other_bad": 0}
        for r in self.reqs:
            bad = r.status >= 500 or r.status in (CUT, REFUSED)
            touched = r.upstreams if r.target == "nginx" else (r.addr,)
            cls = None
            passed_on = r.target == "nginx" and len(r.upstreams) > 1 and not bad
            for t_kill, t_up, addr, _ in kills:
                if addr not in touched:
                    continue
                if r.t0 < t_kill <= r.t1:
                    cls = "in_flight"
                elif t_kill <= r.t0 < t_up and (bad or passed_on):
                    # (One answered by the instance itself came after it was back: the
                    # scenario notes "up" once its health probe sees it.)
                    cls = "while_down"
                if cls:
                    break
            if cls:
                out[cls] += 1
                if bad:
                    out[cls + "_bad"] += 1
                if passed_on:
                    out["passed_on"] += 1
            elif bad:
                out["other_bad"] += 1
                self.fail(f"{'5xx' if r.status >= 500 else 'cut' if r.status == CUT else 'refused'} "
                          f"outside the killed instance: {r.method} via {r.target} "
                          f"(nginx tried {','.join(r.upstreams) or '-'}) -> {r.status}: {r.what}")
        return out


def read_events(path: str) -> List[Tuple[float, str, str, str, str]]:
    out = []
    try:
        for line in open(path):
            p = line.split()
            if len(p) >= 5:
                out.append((float(p[0]), p[1], p[2], p[3], p[4]))
    except OSError:
        pass
    return out


def catalog_check(psql: List[str], usage: Dict[str, Tuple[int, int]]) -> Tuple[int, int, List[str]]:
    """The catalog's quota rows against its file rows and against the listings; returns
    (users checked, users equal, problems)."""
    sql = ("SELECT coalesce(q.user_id, f.user_id), coalesce(q.used, -1), coalesce(q.files, -1), "
           "coalesce(f.n, 0), coalesce(f.bytes, 0) FROM quota q FULL JOIN "
           "(SELECT user_id, count(*) AS n, sum(size) AS bytes FROM files GROUP BY user_id) f "
           "ON f.user_id = q.user_id ORDER BY 1")
    p = subprocess.run(psql + ["-X", "-q", "-t", "-A", "-F", "\t", "-c", sql], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0:
        return 0, 0, [f"psql: {p.stderr.strip()[:300]} (no catalog: did the instances run STORAGE_BACKEND=s3?)"]
    users = ok = 0
    problems = []
    for line in p.stdout.splitlines():
        if not line.strip():
            continue
        u, used, files, n, b = line.split("\t")
        users += 1
        used, files, n, b = int(used), int(files), int(n), int(b)
        listed = usage.get(u, (None, None))[0]
        if used == b and files == n and (listed is None or listed == used):
            ok += 1
        else:
            problems.append(f"user {u}: quota used {used} B / {files} files, file rows {b} B / {n}, listing {listed} B")
    return users, ok, problems


def main() -> int:
    nginx = Target("nginx", int(os.environ["DIST_NGINX"]))
    instances = [Target(f"i{i + 1}", int(p)) for i, p in enumerate(os.environ["DIST_INSTANCES"].split(","))]
    clients = int(os.environ.get("BENCH_DIST_CLIENTS", "64"))
    seconds = float(os.environ.get("BENCH_DIST_SECONDS", "60"))
    users = int(os.environ.get("BENCH_DIST_USERS", "8"))
    max_kib = int(os.environ.get("BENCH_DIST_MAX_KIB", "1024"))
    seed = int(os.environ.get("BENCH_DIST_SEED", str(int(time.time()))))
    psql = shlex.split(os.environ.get("DIST_PSQL", ""))
    L.log(f"distributed load: {clients} clients, {seconds:.0f} s, {users} users, files 0 B-{max_kib} KiB, "
          f"seed {seed}, nginx :{nginx.port}, instances {','.join(str(t.port) for t in instances)}")
    pool()
    run = Run(nginx, instances, clients, seconds, users, max_kib, seed)

    async def drive():
        run.deadline = time.monotonic() + seconds
        started = os.environ.get("DIST_STARTED")
        if started:
            with open(started + ".tmp", "w") as f:
                f.write(f"{time.time():.6f}\n")
            os.replace(started + ".tmp", started)
        cpu0, t0 = time.process_time(), time.monotonic()
        tasks = [asyncio.create_task(run.client(i)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=seconds + 180)
        for t in pending:
            t.cancel()
        if pending:
            run.fail(f"{len(pending)} clients still busy 180 s after the deadline (hang?)")
        for t in done:
            if t.exception() is not None:
                run.fail(f"client crashed: {t.exception()!r}")
        return time.monotonic() - t0, time.process_time() - cpu0

    wall, cpu = asyncio.run(drive())
    n_run = len(run.reqs)
    L.log(f"run done: {n_run} requests in {wall:.1f} s; {run.ledger.confirmed_total} uploads confirmed")
    # The faults must be over (everything restarted) before the final checks.
    flag = os.environ.get("DIST_FAULTS_DONE")
    if flag:
        t_end = time.monotonic() + 300
        while not os.path.exists(flag) and time.monotonic() < t_end:
            time.sleep(0.5)
        if not os.path.exists(flag):
            run.fail("the scenario's faults were not over 300 s after the load")
    try:
        asyncio.run(run.settle_cut_completes())
    except Failed:
        pass
    res = asyncio.run(run.verify())
    events = read_events(os.environ.get("DIST_EVENTS", ""))
    cls = run.classify(events)
    cat_users = cat_ok = 0
    cat_problems: List[str] = []
    if psql:
        cat_users, cat_ok, cat_problems = catalog_check(psql, run.usage)
        for p in cat_problems:
            run.fail(f"catalog: {p}")

    kills = [e for e in events if e[1] == "kill"]
    print(f"distributed: {clients} clients x {seconds:.0f} s, {users} users, {len(instances)} instances behind nginx, "
          f"files 0 B-{max_kib} KiB, {os.cpu_count()} cores, {L.machine_load()} at the end; "
          f"kills: {', '.join(f'{k[2]} {k[3]}' for k in kills) or 'none'}")
    row("requests (run)", n_run)
    row("requests/s", f"{n_run / wall:.1f}")
    row("MB/s up / down", f"{run.bytes_up / wall / 1e6:.1f} / {run.bytes_down / wall / 1e6:.1f}")
    row("client CPU (Python, 1 core max)", f"{cpu:.1f} s", f"{wall:.1f} s wall", f"{cpu / wall:.2f}")
    for k in ["init", "part_json", "part_raw", "part_raw_nginx", "complete", "session_status", "upload_one", "get_full", "get_range",
              "sign", "get_signed", "zip_post", "zip_get", "list", "delete"]:
        v = run.lat.get(k)
        if v:
            codes = ",".join(f"{c}x{n}" for c, n in sorted(run.codes[k].items()))
            row(f"latency {k} (n={len(v)})", f"p50 {percentile_ms(v, 50)} ms, p99 {percentile_ms(v, 99)} ms", codes)
    for k, v in sorted(run.counters.items()):
        row(k, v)
    row("uploads confirmed (200)", run.ledger.confirmed_total)
    row("requests in flight on the killed instance (5xx or cut)", f"{cls['in_flight']} ({cls['in_flight_bad']})",
        "-", "-", "-", "info")
    row("requests sent to the killed instance while down (5xx, cut or refused)",
        f"{cls['while_down']} ({cls['while_down_bad']})", "-", "-", "-", "info")
    row("  of which nginx passed on to another instance", cls["passed_on"])
    row("5xx, cut or refused outside those", cls["other_bad"], "-", "-", "0", "PASS" if not cls["other_bad"] else "FAIL")
    row("cut uploads found whole / absent", f"{res['unknown_found']} / {res['unknown_absent']}")
    row("files verified by SHA-256 (all, through nginx)", res["verified"], f"{len(run.ledger.live)} files", "-", "all",
        "PASS" if res["verified"] == len(run.ledger.live) and not res["lost"] and not res["corrupt"] else "FAIL")
    lost = res["lost"] + res["must_exist_missing"]
    row("lost / corrupt / phantom files", f"{lost} / {res['corrupt']} / {res['phantom']}", "-", "-", "0",
        "PASS" if not (lost or res["corrupt"] or res["phantom"]) else "FAIL")
    row("listings = ledger (nginx; every instance)", f"{res['listing_mismatch']}; {res['instance_listing_mismatch']} "
        f"mismatches", f"{len(run.users)} users", "-", "0",
        "PASS" if not (res["listing_mismatch"] or res["instance_listing_mismatch"]) else "FAIL")
    row("users whose usage = sum of their files", f"{res['usage_ok']} of {len(run.users)}", "-", "-", "all",
        "PASS" if res["usage_ok"] == len(run.users) else "FAIL")
    if psql:
        row("catalog quota rows = file rows = listing", f"{cat_ok} of {cat_users} users", "-", "-", "all",
            "PASS" if cat_users and cat_ok == cat_users and not cat_problems else "FAIL")
    row("other failures (all checks)", len(run.failures), "-", "-", "0", "PASS" if not run.failures else "FAIL")
    for user, (listed, total) in sorted(run.usage.items()):
        print(f"   usage {user}: listing {listed} B, files {total} B")
    print(f"   operations started: {', '.join(f'{k} {v}' for k, v in sorted(run.ops.items()))}")
    for line in run.failures[:25]:
        print(f"   failure: {line}")
    if len(run.failures) > 25:
        print(f"   failure: ... {len(run.failures) - 25} more")
    return 1 if run.failures else 0


if __name__ == "__main__":
    L.run_main(main)
