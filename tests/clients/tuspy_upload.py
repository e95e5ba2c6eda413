"""tuspy 1.1.0 (PyPI) against the server; driven by tests/api/tus_clients.rs.

    python tests/clients/tuspy_upload.py CASE

Environment: TUS_ENDPOINT, TUS_FILE, TUS_HEADERS (JSON: the credentials), TUS_METADATA (JSON;
absent or {} makes tuspy send an empty Upload-Metadata header), TUS_CHUNK (bytes per PATCH).
Every PATCH carries Upload-Checksum (sha1: upload_checksum=True).

Cases: `plain` uploads the file; `corrupt-once` sends the first PATCH with a wrong checksum,
which the server must refuse (460) and discard, and tuspy's retry (HEAD, then the PATCH
again) must get through. The last line on stdout is JSON: the upload URL, the stored key
from X-Upload-Key, and the statuses of the PATCHes.
"""

import json
import os
import sys

from tusclient import client
from tusclient import request as tus_request

env = os.environ
case = sys.argv[1] if len(sys.argv) > 1 else "plain"
statuses = []

# Watch every PATCH's status (and, for `corrupt-once`, spoil the first checksum).
original_perform = tus_request.TusRequest.perform
original_add_checksum = tus_request.BaseTusRequest.add_checksum
spoiled = []


def perform(self):
    original_perform(self)
    statuses.append(self.status_code)


def add_checksum(self, chunk):
    original_add_checksum(self, chunk)
    if case == "corrupt-once" and not spoiled:
        algorithm, digest = self._request_headers["upload-checksum"].split(" ")
        # The digest of other bytes: well-formed, wrong.
        self._request_headers["upload-checksum"] = " ".join(
            (algorithm, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        )
        spoiled.append(digest)


tus_request.TusRequest.perform = perform
tus_request.BaseTusRequest.add_checksum = add_checksum

tus = client.TusClient(env["TUS_ENDPOINT"], headers=json.loads(env.get("TUS_HEADERS", "{}")))
uploader = tus.uploader(
    env["TUS_FILE"],
    chunk_size=int(env.get("TUS_CHUNK", str(256 * 1024))),
    metadata=json.loads(env.get("TUS_METADATA", "{}")),
    upload_checksum=True,
    retries=2,
    retry_delay=0.1,
)
uploader.upload()
headers = uploader.request.response_headers
print(
    json.dumps(
        {
            "url": uploader.url,
            "key": headers.get("x-upload-key"),
            "publicUrl": headers.get("x-upload-url"),
            "statuses": statuses,
            "spoiled": len(spoiled),
        }
    )
)
