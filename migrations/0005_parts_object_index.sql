-- The deep sweep asks, for each page of objects under `storage/`, whether a part names it (a
-- session's multipart upload is begun at the file's key and, once completed, stands there
-- before the file's row is committed): an index, so that costs no scan of `parts`.
CREATE INDEX IF NOT EXISTS parts_object ON parts (object);
