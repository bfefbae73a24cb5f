-- gaze schema, version 2: full-text search over captions, and indexes for recent activity.

-- An external-content FTS5 index over captions.text, kept in step by triggers. The Porter
-- stemmer lets "dogs" find "dog".
CREATE VIRTUAL TABLE captions_fts USING fts5 (
    text,
    content = 'captions',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);

CREATE TRIGGER captions_fts_insert AFTER INSERT ON captions BEGIN
    INSERT INTO captions_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER captions_fts_delete AFTER DELETE ON captions BEGIN
    INSERT INTO captions_fts (captions_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER captions_fts_update AFTER UPDATE OF text ON captions BEGIN
    INSERT INTO captions_fts (captions_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO captions_fts (rowid, text) VALUES (new.id, new.text);
END;

-- Index the captions written under version 1.
INSERT INTO captions_fts (captions_fts) VALUES ('rebuild');

CREATE INDEX images_done_at ON images (done_at);
CREATE INDEX captions_created_at ON captions (created_at);
