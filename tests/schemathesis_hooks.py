"""Schemathesis hooks for tests/schemathesis.sh: request bodies of the resumable protocols.

tus appends `application/offset+octet-stream` and the IETF draft `application/partial-upload`;
both are raw bytes, which schemathesis generates only for media types it knows.
"""

import schemathesis
from hypothesis import strategies as st

for media_type in ("application/offset+octet-stream", "application/partial-upload"):
    schemathesis.openapi.media_type(media_type, st.binary(max_size=256))
