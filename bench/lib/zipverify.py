#!/usr/bin/env python3
"""Checks a ZIP archive with Python's zipfile.

    zipverify.py ZIP [EXPECTED]

zipfile.ZipFile(ZIP).testzip() must report no bad entry (it reads every entry and checks
its CRC-32). With EXPECTED (lines "name<TAB>size<TAB>sha256", sha256 "-" to skip reading
the entry again), the archive must hold exactly those entries, in that order, with those
sizes and contents. Prints one JSON object: entries, zip64 (an end-of-central-directory
ZIP64 record is present), testzip_s. Exits 1 with a message on any failure. Stdlib only.
"""
import hashlib
import json
import os
import sys
import time
import zipfile


def fail(msg: str) -> None:
    print(f"BROKEN: {msg}", file=sys.stderr)
    sys.exit(1)


def main() -> int:
    path = sys.argv[1]
    t0 = time.monotonic()
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                fail(f"testzip: bad entry {bad!r}")
            testzip_s = time.monotonic() - t0
            infos = z.infolist()
            if len(sys.argv) > 2:
                with open(sys.argv[2]) as f:
                    want = [line.rstrip("\n").split("\t") for line in f if line.strip()]
                got = [i.filename for i in infos]
                if got != [w[0] for w in want]:
                    fail(f"entries {got}, expected {[w[0] for w in want]}")
                for info, (name, size, sha) in zip(infos, want):
                    if info.file_size != int(size):
                        fail(f"{name}: {info.file_size} bytes, expected {size}")
                    if sha != "-":
                        h = hashlib.sha256()
                        with z.open(info) as e:
                            while chunk := e.read(1 << 20):
                                h.update(chunk)
                        if h.hexdigest() != sha:
                            fail(f"{name}: other bytes than the stored file")
    except zipfile.BadZipFile as e:
        fail(f"not a valid ZIP: {e}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536 - 98))
        tail = f.read()
    print(json.dumps({"entries": len(infos), "zip64": b"PK\x06\x06" in tail,
                      "testzip_s": round(testzip_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
