-- backupctl catalog, version 4: what a sync records so that the next one can tell an unchanged repository from a
-- changed one from listings alone, without reading every manifest again (docs/design/catalog.md, "What a sync
-- reads"). Rows written before version 4 have neither: the next sync reads the repository in full and fills them.

-- The sync's own bookkeeping (not for queries; its layout may change with backupctl): the digest of the listings
-- the backups' sizes were computed from, the digest of the values it may reuse from the backups' rows, and per
-- dump the identity of its manifest object (size, modification time) and the digest of its document.
ALTER TABLE backupctl.repositories ADD COLUMN sync_state jsonb;

-- The backup's manifest as stored in the repository, without its file entries (format 4 keeps them in file maps):
-- id, label, type, times, LSNs, timeline, WAL, PostgreSQL version, backup_label, tablespaces, stats...
ALTER TABLE backupctl.backups ADD COLUMN manifest jsonb;
