"""Checks a ZIP with Python's zipfile: testzip, then prints name<TAB>size<TAB>sha256 per entry."""
import hashlib
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z:
    bad = z.testzip()
    if bad is not None:
        sys.exit(f"bad entry: {bad}")
    for info in z.infolist():
        data = z.read(info)
        print(f"{info.filename}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}")
