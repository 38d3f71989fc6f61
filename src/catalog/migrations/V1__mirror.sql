-- backupctl catalog, version 1: the repository mirrored (docs/design/catalog.md).
-- Rows of backups and WAL that left the repository are marked removed (removed_at), never deleted.

CREATE TABLE backupctl.repositories (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The repository as backupctl prints it: file:///srv/backup or s3://bucket/prefix.
    url text NOT NULL UNIQUE,
    system_identifier text,
    pg_version integer,
    wal_segment_size bigint,
    -- `backupctl status --json-output` as of the last sync, without its backups (they are rows of backups).
    status jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_synced_at timestamptz NOT NULL DEFAULT now(),
    -- The last sync that changed something.
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE backupctl.backups (
    repository_id bigint NOT NULL REFERENCES backupctl.repositories (id),
    id text NOT NULL,
    label text NOT NULL,
    description text,
    type text NOT NULL,
    -- 'ok', or 'broken' when its data or WAL is missing (status's word).
    status text NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    start_lsn pg_lsn NOT NULL,
    stop_lsn pg_lsn NOT NULL,
    timeline integer NOT NULL,
    bytes_logical bigint NOT NULL,
    bytes_stored bigint NOT NULL,
    bytes_new bigint NOT NULL,
    manifest_checksum text NOT NULL,
    restorable boolean NOT NULL,
    kept boolean NOT NULL,
    removed_at timestamptz,
    -- This backup as `backupctl status --json-output` shows it.
    document jsonb NOT NULL,
    PRIMARY KEY (repository_id, id)
);
CREATE INDEX backups_finished_at ON backupctl.backups (finished_at);
CREATE INDEX backups_type_finished_at ON backupctl.backups (type, finished_at);
CREATE INDEX backups_status_finished_at ON backupctl.backups (status, finished_at);

-- Archived WAL as ranges: consecutive segments of one timeline archived on the same UTC day. One row per
-- range, not per segment: a year of a busy cluster is a few hundred rows, not millions.
CREATE TABLE backupctl.wal_ranges (
    repository_id bigint NOT NULL REFERENCES backupctl.repositories (id),
    timeline integer NOT NULL,
    first_segment text NOT NULL,
    last_segment text NOT NULL,
    segments bigint NOT NULL,
    bytes bigint NOT NULL,
    first_archived_at timestamptz,
    last_archived_at timestamptz,
    removed_at timestamptz,
    PRIMARY KEY (repository_id, timeline, first_segment)
);
CREATE INDEX wal_ranges_last_archived_at ON backupctl.wal_ranges (last_archived_at);

-- Which WAL each backup needs (start..stop, on its timeline) and how far the archive lets it reach.
CREATE TABLE backupctl.backup_wal (
    repository_id bigint NOT NULL,
    backup_id text NOT NULL,
    timeline integer NOT NULL,
    start_segment text NOT NULL,
    stop_segment text NOT NULL,
    reach_segment text,
    reach_archived_at timestamptz,
    PRIMARY KEY (repository_id, backup_id),
    FOREIGN KEY (repository_id, backup_id) REFERENCES backupctl.backups (repository_id, id)
);
