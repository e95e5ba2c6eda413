-- Parts of three-step uploads (issue #14): numbered, sent in any order and again, each kept as
-- its own object until the complete joins them. A part sent again replaces the row; the
-- object it named is deleted by the instance that replaced it.
CREATE TABLE IF NOT EXISTS parts (
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    number     integer NOT NULL CHECK (number >= 0),
    size       bigint NOT NULL CHECK (size >= 0),
    sha256     text NOT NULL,
    crc32      bigint NOT NULL CHECK (crc32 BETWEEN 0 AND 4294967295),
    -- The object holding the part's bytes (key inside the bucket, prefix excluded).
    object     text COLLATE "C" NOT NULL,
    PRIMARY KEY (session_id, number)
);
