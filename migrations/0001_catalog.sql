-- The catalog in PostgreSQL (issue #14): what must stay consistent across instances.
-- Applied by `sqlx::migrate!` (src/store/pg/mod.rs), which takes an advisory lock, so
-- instances starting together apply it once; `IF NOT EXISTS` keeps it harmless to rerun.
-- Keys and folders compare bytewise (COLLATE "C"), as src/store/list.rs orders them.

-- Stored files: one row per key, the sidecar as jsonb.
CREATE TABLE IF NOT EXISTS files (
    key         text COLLATE "C" PRIMARY KEY,
    user_id     text COLLATE "C" NOT NULL,
    -- "a/b" for storage/{user}/a/b/{stored_name}; '' at the user's top level.
    folder      text COLLATE "C" NOT NULL,
    stored_name text COLLATE "C" NOT NULL,
    size        bigint NOT NULL CHECK (size >= 0),
    sha256      text,
    crc32       bigint CHECK (crc32 BETWEEN 0 AND 4294967295),
    mime        text NOT NULL,
    meta        jsonb NOT NULL,
    created_at  timestamptz NOT NULL
);
-- Listing: a user's files newest first, ties by key; a page reads only what it returns.
CREATE INDEX IF NOT EXISTS files_by_user_newest
    ON files (user_id, created_at DESC, key);
-- Listing one folder and its subfolders: a range of `folder`.
CREATE INDEX IF NOT EXISTS files_by_user_folder
    ON files (user_id, folder);

-- The quota ledger: one row per user, locked (FOR UPDATE) by every change, so reservations
-- from any instance are serialised per user. `used` and `files` follow the file rows in the
-- same transaction; `reserved` is the sum of the user's rows in `reservations`.
CREATE TABLE IF NOT EXISTS quota (
    user_id  text COLLATE "C" PRIMARY KEY,
    used     bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    files    bigint NOT NULL DEFAULT 0 CHECK (files >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);

-- Bytes held by uploads in flight, by reservation id (a session id or an upload id).
CREATE TABLE IF NOT EXISTS reservations (
    id         text COLLATE "C" PRIMARY KEY,
    user_id    text COLLATE "C" NOT NULL REFERENCES quota (user_id),
    bytes      bigint NOT NULL CHECK (bytes >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reservations_by_user ON reservations (user_id);

-- Upload sessions: the `Session` JSON as session.json holds it, and where it stands.
CREATE TABLE IF NOT EXISTS sessions (
    id          uuid PRIMARY KEY,
    user_id     text COLLATE "C" NOT NULL,
    state       text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'claimed', 'finished')),
    session     jsonb NOT NULL,
    -- The declared length; NULL while deferred.
    length      bigint CHECK (length >= 0),
    -- Where the chain of appended segments ends.
    end_offset  bigint NOT NULL DEFAULT 0 CHECK (end_offset >= 0),
    claimed_at  timestamptz,
    -- Once finished: the stored file's key and size, kept for HEAD until expiry.
    file_key    text COLLATE "C",
    file_size   bigint,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);

-- Segments: where each appended part lies, the hash state up to its end, and what the
-- bytes backend needs to find it again (an S3 part's ETag, say).
CREATE TABLE IF NOT EXISTS segments (
    session_id   uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    number       integer NOT NULL CHECK (number >= 0),
    start_offset bigint NOT NULL CHECK (start_offset >= 0),
    size         bigint NOT NULL CHECK (size >= 0),
    sha_state    text NOT NULL,
    crc32        bigint NOT NULL CHECK (crc32 BETWEEN 0 AND 4294967295),
    part_info    jsonb,
    PRIMARY KEY (session_id, number)
);

-- Batch-download tokens: the same JSON as UPLOAD_ROOT/.batch/{token}.json.
CREATE TABLE IF NOT EXISTS batch_tokens (
    token      text COLLATE "C" PRIMARY KEY,
    batch      jsonb NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_tokens_by_expiry ON batch_tokens (expires_at);

-- The signing key every instance shares: one row, made by the first instance to ask.
CREATE TABLE IF NOT EXISTS signing_key (
    id         smallint PRIMARY KEY CHECK (id = 1),
    key        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
