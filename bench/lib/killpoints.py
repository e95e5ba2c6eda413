"""Kill points: SIGKILL the server at one exact filesystem step (bench/lib/killpoint.c, an
LD_PRELOAD shim around rename/unlink/link), restart it, and check what a random kill can only
hit by luck: nothing partial or orphaned under storage/, quota ledgers equal to the disk after
the start-up reconcile, and the interrupted operation either done whole or undone (a session
resumable, a file present whole or absent). Used by the `crash` scenario after its random
kills; skipped when no C compiler is found.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.parse
from typing import List, Optional, Tuple

import loadlib as L
from loadlib import ConnError, Http, jbody, svc

MIB = 1024 * 1024

# name, flow, op, pattern (fnmatch on the target path), exclude, skip, kill after the call
POINTS = [
    ("part: before part_N is renamed in", "part", "rename", "*/.parts/*/part_*", "", 0, False),
    # A part sent in order is appended to the session's data file and recorded as seg_N.
    ("part in order: before seg_N is renamed in", "partseq", "rename", "*/.parts/*/seg_*", "", 0, False),
    ("part in order: after seg_N is renamed in", "partseq", "rename", "*/.parts/*/seg_*", "", 0, True),
    ("complete 1 part: before claiming the session", "complete1", "rename", "*/.parts/.claimed-*", "", 0, False),
    ("complete 1 part: before the hard link", "complete1", "link", "*/.claimed-*/.joined", "", 0, False),
    ("complete 1 part: before sidecar into storage/", "complete1", "rename", "*/storage/*.meta", "", 0, False),
    ("complete 1 part: before data into storage/", "complete1", "rename", "*/storage/*", "*.meta", 0, False),
    ("complete 1 part: after data into storage/", "complete1", "rename", "*/storage/*", "*.meta", 0, True),
    ("complete 1 part: before the ledger update", "complete1", "rename", "*/.quota/*.json", "", 0, False),
    # The clean-up after a successful complete (Store::end_claim) first renames the claimed
    # folder out of the way, to `.parts/.aborted-{id}-{uuid}`, then deletes that
    # (remove_dir_all), so that no half-deleted folder is still named `.claimed-*` (which a
    # restart would take for a complete cut short, and give back: a second copy). The points
    # below kill right after that rename and half-way through the delete. remove_dir_all
    # removes the folder's files in readdir order, which depends on the filesystem: on this
    # ext4 session.json goes first, on tmpfs (newest first) publish.json goes before it. Both
    # orders are tried: "tmpfs" runs the point on a tmpfs root (root only).
    ("complete 1 part: cleanup after success, claimed folder just renamed away", "complete1", "rename",
     "*/.parts/.aborted-*", "", 0, True),
    ("complete 1 part: cleanup after success, publish.json just removed", "complete1", "unlink",
     "*/.parts/.aborted-*/publish.json", "", 0, True),
    ("complete 1 part: cleanup after success, session.json just removed", "complete1", "unlink",
     "*/.parts/.aborted-*/session.json", "", 0, True),
    ("complete 1 part on tmpfs: cleanup after success, publish.json just removed", "complete1", "unlink",
     "*/.parts/.aborted-*/publish.json", "", 0, True),
    ("complete 3 parts on tmpfs: cleanup after success, publish.json just removed", "complete3", "unlink",
     "*/.parts/.aborted-*/publish.json", "", 0, True),
    ("complete 3 parts in order: before the hard link", "complete3seq", "link", "*/.claimed-*/.joined", "", 0, False),
    ("complete 3 parts in order: before data into storage/", "complete3seq", "rename", "*/storage/*", "*.meta", 0,
     False),
    ("complete 3 parts in order: after data into storage/", "complete3seq", "rename", "*/storage/*", "*.meta", 0,
     True),
    ("complete 3 parts: before data into storage/", "complete3", "rename", "*/storage/*", "*.meta", 0, False),
    ("complete 3 parts: after data into storage/", "complete3", "rename", "*/storage/*", "*.meta", 0, True),
    ("one-request upload: before reserving quota", "upload", "rename", "*/.quota/*.json", "", 0, False),
    ("one-request upload: before sidecar into storage/", "upload", "rename", "*/storage/*.meta", "", 0, False),
    ("one-request upload: before data into storage/", "upload", "rename", "*/storage/*", "*.meta", 0, False),
    ("one-request upload: after data into storage/", "upload", "rename", "*/storage/*", "*.meta", 0, True),
    ("one-request upload: before the ledger update", "upload", "rename", "*/.quota/*.json", "", 1, False),
    ("delete: before the data unlink", "delete", "unlink", "*/storage/*", "*.meta", 0, False),
    # Delete hides the data under `.{uuid}.deleting` (a rename), unlinks the sidecar, then
    # the hidden data: "between" is after the data is hidden, before the sidecar goes.
    ("delete: between data and sidecar unlinks", "delete", "unlink", "*/storage/*.meta", "", 0, False),
    ("delete: before the ledger update", "delete", "rename", "*/.quota/*.json", "", 0, False),
    ("abort session: before the ledger update", "abort", "rename", "*/.quota/*.json", "", 0, False),
]


def build_shim(tmp: str) -> Optional[str]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    out = os.path.join(tmp, "killpoint.so")
    r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", out, os.path.join(L.BENCH_LIB, "killpoint.c"), "-ldl"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        L.log(f"cannot build the kill-point shim: {r.stderr.strip()[:300]}")
        return None
    return out


def content(tag: int, size: int) -> bytes:
    import random

    return tag.to_bytes(8, "big") + random.Random(tag).randbytes(max(0, size - 8))


class Trial:
    def __init__(self, port: int):
        self.port = port
        self.http = Http(port, timeout=60)
        self.notes: List[str] = []

    async def req(self, method, path, headers=None, body=None) -> L.Response:
        return await self.http.request(method, path, headers, body)

    async def init(self, user: str, name: str, size: int, mode: str) -> str:
        h, b = jbody({"mode": mode, "files": [{"name": name, "size": size}], "meta": {"user_id": user}})
        r = await self.req("POST", "/v1/files/init", svc(h), b)
        assert r.status == 200, f"init {r.status} {r.body[:200]!r}"
        return r.json()["uploadId"]

    async def put(self, uid: str, n: int, data: bytes) -> L.Response:
        return await self.req("PUT", f"/v1/files/part/{uid}/{n}", svc({"Content-Type": "application/octet-stream"}),
                              data)

    async def upload(self, user: str, name: str, data: bytes) -> L.Response:
        return await self.req("POST", f"/v1/files/upload?user_id={user}&filename={name}",
                              svc({"Content-Type": "application/octet-stream"}), data)

    async def complete(self, uid: str, sha: str) -> L.Response:
        h, b = jbody({"uploadId": uid, "sha256": sha})
        return await self.req("POST", "/v1/files/complete", svc(h), b)

    async def listing(self, user: str) -> dict:
        r = await self.req("GET", f"/v1/files/all?user_id={user}", svc())
        assert r.status == 200, f"list {r.status}"
        return r.json()

    async def files_with(self, user: str, sha: str) -> Tuple[int, List[str]]:
        """How many listed files of `user` have these bytes; problems seen on the way."""
        found, problems = 0, []
        for f in (await self.listing(user))["files"]:
            r = await self.req("GET", "/storage/" + urllib.parse.quote(f["key"][len("storage/"):], safe="/"))
            if r.status != 200:
                problems.append(f"listed {f['key']} answers {r.status}")
            elif L.sha256_hex(r.body) == sha:
                found += 1
        return found, problems


async def prepare(t: Trial, flow: str) -> dict:
    user = "kp"
    st: dict = {"user": user}
    # A witness file that no kill may touch.
    w = content(1, 200_000)
    r = await t.upload(user, "witness.bin", w)
    assert r.status == 200, r.body
    st["witness"] = (r.json()["files"][0]["key"], L.sha256_hex(w))
    if flow in ("part", "partseq", "complete1", "complete3", "complete3seq", "abort"):
        size = {"part": 2 * MIB, "partseq": 2 * MIB, "complete1": 3 * MIB + 7, "complete3": 3 * MIB + 7,
                "complete3seq": 3 * MIB + 7, "abort": 2 * MIB}[flow]
        data = content(2, size)
        n_parts = {"part": 2, "partseq": 2, "complete1": 1, "complete3": 3, "complete3seq": 3, "abort": 2}[flow]
        uid = await t.init(user, f"{flow}.bin", size, "single" if n_parts == 1 else "chunked")
        cuts = [size * i // n_parts for i in range(n_parts + 1)]
        parts = [(i, data[cuts[i]:cuts[i + 1]]) for i in range(n_parts)]
        # complete3 sends its parts out of order (joined at complete), complete3seq in order
        # (appended to the data file, which complete links into place).
        send_now = {"part": [1], "partseq": [0], "complete1": [0], "complete3": [2, 0, 1],
                    "complete3seq": [0, 1, 2], "abort": [0]}[flow]
        for n in send_now:
            r = await t.put(uid, n, parts[n][1])
            assert r.status == 200, r.body
        st.update(uid=uid, data=data, parts=parts, sha=L.sha256_hex(data))
    elif flow == "upload":
        data = content(3, 1 * MIB + 3)
        st.update(data=data, sha=L.sha256_hex(data))
    elif flow == "delete":
        data = content(4, 300_000)
        r = await t.upload(user, "doomed.bin", data)
        assert r.status == 200, r.body
        st.update(key=r.json()["files"][0]["key"], data=data, sha=L.sha256_hex(data))
    return st


async def act(t: Trial, flow: str, st: dict) -> Optional[L.Response]:
    """The operation the kill point cuts; None when the connection was cut."""
    try:
        if flow == "part":
            return await t.put(st["uid"], 0, st["parts"][0][1])
        if flow == "partseq":
            return await t.put(st["uid"], 1, st["parts"][1][1])
        if flow in ("complete1", "complete3", "complete3seq"):
            return await t.complete(st["uid"], st["sha"])
        if flow == "upload":
            return await t.upload(st["user"], "cut.bin", st["data"])
        if flow == "delete":
            return await t.req("DELETE", "/v1/files/" + st["key"], svc())
        if flow == "abort":
            return await t.req("DELETE", f"/v1/files/uploads/{st['uid']}", svc())
    except ConnError:
        return None
    raise AssertionError(flow)


async def settle(t: Trial, flow: str, st: dict) -> Tuple[str, List[str]]:
    """After the restart: the cut operation is done whole or undone. Returns (outcome, problems)."""
    problems: List[str] = []
    user = st["user"]
    found, p = await t.files_with(user, st["witness"][1])
    problems += p
    if found != 1:
        problems.append(f"witness file: {found} copies listed")
    if flow in ("part", "partseq", "complete1", "complete3", "complete3seq"):
        r = await t.req("GET", f"/v1/files/uploads/{st['uid']}", svc())
        if r.status == 200:
            have = {p["partNumber"]: p["size"] for p in r.json()["parts"]}
            for n, chunk in st["parts"]:
                if have.get(n) != len(chunk):
                    rr = await t.put(st["uid"], n, chunk)
                    if rr.status != 200:
                        problems.append(f"resending part {n}: {rr.status} {rr.body[:120]!r}")
            rr = await t.complete(st["uid"], st["sha"])
            if rr.status != 200:
                problems.append(f"complete after the restart: {rr.status} {rr.body[:200]!r}")
            outcome = "session resumed, completed"
        elif r.status == 404:
            outcome = "session gone, file stored"
            if flow in ("part", "partseq"):
                problems.append("the session was lost by a kill during a part")
        else:
            problems.append(f"session status {r.status}")
            outcome = "?"
        found, p = await t.files_with(user, st["sha"])
        problems += p
        if found != 1:
            problems.append(f"{found} copies of the file after the restart")
        return outcome, problems
    if flow == "upload":
        found, p = await t.files_with(user, st["sha"])
        problems += p
        if found > 1:
            problems.append(f"{found} copies of the cut upload")
        return ("file stored whole" if found == 1 else "nothing stored"), problems
    if flow == "delete":
        found, p = await t.files_with(user, st["sha"])
        problems += p
        return ("file still there, whole" if found == 1 else "file deleted"), problems
    if flow == "abort":
        r = await t.req("GET", f"/v1/files/uploads/{st['uid']}", svc())
        return ("session still there" if r.status == 200 else "session gone"), problems
    raise AssertionError(flow)


def run_points(tmp: str) -> Tuple[int, int, List[str]]:
    """Runs every kill point; returns (points run, points passed, report lines)."""
    shim = build_shim(tmp)
    if not shim:
        return 0, 0, ["kill points skipped: no C compiler (cc) to build bench/lib/killpoint.c"]
    lines: List[str] = []
    passed = 0
    for i, (name, flow, op, pattern, exclude, skip, after) in enumerate(POINTS):
        root = os.path.join(tmp, f"kp{i}", "root")
        os.makedirs(root)
        mounted = False
        if "on tmpfs" in name:
            if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", root],
                                                   capture_output=True).returncode != 0:
                lines.append(f"SKIP  {name}: needs root to mount a tmpfs")
                continue
            mounted = True
            L.on_exit(lambda r=root: subprocess.run(["umount", "-l", r], capture_output=True))
        srv = L.Server(root)
        srv.start()
        t = Trial(srv.port)
        problems: List[str] = []
        notes: List[str] = []
        outcome = "?"
        try:
            st = asyncio.run(prepare(t, flow))
            srv.stop()
            kp_log = os.path.join(tmp, f"kp{i}.log")
            srv.start(env={"LD_PRELOAD": shim, "KP_OP": op, "KP_PATTERN": pattern, "KP_EXCLUDE": exclude,
                           "KP_SKIP": str(skip), "KP_AFTER": "1" if after else "0", "KP_LOG": kp_log})
            res = asyncio.run(act(Trial(srv.port), flow, st))
            try:
                srv.proc.wait(10)
            except Exception:  # noqa: BLE001
                pass
            if srv.alive() or not os.path.exists(kp_log):
                problems.append(f"kill point not reached (answer {res.status if res else 'cut'})")
                srv.stop()
            killed_at = open(kp_log).read().strip() if os.path.exists(kp_log) else ""
            srv.start()
            outcome, p = asyncio.run(settle(Trial(srv.port), flow, st))
            problems += p
            srv.stop()
            tree = L.check_tree(root)
            problems += tree.problems + tree.quota_problems
            for sid in tree.sessions:
                d = os.path.join(root, ".parts", sid)
                if not os.path.exists(os.path.join(d, "session.json")):
                    notes.append(f"note: session folder {sid[:8]}... without session.json left in .parts "
                                 f"(holds {sorted(os.listdir(d))}; removed only after the session TTL)")
            if killed_at:
                killed_at = killed_at.replace(root, "ROOT")
        except (AssertionError, ConnError) as e:
            problems.append(f"trial broke: {e!r}")
            srv.stop()
            killed_at = ""
        if mounted:
            subprocess.run(["umount", "-l", root], capture_output=True)
        ok = not problems
        passed += ok
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}: {outcome}"
                     + (f" [killed at {killed_at}]" if killed_at else ""))
        for p in problems + notes:
            lines.append(f"        {p}")
    ran = sum(1 for l in lines if l.startswith(("PASS", "FAIL")))
    return ran, passed, lines
