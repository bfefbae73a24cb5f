-- gaze schema, version 3: the model registry and scheduled retraining.
-- Additive only: version 2 databases upgrade in place and keep every row.

-- What the registry knows of each model. `kind`: 'loaded' (given to `gaze watch`) or 'trained'
-- (made by a retraining run). `status`: 'ready' (may be activated), 'candidate' (being judged),
-- 'rejected' (lost against the active model) or 'corrupt' (its file failed to load or check;
-- never activated). `metrics`: JSON, the latest scores on a held-out split.
ALTER TABLE models ADD COLUMN kind TEXT NOT NULL DEFAULT 'loaded'
    CHECK (kind IN ('loaded', 'trained'));
ALTER TABLE models ADD COLUMN status TEXT NOT NULL DEFAULT 'ready'
    CHECK (status IN ('ready', 'candidate', 'rejected', 'corrupt'));
ALTER TABLE models ADD COLUMN parent_id INTEGER REFERENCES models (id);
ALTER TABLE models ADD COLUMN metrics TEXT;
ALTER TABLE models ADD COLUMN activated_at REAL;

-- Every change of the active model, in order. `previous_id` is the model a rollback returns
-- to (for a rollback itself, the one before the model it returned to, so rollbacks walk back).
CREATE TABLE model_activations (
    id          INTEGER PRIMARY KEY,
    model_id    INTEGER NOT NULL REFERENCES models (id),
    previous_id INTEGER REFERENCES models (id),
    at          REAL    NOT NULL,
    reason      TEXT    NOT NULL             -- 'start', 'retrain', 'activate', 'rollback'
);
CREATE INDEX model_activations_model ON model_activations (model_id);

-- One row per retraining cycle. `status`: running, then promoted, rejected or failed (a run
-- that crashed, was killed or stopped; `error` says why). The metrics are JSON on the same
-- held-out split for both models.
CREATE TABLE retrain_runs (
    id                 INTEGER PRIMARY KEY,
    started_at         REAL    NOT NULL,
    finished_at        REAL,
    status             TEXT    NOT NULL DEFAULT 'running'
                               CHECK (status IN ('running', 'promoted', 'rejected', 'failed')),
    trigger            TEXT    NOT NULL,     -- 'schedule' or 'manual'
    pid                INTEGER NOT NULL,     -- the process that ran it (stale runs are failed)
    parent_model_id    INTEGER REFERENCES models (id),
    candidate_model_id INTEGER REFERENCES models (id),
    rule               TEXT,                 -- JSON: metric and margin
    parent_metrics     TEXT,
    candidate_metrics  TEXT,
    fingerprint        TEXT,                 -- the data and settings it trained on
    log_path           TEXT,
    log                TEXT,                 -- the run's log (its end, when long)
    error              TEXT
);
CREATE INDEX retrain_runs_started ON retrain_runs (started_at);

-- Models registered before version 3 record their current activation as the first.
INSERT INTO model_activations (model_id, previous_id, at, reason)
    SELECT id, NULL, created_at, 'start' FROM models WHERE active = 1;
