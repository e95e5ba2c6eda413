#!/usr/bin/env python3
"""Writes COUNT small files of USER directly on disk, the way the old service stored them.

    mkfiles.py UPLOAD_ROOT USER COUNT [same-created-at]

Layout (API.md section 7): UPLOAD_ROOT/storage/USER/[{folder}/]{8 hex}_{name} with a JSON
sidecar `{name}.meta` holding the old service's fields only
{"original_name","mime","sha256","user_id","size","created_at"} (no crc32). The files are
spread evenly over FOLDERS (the user's top folder and nested subfolders), 64 to 4159 bytes
each, with created_at spread over a year, or with `same-created-at` one created_at for
all (a copied tree, a bulk import: the listing's order then falls to the keys).
Deterministic (seeded). Prints the number of files and their total size. Stdlib only.
"""
import datetime
import hashlib
import json
import os
import random
import sys

FOLDERS = ["", "docs", "docs/2024", "docs/2025", "photos", "photos/2024/summer",
           "photos/2025", "music", "video/raw", "archive"]
NAMES = [("report", ".pdf", "application/pdf"), ("photo", ".jpg", "image/jpeg"),
         ("notes", ".txt", "text/plain"), ("song", ".mp3", "audio/mpeg"),
         ("clip", ".mp4", "video/mp4"), ("data", ".csv", "text/csv")]


def main() -> int:
    root, user, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    same = len(sys.argv) > 4 and sys.argv[4] == "same-created-at"
    rnd = random.Random(4)
    base = os.path.join(root, "storage", user)
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    total = 0
    blob = rnd.randbytes(4096 + 64)
    for i in range(count):
        folder = FOLDERS[i % len(FOLDERS)]
        d = os.path.join(base, folder) if folder else base
        os.makedirs(d, exist_ok=True)
        stem, ext, mime = NAMES[i % len(NAMES)]
        original = f"{stem} {i:05d}{ext}"
        stored = f"{rnd.getrandbits(32):08x}_{stem}_{i:05d}{ext}"
        size = 64 + rnd.randrange(4096)
        data = blob[:size - 8] + i.to_bytes(8, "big")
        with open(os.path.join(d, stored), "wb") as f:
            f.write(data)
        created = start + datetime.timedelta(seconds=rnd.randrange(365 * 86400),
                                             microseconds=rnd.randrange(10**6))
        if same:
            created = start
        meta = {"original_name": original, "mime": mime,
                "sha256": hashlib.sha256(data).hexdigest(), "user_id": user,
                "size": size, "created_at": created.isoformat()}
        with open(os.path.join(d, stored + ".meta"), "w") as f:
            json.dump(meta, f)
        total += size
    print(count, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
