-- gaze schema, version 1: models, images, captions and attention maps.
-- Times are Unix seconds (REAL); content hashes are BLAKE3 of the file's bytes, 64 hex digits.

-- Every model that has written captions. `active` marks the one new captions come from; a
-- registry of trained models grows from this table.
CREATE TABLE models (
    id           INTEGER PRIMARY KEY,
    content_hash TEXT    NOT NULL UNIQUE,  -- BLAKE3 of the model file
    path         TEXT    NOT NULL,         -- where it was loaded from
    name         TEXT    NOT NULL,
    config       TEXT    NOT NULL,         -- architecture (ModelConfig) as JSON
    provenance   TEXT    NOT NULL DEFAULT '{}',
    created_at   REAL    NOT NULL,
    active       INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1))
);
CREATE UNIQUE INDEX models_one_active ON models (active) WHERE active = 1;

-- Every file seen in a watched folder, by absolute path. `status`:
--   pending  seen, not yet captioned by the active model (the durable queue)
--   done     its content has a caption by the active model
--   failed   could not be read or decoded; `error` says why, `attempts` counts tries
--   gone     deleted (its captions are kept)
CREATE TABLE images (
    id           INTEGER PRIMARY KEY,
    path         TEXT    NOT NULL UNIQUE,
    content_hash TEXT,                     -- NULL until the file has been read
    size         INTEGER NOT NULL,         -- bytes, when last seen
    mtime_ns     INTEGER NOT NULL,         -- modification time, ns since the epoch
    width        INTEGER,
    height       INTEGER,
    status       TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'done', 'failed', 'gone')),
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    first_seen   REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    done_at      REAL
);
CREATE INDEX images_status ON images (status);
CREATE INDEX images_content ON images (content_hash);

-- One caption per (content, model): the same bytes under two names are captioned once.
CREATE TABLE captions (
    id           INTEGER PRIMARY KEY,
    content_hash TEXT    NOT NULL,
    model_id     INTEGER NOT NULL REFERENCES models (id),
    text         TEXT    NOT NULL,          -- the words, space-separated
    tokens       TEXT    NOT NULL,          -- JSON: every token as a word, <start> ... <end>
    token_ids    TEXT    NOT NULL,          -- JSON: the same as word-map ids
    score        REAL    NOT NULL,          -- summed log-probability
    finished     INTEGER NOT NULL,          -- 1 if the search reached <end>
    beam_size    INTEGER NOT NULL,
    created_at   REAL    NOT NULL,
    UNIQUE (content_hash, model_id)
);

-- Per caption, one attention map per token after <start>: `steps` maps of grid*grid weights.
-- Encoding 'u8-scaled-v1': for each step in order, its largest weight as a little-endian f32
-- `scale`, then grid*grid bytes q (row-major); weight = q / 255 * scale. 4 + grid^2 bytes per
-- word (200 at the tutorial's 14x14 grid), each weight within scale/510 of the original.
CREATE TABLE attention (
    caption_id INTEGER PRIMARY KEY REFERENCES captions (id) ON DELETE CASCADE,
    grid       INTEGER NOT NULL,
    steps      INTEGER NOT NULL,
    encoding   TEXT    NOT NULL,
    weights    BLOB    NOT NULL
);
