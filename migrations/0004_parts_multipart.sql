-- Parts straight into one S3 multipart upload per session (issue #14): a part of 5 MiB and
-- more sent in order is uploaded as S3 part `number + 1` of the session's multipart upload
-- at `object` (the file key it is meant to end at) and never copied again: `etag` and
-- `upload_id` say so. `chain_start` / `chain_end` are the SHA-256 state and CRC-32 of the
-- file's bytes before and after the part (`{sha state hex}:{crc32}`), so a complete whose
-- chain holds knows the file's hashes without reading a byte. `start_offset`: the part's
-- bytes are a range of `object` (a multipart upload completed into a staging object when
-- the parts could not be completed as they were).
ALTER TABLE parts ADD COLUMN IF NOT EXISTS etag text;
ALTER TABLE parts ADD COLUMN IF NOT EXISTS upload_id text;
ALTER TABLE parts ADD COLUMN IF NOT EXISTS chain_start text;
ALTER TABLE parts ADD COLUMN IF NOT EXISTS chain_end text;
ALTER TABLE parts ADD COLUMN IF NOT EXISTS start_offset bigint CHECK (start_offset >= 0);
