-- backupctl catalog, version 3: checks, verifies and drills run by hand are recorded beside the scheduler's
-- runs, and a drill's row says what it restored and what it measured (the recovery time, RTO).

-- Who started the run: 'scheduler' (the daemon's [schedule]) or 'manual' (backupctl check, verify or drill).
ALTER TABLE backupctl.job_runs ADD COLUMN started_by text NOT NULL DEFAULT 'scheduler';
CREATE INDEX job_runs_started_by_started_at ON backupctl.job_runs (started_by, started_at);

ALTER TABLE backupctl.drills
    -- The backup restored (null when the drill failed before choosing one).
    ADD COLUMN backup_id text,
    -- Seconds from the start of the restore until the server accepted connections (the RTO).
    ADD COLUMN rto_seconds double precision,
    -- Seconds the restore of the files took (part of the RTO).
    ADD COLUMN restore_seconds double precision,
    -- Bytes written into the drill's data directory.
    ADD COLUMN bytes_restored bigint,
    -- The recovery target time (RFC 3339), null for the end of the archive.
    ADD COLUMN recovery_target text;
CREATE INDEX drills_backup_id ON backupctl.drills (backup_id);

-- Rows written by version 2 keep their facts in the summary the scheduler wrote:
-- "restore drill of backup ID passed: recovered WAL A to B in 12.3 s (RTO)".
UPDATE backupctl.drills
    SET backup_id = substring(detail FROM 'restore drill of backup (\S+) passed'),
        rto_seconds = substring(detail FROM 'in ([0-9]+(?:\.[0-9]+)?) s \(RTO\)')::double precision
    WHERE passed AND detail IS NOT NULL;
