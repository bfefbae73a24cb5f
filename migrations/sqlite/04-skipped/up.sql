-- gaze schema, version 4: entries of watched folders that are not regular files.
-- Additive only: version 3 databases upgrade in place, and readers of version 3 treat the
-- table as empty.

-- A named pipe, device or socket whose name the include globs take: never read (a pipe would
-- block, a device never ends), recorded so `gaze status` can count it. `kind` is in words
-- ("a named pipe (FIFO)"). The row goes when the entry goes or becomes a regular file.
CREATE TABLE skipped_files (
    path     TEXT PRIMARY KEY,   -- the same key as images.path
    kind     TEXT NOT NULL,
    seen_at  REAL NOT NULL
);
