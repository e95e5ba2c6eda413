"""Helpers for the Python fault and load scenarios (load, crash, slowclients): a small
HTTP/1.1 client over asyncio streams (keep-alive, Content-Length and chunked answers), the
server's life (start, SIGKILL, restart on the same port and root, graceful stop), peak RSS,
table rows in the bench/run format, temp dirs removed at exit, and an on-disk consistency
check of UPLOAD_ROOT (orphan sidecars, dot-files, quota ledgers against the bytes on disk).

Stdlib only (Python 3.8+). Everything talks to 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

BENCH_LIB = os.environ.get("BENCH_LIB") or os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("REPO") or os.path.abspath(os.path.join(BENCH_LIB, "..", ".."))
BENCH_BIN = os.environ.get("BENCH_BIN") or os.path.join(REPO, "target", "release", "upload-server")
BENCH_TMPDIR = os.environ.get("BENCH_TMPDIR") or "/tmp"
SCENARIO = os.environ.get("BENCH_SCENARIO") or os.path.splitext(os.path.basename(sys.argv[0]))[0]
TOKEN = "load"


def log(msg: str) -> None:
    print(f"-- {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- exit handling

_cleanups: list = []


def on_exit(fn) -> None:
    """Registers a cleanup; they run last-first from `run_main`, also on SIGTERM/SIGINT."""
    _cleanups.append(fn)


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


def run_main(main) -> None:
    """Runs `main()` (returns an exit status) with SIGTERM/SIGINT turned into SystemExit,
    so the cleanups always run; a hard watchdog (BENCH_HARD_LIMIT_S) bounds the run."""
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    rc = 1
    try:
        rc = main()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - report and clean up
        import traceback

        traceback.print_exc()
        print(f"BROKEN: {e!r}", file=sys.stderr)
        rc = 1
    finally:
        for fn in reversed(_cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup failed: {e!r}")
    sys.exit(rc)


def bench_tmpdir() -> str:
    d = tempfile.mkdtemp(prefix=f"bench-{SCENARIO}.", dir=BENCH_TMPDIR)
    on_exit(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def machine_load() -> str:
    la = " ".join(open("/proc/loadavg").read().split()[:3])
    psi = ""
    try:
        for line in open("/proc/pressure/cpu"):
            if line.startswith("some"):
                psi = ", cpu pressure avg60 " + line.split()[2].split("=")[1] + "%"
    except OSError:
        pass
    return f"load {la}{psi}"


# ---------------------------------------------------------------- table rows

_rows: List[List[str]] = []


def row(figure, value, reference="-", ratio="-", target="-", result="info") -> None:
    r = [SCENARIO, str(figure), str(value), str(reference), str(ratio), str(target), str(result)]
    _rows.append(r)
    path = os.environ.get("BENCH_ROWS")
    if path:
        with open(path, "a") as f:
            f.write("\t".join(x.replace("\t", " ") for x in r) + "\n")


def print_table() -> None:
    data = "".join("\t".join(r) + "\n" for r in _rows)
    subprocess.run([sys.executable, os.path.join(BENCH_LIB, "table.py"), "--no-scenario"],
                   input=data.encode(), check=False)


def percentile(values: List[float], p: float) -> float:
    """Nearest rank, as `percentile` in common.sh."""
    if not values:
        return float("nan")
    v = sorted(values)
    import math

    r = max(1, min(len(v), math.ceil(p / 100 * len(v))))
    return v[r - 1]


# ---------------------------------------------------------------- the server


class Server:
    """The release binary on 127.0.0.1:port with a clean environment. The port and root stay
    the same across restarts."""

    def __init__(self, root: str, port: Optional[int] = None, env: Optional[Dict[str, str]] = None):
        if not os.access(BENCH_BIN, os.X_OK):
            raise SystemExit(f"BROKEN: no server binary at {BENCH_BIN} (run bench/run, which builds it)")
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = dict(env or {})
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = root.rstrip("/") + ".server.log"
        self.starts = 0
        self.peak_hwm_kib = 0
        self.start_times: List[float] = []
        on_exit(self.stop)

    def env(self) -> Dict[str, str]:
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "UPLOAD_ROOT": self.root,
            "BIND_HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PUBLIC_BASE_URL": self.url,
            "AUTH_SERVICE_TOKEN": TOKEN,
            "UPLOAD_SIGNING_KEY": "k",
            "RUST_LOG": "warn",
        }
        e.update(self.extra)
        return e

    def start(self, timeout: float = 30.0, env: Optional[Dict[str, str]] = None) -> float:
        """Starts the server (with `env` added for this start only), waits for /healthz;
        returns the seconds it took."""
        t0 = time.monotonic()
        logf = open(self.log_path, "ab")
        e = self.env()
        e.update(env or {})
        self.proc = subprocess.Popen([BENCH_BIN], env=e, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        self.starts += 1
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                self.dump_log()
                raise SystemExit(f"BROKEN: server exited at start (status {self.proc.returncode})")
            if self.healthy():
                dt = time.monotonic() - t0
                self.start_times.append(dt)
                return dt
            time.sleep(0.05)
        self.dump_log()
        raise SystemExit(f"BROKEN: server not healthy after {timeout} s")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status_kib(self, field_name: str) -> int:
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def note_hwm(self) -> int:
        h = self.status_kib("VmHWM")
        self.peak_hwm_kib = max(self.peak_hwm_kib, h)
        return h

    def cpu_s(self) -> float:
        try:
            rest = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if not self.alive():
            return
        self.note_hwm()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 35.0) -> Optional[int]:
        """SIGTERM (graceful), SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.note_hwm()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def dump_log(self, lines: int = 30) -> None:
        try:
            tail = open(self.log_path, errors="replace").read().splitlines()[-lines:]
            for line in tail:
                print(f"   server: {line}", file=sys.stderr)
        except OSError:
            pass

    def log_lines(self, needle: str) -> List[str]:
        """Lines of the server's log containing `needle`, ANSI colours removed."""
        import re

        ansi = re.compile(r"\x1b\[[0-9;]*m")
        try:
            lines = (ansi.sub("", l) for l in open(self.log_path, errors="replace"))
            return [l for l in lines if needle in l]
        except OSError:
            return []

    def keep_log(self) -> str:
        """Copies the log to BENCH_TMPDIR/bench-{scenario}-last-server.log (kept as evidence)."""
        dest = os.path.join(BENCH_TMPDIR, f"bench-{SCENARIO}-last-server.log")
        try:
            shutil.copyfile(self.log_path, dest)
        except OSError:
            return ""
        return dest


# ---------------------------------------------------------------- HTTP client


class ConnError(Exception):
    """The connection failed. `sent` is False when the request surely never reached the
    server (connect refused), so any request may be retried."""

    def __init__(self, msg: str, sent: bool = True):
        super().__init__(msg)
        self.sent = sent


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes
    seconds: float = 0.0

    def json(self):
        return json.loads(self.body)


class Http:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port (reconnects when closed)."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.port = port
        self.timeout = timeout
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def connect(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20), 10)
        except (OSError, asyncio.TimeoutError) as e:
            self.reader = self.writer = None
            raise ConnError(f"connect: {e!r}", sent=False) from None

    async def close(self) -> None:
        w, self.reader, self.writer = self.writer, None, None
        if w is not None:
            try:
                w.close()
            except Exception:  # noqa: BLE001
                pass

    async def request(self, method: str, path: str, headers: Optional[Dict[str, str]] = None,
                      body: Optional[bytes] = None, timeout: Optional[float] = None) -> Response:
        if self.writer is None:
            await self.connect()
        t0 = time.perf_counter()
        try:
            res = await asyncio.wait_for(self._exchange(method, path, headers or {}, body),
                                         timeout or self.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
                ValueError) as e:
            await self.close()
            raise ConnError(f"{method} {path[:80]}: {type(e).__name__}: {e}") from None
        res.seconds = time.perf_counter() - t0
        return res

    async def _exchange(self, method, path, headers, body) -> Response:
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        for k, v in headers.items():
            head.append(f"{k}: {v}")
        if body is not None or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body or b'')}")
        w = self.writer
        w.write(("\r\n".join(head) + "\r\n\r\n").encode("utf-8"))
        if body:
            w.write(body)
        await w.drain()
        r = self.reader
        line = await r.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        parts = line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        hdrs: Dict[str, str] = {}
        while True:
            h = await r.readline()
            if not h:
                raise asyncio.IncompleteReadError(b"", None)
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").partition(":")
            k = k.strip().lower()
            hdrs[k] = (hdrs[k] + ", " + v.strip()) if k in hdrs else v.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = await r.readline()
                if not size_line:
                    raise asyncio.IncompleteReadError(b"", None)
                n = int(size_line.split(b";")[0].strip(), 16)
                if n == 0:
                    while (await r.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await r.readexactly(n))
                await r.readexactly(2)
            data = b"".join(chunks)
        elif "content-length" in hdrs:
            data = await r.readexactly(int(hdrs["content-length"]))
        else:
            data = await r.read()
            await self.close()
        if hdrs.get("connection", "").lower() == "close" and self.writer is not None:
            await self.close()
        return Response(status, hdrs, data)


def svc(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    h = {"X-Service-Token": TOKEN}
    if extra:
        h.update(extra)
    return h


def jbody(obj) -> Tuple[Dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(obj).encode()


# ---------------------------------------------------------------- on-disk checks


@dataclass
class TreeReport:
    files: int = 0
    bytes_by_user: Dict[str, int] = field(default_factory=dict)
    files_by_user: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    ledgers: Dict[str, dict] = field(default_factory=dict)
    quota_problems: List[str] = field(default_factory=list)
    quota_tmp: List[str] = field(default_factory=list)      # temp ledger files left in .quota
    reserved_sessions: int = 0      # bytes reserved by sessions still in .parts
    reserved_uploads: int = 0       # bytes reserved by one-request uploads (.upload-* folders)
    sessions: List[str] = field(default_factory=list)      # live session ids in .parts
    parts_leftovers: List[str] = field(default_factory=list)  # .claimed-/.upload-/.aborted-, staging, .tmp-*


def check_tree(root: str) -> TreeReport:
    """Walks UPLOAD_ROOT: under storage/, every data file has its `.meta` and every `.meta`
    its data file, and no dot-file (temporary name) is left; the quota ledgers' `used`
    equals the bytes of the user's data files; every reservation belongs to a session or
    upload folder still in .parts. Lists what .parts holds."""
    rep = TreeReport()
    storage = os.path.join(root, "storage")
    for dirpath, dirnames, filenames in os.walk(storage):
        rel = os.path.relpath(dirpath, storage)
        user = rel.split(os.sep)[0] if rel != "." else None
        for d in dirnames:
            if d.startswith("."):
                rep.problems.append(f"dot-folder under storage/: {os.path.join(rel, d)}")
        names = set(filenames)
        for n in filenames:
            p = os.path.join(rel, n)
            if n.startswith("."):
                rep.problems.append(f"dot-file under storage/: {p}")
                continue
            if user is None:
                rep.problems.append(f"file directly in storage/: {n}")
                continue
            if n.endswith(".meta"):
                if n[: -len(".meta")] not in names:
                    rep.problems.append(f"orphan sidecar (no data file): {p}")
                continue
            if n + ".meta" not in names:
                rep.problems.append(f"data file without sidecar: {p}")
            st = os.lstat(os.path.join(dirpath, n))
            rep.files += 1
            rep.bytes_by_user[user] = rep.bytes_by_user.get(user, 0) + st.st_size
            rep.files_by_user[user] = rep.files_by_user.get(user, 0) + 1
    parts = os.path.join(root, ".parts")
    alive_ids = set()
    if os.path.isdir(parts):
        for n in sorted(os.listdir(parts)):
            p = os.path.join(parts, n)
            if n == ".staging":
                for s in os.listdir(p):
                    rep.parts_leftovers.append(f".staging/{s}")
                continue
            if n.startswith(".upload-"):
                alive_ids.add("upload-" + n[len(".upload-"):])
                rep.parts_leftovers.append(n)
                continue
            if n.startswith("."):
                if n.startswith(".claimed-"):
                    alive_ids.add(n[len(".claimed-"):])
                rep.parts_leftovers.append(n)
                continue
            alive_ids.add(n)
            rep.sessions.append(n)
            for s in os.listdir(p):
                if s.startswith(".tmp-"):
                    rep.parts_leftovers.append(f"{n}/{s}")
    qdir = os.path.join(root, ".quota")
    seen_users = set()
    if os.path.isdir(qdir):
        for n in sorted(os.listdir(qdir)):
            if n.startswith("."):
                rep.quota_tmp.append(n)
                continue
            if not n.endswith(".json"):
                continue
            try:
                led = json.load(open(os.path.join(qdir, n)))
            except (OSError, ValueError) as e:
                rep.quota_problems.append(f"unreadable ledger {n}: {e}")
                continue
            u = led.get("user_id")
            seen_users.add(u)
            rep.ledgers[u] = led
            disk = rep.bytes_by_user.get(u, 0)
            if led.get("used") != disk:
                rep.quota_problems.append(
                    f"user {u}: ledger used {led.get('used')} != {disk} bytes on disk "
                    f"(diff {led.get('used', 0) - disk:+d})")
            for rid, b in (led.get("reserved") or {}).items():
                if rid not in alive_ids:
                    rep.quota_problems.append(f"user {u}: reservation {rid} has no session or upload folder")
                elif rid.startswith("upload-"):
                    rep.reserved_uploads += b
                else:
                    rep.reserved_sessions += b
    for u, b in rep.bytes_by_user.items():
        if u not in seen_users and b:
            rep.quota_problems.append(f"user {u}: {b} bytes on disk but no ledger")
    return rep


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()
