#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/seeds/<target>/.

The seeds are real requests and hostile inputs from API.md (ranges, conditionals, the
paths of §4.3 and §7, the old service's signed URLs, real part and init/complete bodies),
in each target's input format (see the doc comment atop fuzz_targets/<target>.rs).
Placeholders such as {P0}, {S0}, {ETAG0} name the fuzz harness's stored files
(fuzz/src/lib.rs, Harness::expand). Rerunning rewrites the same files.
"""

import base64
import hashlib
import json
import pathlib
import shutil

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = HERE.parent / "tests" / "fixtures" / "signed-url-vectors.json"

# Harness file indices: 0 report.txt (1000 B), 1 empty.bin (0 B), 2 Résumé été.pdf (1 B,
# alice), 3 page.html (70000 B, u2), 4.. the old service's files (4 photo.jpg 10244 B,
# 5 notes.txt 2700 B, 6 clip.mp4 37000 B, 7 Résumé été.pdf 5009 B, 8 data.json 14 B,
# 9 placed-by-hand.png 208 B, no sidecar).


def old_urls():
    v = json.loads(VECTORS.read_text())
    base = v["public_base_url"]
    return [t["url"][len(base):] for t in v["vectors"]]


def range_seeds():
    s = []
    for i in (0, 1, 2, 3, 6, 9):
        s.append(f"GET {{P{i}}}")
        s.append(f"HEAD {{P{i}}}")
    ranges = [
        "bytes=0-99", "bytes=990-", "bytes=-10", "bytes=5000-6000", "bytes=10-5",
        "bytes=0-0", "bytes=-0", "bytes=999-999", "bytes=1000-", "bytes=0-",
        "bytes=0-0,5-9", "bytes=0-9,5-14", "bytes=500-599,0-99",
        "bytes=" + ",".join(f"{i}-{i}" for i in range(20)),
        "bytes=0-1,0-1,0-1,0-1", "bytes=0-999999999999999999999",
        "bytes=18446744073709551615-", "bytes=-18446744073709551616",
        "items=0-5", "bytes 0-5", "bytes=", "bytes=-", "bytes= 0-5", "bytes=0-5 ",
        "BYTES=0-5", "bytes=0--5", "bytes=a-b", "bytes=0-5,", "bytes=,0-5",
    ]
    for r in ranges:
        s.append(f"GET {{P0}}\nRange: {r}")
    s += [
        "GET {P1}\nRange: bytes=0-0", "GET {P1}\nRange: bytes=-5", "GET {P1}\nRange: bytes=0-",
        "GET {P2}\nRange: bytes=0-0", "GET {P2}\nRange: bytes=1-",
        "GET {P3}\nRange: bytes=65536-131071", "GET {P3}\nRange: bytes=-70001",
        "HEAD {P3}\nRange: bytes=100-199",
        "GET {P6}\nRange: bytes=36000-", "GET {P9}\nRange: bytes=0-7",
        "GET {P0}\nRange: bytes=0-99\nRange: bytes=100-199",
    ]
    cond = [
        "If-Range: {ETAG0}", 'If-Range: "stale"', "If-Range: W/{ETAG0}", "If-Range: {LM0}",
        "If-Range: Thu, 01 Jan 1970 00:00:00 GMT", "If-Range: Sun, 06 Nov 2094 08:49:37 GMT",
        "If-Range: {ETAG1}", "If-Range: garbage", "If-Range: \xe9t\xe9",
    ]
    for c in cond:
        s.append(f"GET {{P0}}\nRange: bytes=0-99\n{c}")
    s += [
        "GET {P0}\nIf-None-Match: {ETAG0}", "GET {P0}\nIf-None-Match: *",
        'GET {P0}\nIf-None-Match: "x", {ETAG0}', "GET {P0}\nIf-None-Match: W/{ETAG0}",
        'GET {P0}\nIf-None-Match: "x"', "HEAD {P0}\nIf-None-Match: {ETAG0}",
        "GET {P0}\nIf-Modified-Since: {LM0}",
        "GET {P0}\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT",
        "GET {P0}\nIf-Modified-Since: Sun, 06 Nov 2094 08:49:37 GMT",
        "GET {P0}\nIf-Modified-Since: Sunday, 06-Nov-94 08:49:37 GMT",
        "GET {P0}\nIf-Modified-Since: Sun Nov  6 08:49:37 1994",
        "GET {P0}\nIf-Modified-Since: yesterday",
        'GET {P0}\nIf-Match: "nope"', "GET {P0}\nIf-Match: {ETAG0}", "GET {P0}\nIf-Match: *",
        "GET {P0}\nIf-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT",
        "GET {P0}\nIf-Unmodified-Since: {LM0}",
        "GET {P0}\nRange: bytes=0-9\nIf-None-Match: {ETAG0}",
        'GET {P0}\nRange: bytes=0-9\nIf-Match: "nope"',
        "GET {P0}\nRange: bytes=0-9\nIf-Modified-Since: {LM0}\nIf-Range: {ETAG0}",
    ]
    s += [
        "GET {S0}\nRange: bytes=0-9", "GET {A3}\nRange: bytes=-100", "HEAD {S2}", "GET {X0}",
        "GET /v1/files{S0}\nRange: bytes=10-19", "GET {S1}\nRange: bytes=0-0",
        "GET {A0}\nIf-None-Match: {ETAG0}", "GET {S0}\nRange: bytes=0-9\nIf-Range: \"old\"",
        "GET /get/{K0}?exp={EXP}&sig={SIG0}&disposition=attachment",
    ]
    for u in old_urls():
        s.append(f"GET {u}")
        s.append(f"GET {u}\nRange: bytes=100-")
    hostile = [
        "/storage/u1/docs/..%2F..%2F..%2F.signing_key", "/storage/u1/%2e%2e/%2e%2e/.signing_key",
        "/storage/u1/.hidden", "/storage/u1/docs/.env", "/storage/.top/x",
        "/storage/u1/docs/1a2b3c4d_link.txt", "/storage/u1/linkdir/secret.txt",
        "/storage/u1/linkfile", "/storage/.parts/x/part", "{P0}.meta", "{P7}.meta",
        "/storage/u1/docs%5C..%5C..%5C.signing_key", "/storage/u1/a%00b", "/storage//u1/docs",
        "/storage/u1/../../.signing_key", "/storage/..%2f.signing_key/x", "{P0}/", "{P0}%00",
        "/storage/u1/docs", "/storage/u1/docs/", "/storage/%2e%2e/.parts/00000000-0000-4000-8000-000000000000/part-000000",
        "/storage/u1/docs/%2e", "/storage/u1/%00/x", "/storage/u1/docs/x%0ay", "/storage/u1\\docs",
        "/storage/u1/docs/..\\..\\.signing_key", "/get/Li4vLnNpZ25pbmdfa2V5?exp={EXP}&sig=00",
        "/storage/user123/legacy/placed-by-hand.png.meta", "/storage/%75%31/docs",
        "/storage/u1/docs/" + "a" * 300, "/storage/" + "u" * 256 + "/x",
    ]
    for p in hostile:
        s.append(f"GET {p}")
    return s


def signed_seeds():
    s = [
        "GET {S0}", "GET {A0}", "GET {X0}", "GET /v1/files{S1}", "HEAD {S3}\nRange: bytes=0-9",
        "GET {S7}", "GET {A9}",
        "GET /get/{K0}?exp={EXP}&sig={SIGA0}",
        "GET /get/{K0}?exp={EXP}&sig={SIG0}&disposition=attachment",
        "GET /get/{K0}?exp={EXP}&sig={SIGA0}&disposition=attachment",
        "GET /get/{K0}?exp={EXP}&sig={SIGA0}&disposition=ATTACHMENT",
        "GET /get/{K0}?exp={EXP}&sig={SIGA0}&disposition=%20attachment%20",
        "GET /get/{K0}?exp={EXP}&sig={SIG0}&disposition=inline",
        "GET /get/{K0}?exp={EXP}&sig={SIG0}&disposition=",
        "GET /get/{K0}?exp=+{EXP}&sig={SIG0}", "GET /get/{K0}?exp=0{EXP}&sig={SIG0}",
        "GET /get/{K0}?exp=%20{EXP}&sig={SIG0}", "GET /get/{K0}?exp={EXP}.0&sig={SIG0}",
        "GET /get/{K1}?exp={EXP}&sig={SIG0}", "GET /get/{K0}?exp={PAST}&sig={SIG0}",
        "GET /get/{K0}?exp={EXP}&sig={SIG0}&exp={PAST}",
        "GET /get/{K0}?exp={EXP}&sig={SIG0}&sig=00",
        "GET /get/{K0}?exp={EXP}&sig=00", "GET /get/{K0}?exp={EXP}&sig=",
        "GET /get/{K0}?exp={EXP}&sig=%20{SIG0}%20", "GET /get/{K0}?exp={EXP}",
        "GET /get/{K0}?sig={SIG0}", "GET /get/{K0}", "GET /get/!!!?exp=1&sig=00",
        "GET /get/{K0}==?exp={EXP}&sig={SIG0}", "GET /get/{K0}%3D?exp={EXP}&sig={SIG0}",
        "GET /get/%2F{K0}?exp={EXP}&sig={SIG0}", "GET /get/{K0}/x?exp={EXP}&sig={SIG0}",
        "GET /get/?exp={EXP}&sig={SIG0}", "GET /get/{K0}?exp=9223372036854775807&sig={SIG0}",
        "GET /get/{K0}?exp=-1&sig={SIG0}", "GET /get/{K0}?exp={EXP}&sig={SIG0}#frag",
        "GET /get/{K0}?exp={EXP}&&sig={SIG0}&", "GET /get/{K0}?exp={EXP}&sig={SIG0}&x=%ZZ",
    ]
    for u in old_urls():
        s.append(f"GET {u}")
        s.append(f"HEAD {u}\nRange: bytes=-1")
    # Keys of hostile forms, base64url (no file has them; they must never be served).
    for k in ["storage/u1/../../.signing_key", "storage/u1/docs/.env", "/storage/u1/x",
              "storage/u1/docs/report.txt.meta", "storage/u1\\docs", ".parts/x/y",
              "storage/user123/legacy/placed-by-hand.png.meta"]:
        enc = base64.urlsafe_b64encode(k.encode()).decode()
        s.append(f"GET /get/{enc}?exp={{EXP}}&sig=00")
        s.append(enc)
    s += ["c3RvcmFnZS91Mi94", "c3RvcmFnZS91Mi94==", "c3RvcmFnZS91Mi94===", "c3RvcmFnZS91Mi95",
          "YQ", "YR", "YQ=", "Y", "", "_-_-", "+/+/"]
    return s


def part_seeds():
    data = bytes(range(256)) * 3
    b64 = base64.b64encode(data).decode()
    bodies = [
        f'{{"uploadId":"abc","partNumber":0,"chunkBase64":"{b64}"}}',
        f'{{"chunkBase64":"{b64}","partNumber":"1","uploadId":"u"}}',
        ' { "chunkBase64" : "aGk\\/", "partNumber": 2, "uploadId": "u" } ',
        '{"chunkBase64":"aGk"}', '{"chunkBase64":"aGk="}', '{"chunkBase64":"aGk=="}',
        '{"chunkBase64":"aG k=\\n"}', '{"chunkBase64":"a"}', '{"chunkBase64":"@@@@"}',
        '{"chunkBase64":"aGk=aGk="}', '{"chunkBase64":"AAAA' + "=" * 40 + '"}',
        '{"chunkBase64":"\\u0041\\u0041\\u0041\\u0041"}', '{"chunkBase64":"QUF\\u00e9"}',
        '{"chunkBase64":"QUFB\\r\\nQUFB"}', '{"chunkBase64":"QUFB\\bQUFB"}',
        '{"chunkBase64":5}', '{"chunkBase64":"QQ==","chunkBase64":"QQ=="}',
        '{"uploadId":"x","uploadId":"y","chunkBase64":""}', '{"uploadId":1}',
        '{"partNumber":1.0,"chunkBase64":""}', '{"partNumber":1e2,"chunkBase64":""}',
        '{"partNumber":-0,"chunkBase64":""}', '{"partNumber":true,"chunkBase64":""}',
        '{"partNumber":01,"chunkBase64":""}', '{"partNumber":nan,"chunkBase64":""}',
        '{"x":{"a":[1,"}"]},"chunkBase64":"QUJD"}', '{"x":[}],"chunkBase64":"QUJD"}',
        '{"x":"\\ud800","chunkBase64":"QUJD"}', '{"x":"\\u00e9\\n","chunkBase64":"QUJD"}',
        '{"a":1,}', '{}', '[1,2]', '{"a":1} x', '{"uploadId":"x"', '', '   ',
        '{"x":' + "[" * 40 + "]" * 40 + '}', '{"x":tru}', '{"x":null,"y":false}',
    ]
    seeds = []
    for i, b in enumerate(bodies):
        seeds.append(bytes([i % 256, (i * 37) % 256]) + b.encode())
    return seeds


def keys_seeds():
    return [
        "storage/u1/a/b/1234abcd_x.txt", "/storage/u1/x", "storage/u1", "storage/u1/",
        "storage/../x", "storage/u1/../u2/x", "storage/u1/./x", "storage/u1/a//x",
        "storage/u1/x.meta", "storage/u1/x.META", "storage/u1/.signing_key", "storage/u1/a\\b",
        "storage/u1/a\x00b", "storage/u1/a\x7fb", "storage/u1/a\u0085b", ".parts/x/y",
        "other/u1/x", "storage/alice@example.com/main/pictures/c0b82ce0_photo.jpg",
        "storage/user123/documents/7b897611_Résumé été.pdf", "storage/.u/x",
        "storage/" + "u" * 255 + "/x", "storage/u1/" + "a" * 256, "u1/docs/1a2b3c4d_a.txt",
        "u1/../x", "..", ".", "", "Zoë", "c3RvcmFnZS91Mi94", "c3RvcmFnZS91MS8uLi8uLi94",
        "storage/u1/x/", "storage//x", "storage/u1/ /x", "storage/u1/x ",
    ]


def names_seeds():
    folders = ["main/pictures", "", " / /", "../../etc", "/abs/path/", "a\\b", "a<b>c:d",
               " .hidden. ", "...", "x" * 150, "𝄞" * 150, "a/./b", "a/ . /b", ".\u2003.",
               "CON/nul", "a\x00b", "\t/\n/x", "é" * 120 + "/" + "." * 300]
    names = ["photo.jpg", "", "...", "a\x00b", "x.meta", "x.META", "x.meta.", "Résumé été.pdf",
             "é" * 200 + ".mp4", "y" * 300, "x" * 239 + ". " + "y" * 10, "x" * 250 + ".meta",
             "x" * 236 + ".meta", "a" * 230 + "." + "b" * 20, "CON", "con.txt", "LPT1",
             ".env", "a..b", "a/b", " name ", "..name..", "a" * 240 + ".txt",
             "x" * 238 + "é.txt", "."  + "a" * 300]
    seeds = []
    for f in folders:
        seeds.append(f + "\x00" + "photo.jpg")
    for n in names:
        seeds.append("docs\x00" + n)
    return seeds


def json_seeds():
    def req(path, body, caller="service", extra=""):
        head = f"{path}\nas: {caller}\n{extra}" if extra else f"{path}\nas: {caller}"
        return f"{head}\n\n{body}"

    sha_hello = hashlib.sha256(b"hello").hexdigest()
    s = []
    init = [
        '{"mode":"single","files":[{"name":"a.jpg","size":1024,"mime":"image/jpeg"}],"folder":"main/pictures","meta":{"user_id":"u1"}}',
        '{"mode":"chunked","files":[{"name":"a.bin","size":3145728}],"meta":{"user_id":"u1"}}',
        '{"mode":"chunked","files":[{"name":"a.bin","size":0}],"meta":{"user_id":"u1"}}',
        '{"mode":"batch","files":[{"name":"a.txt","size":1},{"name":"b.txt","size":2}],"meta":{"user_email":"alice@example.com"}}',
        '{"files":[{"name":"a.txt","size":6633.0}],"meta":{"user_id":"u1"}}',
        '{"files":[{"name":"a.txt","size":-1}],"meta":{"user_id":"u1"}}',
        '{"files":[{"name":"a.txt","size":1e30}],"meta":{"user_id":"u1"}}',
        '{"files":[{"name":"a.txt","size":200000}],"meta":{"user_id":"u1"}}',
        '{"files":[{"name":"../x","size":1}],"meta":{"user_id":"u1"}}',
        '{"files":[{"name":"CON","size":1}],"meta":{"user_id":"u1"}}',
        '{"files":[],"meta":{"user_id":"u1"}}',
        '{"mode":"weird","files":[{"name":"a","size":1}],"meta":{"user_id":"u1"}}',
        '{"files":[{"name":"a","size":1}]}',
        '{"files":[{"name":"a","size":1}],"meta":{"user_id":"../u2"}}',
        '{"files":[{"name":"a","size":1}],"meta":{"user_id":" "}}',
        '{"files":[{"name":"a","size":1}],"meta":{"user_id":5}}',
        '{"files":[{"name":"a","size":1}],"folder":"../../x","meta":{"user_id":"u1","tags":["a"]}}',
        '{"files":[{"name":"a","size":1}],"meta":{"user_id":"' + "u" * 256 + '"}}',
        '{"files":"x"}', '{', '', 'null', '[]',
    ]
    for b in init:
        s.append(req("/v1/files/init", b))
    s.append(req("/v1/files/init", init[0], "user"))
    s.append(req("/v1/files/init", init[0], "none"))
    s.append(req("/v1/files/init", init[0], "forged"))
    s.append(req("/v1/files/init", init[0], "badservice"))
    s.append(req("/v1/files/init", init[0], "cookie"))
    s.append(req("/v1/files/init", init[0], "service", "Content-Type: text/plain"))
    complete = [
        '{"uploadId":"{SESSION}"}',
        '{"uploadId":"{SESSION}","parts":[],"sha256":"' + sha_hello + '","meta":{"user_id":"u1","folder":"docs","filename":"b.txt","any":"thing"}}',
        '{"uploadId":"{SESSION}","sha256":"00"}',
        '{"uploadId":"{SESSION}","sha256":""}',
        '{"uploadId":"{SESSION}","meta":{"user_id":"u2"}}',
        '{"uploadId":"{SESSION}","meta":{"filename":"../x"}}',
        '{"uploadId":"{SESSION}","meta":{"filename":"x.meta","folder":"../../.parts"}}',
        '{"uploadId":"{SESSION}","meta":{"filename":"' + "é" * 200 + '.txt","folder":" . / .. /a"}}',
        '{"uploadId":"{SESSION}","meta":{"folder":5,"filename":null}}',
        '{"uploadId":"{EMPTY}"}', '{"uploadId":"{SESSION2}"}',
        '{"uploadId":"00000000-0000-4000-8000-000000000000"}', '{"uploadId":"x"}',
        '{"uploadId":5}', '{}',
    ]
    for b in complete:
        s.append(req("/v1/files/complete", b))
    s.append(req("/v1/files/complete", complete[0], "user"))
    s.append(req("/v1/files/complete", complete[0], "other"))
    s.append(req("/v1/files/complete", '{"uploadId":"{SESSION2}"}', "other"))
    parts = [
        '{"uploadId":"{SESSION}","partNumber":0,"chunkBase64":"aGVsbG8="}',
        '{"chunkBase64":"aGVsbG8=","partNumber":1,"uploadId":"{SESSION}"}',
        '{"uploadId":"{SESSION}","partNumber":0,"chunkBase64":"aGVsbG8gd29ybGQ="}',
        '{"uploadId":"{SESSION}","partNumber":100001,"chunkBase64":"aA=="}',
        '{"uploadId":"{SESSION}","partNumber":-1,"chunkBase64":"aA=="}',
        '{"uploadId":"{SESSION}","partNumber":"0","chunkBase64":"@@"}',
        '{"uploadId":"{SESSION2}","partNumber":0,"chunkBase64":"aA=="}',
        '{"chunkBase64":"aA==","uploadId":"{SESSION2}","partNumber":0}',
        '{"uploadId":"{SESSION}","chunkBase64":"aA=="}',
    ]
    for b in parts:
        s.append(req("/v1/files/part", b))
    s.append(req("/v1/files/part", parts[1], "user"))
    s.append(req("/v1/files/part", parts[7], "user"))
    signed = [
        '{"key":"{KEY0}"}', '{"file_key":"{KEY0}","expires_in":60}',
        '{"key":"{KEY0}","ttl":"3600","disposition":"attachment"}',
        '{"key":"{KEY0}","ttl":0}', '{"key":"{KEY0}","ttl":604801}', '{"key":"{KEY0}","ttl":1.5}',
        '{"key":"{KEY0}","ttl":"abc"}', '{"key":"{KEY0}","disposition":"evil"}',
        '{"key":"{KEY0}","disposition":"Attachment"}', '{"key":"/{KEY0}"}',
        '{"key":"storage/u1/nothing.txt"}', '{"key":"storage/u1/../u2/x"}', '{"key":null,"file_key":"{KEY3}"}',
        '{"key":"{KEY4}"}', '{}', '{"key":5}',
    ]
    for b in signed:
        s.append(req("/v1/files/signed-url", b))
    s.append(req("/v1/files/signed-url", signed[0], "user"))
    s.append(req("/v1/files/signed-url", '{"key":"{KEY3}"}', "user"))
    batch = [
        '{"keys":["{KEY0}","{KEY0}","{KEY9}"]}', '{"keys":["{KEY4}"],"compress":true}',
        '{"keys":[]}', '{"keys":["storage/u1/none"]}', '{"keys":["../x"]}',
        '{"keys":["{KEY0}"],"compress":"yes"}', '{"keys":"x"}',
        '{"keys":[' + ",".join(['"{KEY1}"'] * 1001) + "]}",
    ]
    for b in batch:
        s.append(req("/v1/files/batch-download", b))
    s.append(req("/v1/files/batch-download", batch[0], "user"))
    s.append(req("/v1/files/batch-download", '{"keys":["{KEY3}"]}', "other"))
    return s


def main():
    out = HERE / "seeds"
    targets = {
        "range": range_seeds(),
        "signed_url": signed_seeds(),
        "part_json": part_seeds(),
        "keys": keys_seeds(),
        "names": names_seeds(),
        "json_bodies": json_seeds(),
    }
    for target, seeds in targets.items():
        d = out / target
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for i, seed in enumerate(seeds):
            data = seed if isinstance(seed, bytes) else seed.encode("utf-8", "surrogateescape")
            (d / f"seed-{i:03d}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
