-- backupctl catalog, version 2: what happened, not only what is: the scheduler's job runs, checks and drills,
-- and logical dumps; and the restorable window of each backup.

ALTER TABLE backupctl.backups
    ADD COLUMN restorable_from timestamptz,
    ADD COLUMN restorable_until timestamptz;
UPDATE backupctl.backups
    SET restorable_from = CASE WHEN restorable THEN finished_at END,
        restorable_until = CASE WHEN restorable THEN (document #>> '{reaches,archived_at}')::timestamptz END;

CREATE TABLE backupctl.job_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository_id bigint REFERENCES backupctl.repositories (id),
    -- full_backup, incremental_backup, prune, verify, check, drill (the [schedule] keys).
    job text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    -- 'succeeded' or 'failed'.
    outcome text NOT NULL,
    summary text,
    error text
);
CREATE INDEX job_runs_started_at ON backupctl.job_runs (started_at);
CREATE INDEX job_runs_job_started_at ON backupctl.job_runs (job, started_at);
CREATE INDEX job_runs_outcome_started_at ON backupctl.job_runs (outcome, started_at);

-- Checks (`backupctl check`, `verify`) and restore drills run by the scheduler, one row each.
CREATE TABLE backupctl.checks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_run_id bigint NOT NULL REFERENCES backupctl.job_runs (id),
    -- 'check' or 'verify'.
    kind text NOT NULL,
    passed boolean NOT NULL,
    finished_at timestamptz NOT NULL,
    detail text
);
CREATE INDEX checks_finished_at ON backupctl.checks (finished_at);

CREATE TABLE backupctl.drills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_run_id bigint NOT NULL REFERENCES backupctl.job_runs (id),
    passed boolean NOT NULL,
    finished_at timestamptz NOT NULL,
    detail text
);
CREATE INDEX drills_finished_at ON backupctl.drills (finished_at);

-- Logical dumps (`backupctl dump`), mirrored like backups.
CREATE TABLE backupctl.dumps (
    repository_id bigint NOT NULL REFERENCES backupctl.repositories (id),
    id text NOT NULL,
    label text NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    databases text[] NOT NULL,
    bytes_logical bigint NOT NULL,
    bytes_stored bigint NOT NULL,
    removed_at timestamptz,
    document jsonb NOT NULL,
    PRIMARY KEY (repository_id, id)
);
CREATE INDEX dumps_finished_at ON backupctl.dumps (finished_at);
