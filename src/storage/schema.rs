//! Schema migrations, applied in order at open and recorded in `PRAGMA user_version`.
//! Append new migrations; never edit one that has shipped.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: inspections and the defects found in them.
    "CREATE TABLE inspections (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        station_id      TEXT NOT NULL,
        part_id         TEXT,
        source          TEXT NOT NULL CHECK (source IN ('upload', 'camera')),
        decision        TEXT NOT NULL CHECK (decision IN ('pass', 'fail', 'uncertain')),
        confidence      REAL NOT NULL,
        label           TEXT,
        scores          TEXT NOT NULL,
        objects_found   INTEGER NOT NULL,
        model_name      TEXT NOT NULL,
        model_version   TEXT NOT NULL,
        inference_ms    REAL NOT NULL,
        total_ms        REAL NOT NULL,
        image_path      TEXT,
        image_bytes     INTEGER,
        image_type      TEXT,
        image_width     INTEGER NOT NULL,
        image_height    INTEGER NOT NULL,
        inspected_at_ms INTEGER NOT NULL
    );
    CREATE INDEX inspections_time ON inspections (inspected_at_ms);
    CREATE INDEX inspections_station_time ON inspections (station_id, inspected_at_ms);
    CREATE TABLE defects (
        inspection_seq INTEGER NOT NULL REFERENCES inspections (seq) ON DELETE CASCADE,
        class_name     TEXT NOT NULL,
        confidence     REAL NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL
    );
    CREATE INDEX defects_inspection ON defects (inspection_seq);",
    // 2: the MQTT outbox, written in the same transaction as the record it announces.
    // `station_seq` numbers one station's messages 1, 2, 3... so subscribers see gaps.
    "CREATE TABLE outbox (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        station_id      TEXT NOT NULL,
        station_seq     INTEGER NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('inspection')),
        inspection_seq  INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        delivered_at_ms INTEGER,
        UNIQUE (station_id, station_seq)
    );
    CREATE INDEX outbox_pending ON outbox (station_id, seq) WHERE delivered_at_ms IS NULL;",
    // 3: tightening results from Open Protocol wrenches, unique per (wrench, controller
    // tightening ID) so a re-sent or backfilled result is stored once; the outbox learns a
    // second kind (SQLite cannot alter a CHECK, so the table is rebuilt); and settings
    // changed at runtime (release control).
    "CREATE TABLE tightenings (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        wrench_id        TEXT NOT NULL,
        tightening_id    INTEGER NOT NULL,
        station_id       TEXT,
        source           TEXT NOT NULL CHECK (source IN ('live', 'backfill')),
        status           TEXT NOT NULL CHECK (status IN ('ok', 'nok')),
        torque_status    TEXT CHECK (torque_status IN ('low', 'ok', 'high')),
        angle_status     TEXT CHECK (angle_status IN ('low', 'ok', 'high')),
        batch_status     TEXT,
        pset             INTEGER,
        job_id           INTEGER,
        batch_size       INTEGER,
        batch_counter    INTEGER,
        torque           INTEGER NOT NULL,
        torque_min       INTEGER,
        torque_max       INTEGER,
        torque_target    INTEGER,
        torque_unit      TEXT NOT NULL,
        angle            INTEGER NOT NULL,
        angle_min        INTEGER,
        angle_max        INTEGER,
        angle_target     INTEGER,
        vin              TEXT,
        tool_serial      TEXT,
        controller_name  TEXT,
        controller_time  TEXT NOT NULL,
        mid_revision     INTEGER NOT NULL,
        received_at_ms   INTEGER NOT NULL,
        UNIQUE (wrench_id, tightening_id)
    );
    CREATE INDEX tightenings_time ON tightenings (received_at_ms);
    CREATE TABLE outbox_v3 (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        station_id      TEXT NOT NULL,
        station_seq     INTEGER NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('inspection', 'tightening')),
        record_seq      INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        delivered_at_ms INTEGER,
        UNIQUE (station_id, station_seq)
    );
    INSERT INTO outbox_v3 (seq, station_id, station_seq, kind, record_seq, created_at_ms, delivered_at_ms)
        SELECT seq, station_id, station_seq, kind, inspection_seq, created_at_ms, delivered_at_ms FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;
    CREATE INDEX outbox_pending ON outbox (station_id, seq) WHERE delivered_at_ms IS NULL;
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 4: continuous-monitoring pipelines and the anomalies they raise; the outbox learns
    // a third kind (rebuilt again for its CHECK).
    "CREATE TABLE pipelines (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        station_id     TEXT NOT NULL,
        source_id      TEXT NOT NULL,
        model_id       TEXT,
        fps            REAL NOT NULL,
        threshold      REAL,
        confirm_frames INTEGER NOT NULL,
        confirm_window INTEGER NOT NULL,
        sinks          TEXT NOT NULL,
        active         INTEGER NOT NULL DEFAULT 0,
        created_at_ms  INTEGER NOT NULL
    );
    CREATE TABLE pipeline_events (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        pipeline_id      TEXT NOT NULL,
        station_id       TEXT NOT NULL,
        score            REAL NOT NULL,
        threshold        REAL NOT NULL,
        frames_anomalous INTEGER NOT NULL,
        frames_window    INTEGER NOT NULL,
        label            TEXT,
        at_ms            INTEGER NOT NULL
    );
    CREATE INDEX pipeline_events_by_pipeline ON pipeline_events (pipeline_id, seq);
    CREATE TABLE outbox_v4 (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        station_id      TEXT NOT NULL,
        station_seq     INTEGER NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('inspection', 'tightening', 'pipeline_event')),
        record_seq      INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        delivered_at_ms INTEGER,
        UNIQUE (station_id, station_seq)
    );
    INSERT INTO outbox_v4 SELECT seq, station_id, station_seq, kind, record_seq, created_at_ms, delivered_at_ms
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    CREATE INDEX outbox_pending ON outbox (station_id, seq) WHERE delivered_at_ms IS NULL;",
    // 5: REST users, their refresh tokens (hashed), and the audit log.
    "CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
        email         TEXT,
        role          TEXT NOT NULL CHECK (role IN ('admin', 'engineer', 'operator')),
        password_hash TEXT NOT NULL,
        active        INTEGER NOT NULL DEFAULT 1,
        -- Access tokens carry the generation they were issued in; a password change or a
        -- deactivation bumps it, voiding them all.
        token_generation INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );
    CREATE TABLE refresh_tokens (
        token_hash    TEXT PRIMARY KEY,
        user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );
    CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
    CREATE TABLE audit_log (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms  INTEGER NOT NULL,
        actor  TEXT,
        client TEXT,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // 6: alerts raised by the alert rules; one active (uncleared) row per key.
    "CREATE TABLE alerts (
        id                 TEXT PRIMARY KEY,
        key                TEXT NOT NULL,
        station_id         TEXT,
        severity           TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
        title              TEXT NOT NULL,
        message            TEXT NOT NULL,
        raised_at_ms       INTEGER NOT NULL,
        cleared_at_ms      INTEGER,
        acknowledged_by    TEXT,
        acknowledged_at_ms INTEGER
    );
    CREATE UNIQUE INDEX alerts_active_key ON alerts (key) WHERE cleared_at_ms IS NULL;
    CREATE INDEX alerts_raised ON alerts (raised_at_ms);",
    // 7: assembly coaching: assemblies (revisions of one family), their steps and step
    // actions, operators, and one record per unit built with its stamped events. Finished
    // unit records are announced through the outbox.
    "CREATE TABLE assemblies (
        id            TEXT PRIMARY KEY,
        family_id     TEXT NOT NULL,
        revision      INTEGER NOT NULL,
        name          TEXT NOT NULL,
        description   TEXT NOT NULL DEFAULT '',
        image_link    TEXT,
        published     INTEGER NOT NULL DEFAULT 0,
        active        INTEGER NOT NULL DEFAULT 0,
        approver      TEXT,
        notes         TEXT,
        created_at_ms INTEGER NOT NULL,
        edited_at_ms  INTEGER NOT NULL,
        UNIQUE (family_id, revision)
    );
    CREATE TABLE steps (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        assembly_id     TEXT NOT NULL REFERENCES assemblies (id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        name            TEXT NOT NULL,
        description     TEXT NOT NULL DEFAULT '',
        image_link      TEXT,
        video_link      TEXT,
        overlay_link    TEXT,
        camera_id       TEXT,
        minimum_predict REAL NOT NULL,
        benchmark_s     REAL,
        timeout_s       REAL
    );
    CREATE INDEX steps_by_assembly ON steps (assembly_id, position);
    CREATE TABLE step_actions (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        step_id        INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
        position       INTEGER NOT NULL,
        data_type      TEXT NOT NULL CHECK (data_type IN
                           ('ML', 'TORQUE', 'TORQUE_ONLY', 'INPUT', 'OUTPUT', 'QA', 'QA_DWELL')),
        name           TEXT NOT NULL DEFAULT '',
        expected_class TEXT,
        continuous     INTEGER NOT NULL DEFAULT 0,
        dwell_s        REAL,
        wrench_id      TEXT,
        pset           INTEGER,
        count          INTEGER,
        target         REAL,
        tolerance      REAL,
        nok_policy     TEXT CHECK (nok_policy IN ('rework', 'fail')),
        max_nok        INTEGER,
        line           TEXT,
        level          INTEGER,
        prompt         TEXT
    );
    CREATE INDEX step_actions_by_step ON step_actions (step_id, position);
    CREATE TABLE operators (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        first_name    TEXT NOT NULL COLLATE NOCASE,
        last_name     TEXT NOT NULL COLLATE NOCASE,
        role          TEXT NOT NULL,
        rfid          TEXT UNIQUE,
        password_hash TEXT,
        active        INTEGER NOT NULL DEFAULT 1,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (first_name, last_name)
    );
    CREATE TABLE unit_records (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        assembly_id   TEXT NOT NULL REFERENCES assemblies (id),
        operator_id   INTEGER NOT NULL REFERENCES operators (id),
        serial        TEXT NOT NULL,
        station_id    TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms   INTEGER,
        outcome       TEXT CHECK (outcome IN ('completed', 'failed', 'aborted', 'incomplete')),
        reason        TEXT
    );
    CREATE INDEX unit_records_by_assembly ON unit_records (assembly_id, seq);
    CREATE INDEX unit_records_by_operator ON unit_records (operator_id, seq);
    CREATE INDEX unit_records_by_serial ON unit_records (serial);
    CREATE TABLE unit_events (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        record_seq     INTEGER NOT NULL REFERENCES unit_records (seq) ON DELETE CASCADE,
        at_ms          INTEGER NOT NULL,
        step_index     INTEGER,
        kind           TEXT NOT NULL,
        inspection_id  TEXT,
        tightening_seq INTEGER,
        ok             INTEGER,
        flag           INTEGER,
        value          REAL,
        text           TEXT
    );
    CREATE INDEX unit_events_by_record ON unit_events (record_seq, seq);
    CREATE TABLE outbox_v7 (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        station_id      TEXT NOT NULL,
        station_seq     INTEGER NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('inspection', 'tightening', 'pipeline_event', 'unit_record')),
        record_seq      INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        delivered_at_ms INTEGER,
        UNIQUE (station_id, station_seq)
    );
    INSERT INTO outbox_v7 SELECT seq, station_id, station_seq, kind, record_seq, created_at_ms, delivered_at_ms
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v7 RENAME TO outbox;
    CREATE INDEX outbox_pending ON outbox (station_id, seq) WHERE delivered_at_ms IS NULL;",
    // 8: the model registry and its activation log (the newest row serves).
    "CREATE TABLE models (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        version       TEXT NOT NULL,
        task          TEXT NOT NULL,
        description   TEXT NOT NULL,
        source        TEXT NOT NULL CHECK (source IN ('config', 'upload')),
        dir           TEXT NOT NULL,
        sha256        TEXT NOT NULL,
        metrics       TEXT NOT NULL,
        size_bytes    INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        created_by    TEXT,
        UNIQUE (name, version)
    );
    CREATE TABLE model_activations (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        model_id        TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        activated_at_ms INTEGER NOT NULL,
        activated_by    TEXT,
        reason          TEXT NOT NULL CHECK (reason IN ('config', 'activate', 'rollback'))
    );",
    // 9: each camera's drift reference (statistics as JSON arrays, core::drift::FEATURES order).
    "CREATE TABLE drift_references (
        camera_id TEXT PRIMARY KEY,
        frames    INTEGER NOT NULL,
        means     TEXT NOT NULL,
        stds      TEXT NOT NULL,
        set_at_ms INTEGER NOT NULL
    );",
    // 10: the active-learning queue (uncertain results, and any result sent for review)
    // and the reviewers' annotations.
    "CREATE TABLE learning_queue (
        inspection_seq INTEGER PRIMARY KEY REFERENCES inspections (seq) ON DELETE CASCADE,
        reason         TEXT NOT NULL CHECK (reason IN ('uncertain', 'requested')),
        queued_at_ms   INTEGER NOT NULL,
        reviewed_by    TEXT,
        reviewed_at_ms INTEGER,
        exported_at_ms INTEGER
    );
    CREATE INDEX learning_pending ON learning_queue (queued_at_ms) WHERE reviewed_at_ms IS NULL;
    CREATE TABLE annotations (
        inspection_seq INTEGER NOT NULL REFERENCES learning_queue (inspection_seq) ON DELETE CASCADE,
        class_name     TEXT NOT NULL,
        x1 REAL, y1 REAL, x2 REAL, y2 REAL
    );
    CREATE INDEX annotations_by_item ON annotations (inspection_seq);",
    // 11: batch jobs: inspections of a folder's images.
    "CREATE TABLE batch_jobs (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        input_dir      TEXT NOT NULL,
        file_pattern   TEXT NOT NULL,
        station_id     TEXT NOT NULL,
        status         TEXT NOT NULL
                       CHECK (status IN ('pending', 'queued', 'running', 'completed', 'cancelled', 'failed')),
        total          INTEGER,
        processed      INTEGER NOT NULL DEFAULT 0,
        passed         INTEGER NOT NULL DEFAULT 0,
        failed         INTEGER NOT NULL DEFAULT 0,
        uncertain      INTEGER NOT NULL DEFAULT 0,
        errors         INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT,
        created_by     TEXT,
        created_at_ms  INTEGER NOT NULL,
        started_at_ms  INTEGER,
        finished_at_ms INTEGER
    );",
    // 12: expected items. Detections keep every object a detection model found, with a flag
    // for those the rule counted as defects (the rows so far were all defects); an
    // inspection keeps what it was asked to find and the image scale for areas; a vision
    // step may expect items.
    "ALTER TABLE defects RENAME TO detections;
    ALTER TABLE detections ADD COLUMN defect INTEGER NOT NULL DEFAULT 1 CHECK (defect IN (0, 1));
    ALTER TABLE inspections ADD COLUMN recipe TEXT;
    ALTER TABLE inspections ADD COLUMN expected_items TEXT;
    ALTER TABLE inspections ADD COLUMN mm_per_pixel REAL;
    ALTER TABLE step_actions ADD COLUMN expected_items TEXT;",
    // 13: PatchCore fits run as jobs of a second kind, with their parameters and result
    // (JSON) and their stage; an inspection keeps its anomaly map (the model's patch
    // scores over the fail threshold, little-endian f32, row-major, with the map's width).
    "ALTER TABLE batch_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch' CHECK (kind IN ('batch', 'fit'));
    ALTER TABLE batch_jobs ADD COLUMN params TEXT;
    ALTER TABLE batch_jobs ADD COLUMN result TEXT;
    ALTER TABLE batch_jobs ADD COLUMN stage TEXT;
    ALTER TABLE inspections ADD COLUMN anomaly_map BLOB;
    ALTER TABLE inspections ADD COLUMN anomaly_map_width INTEGER;",
];

/// The schema version this build writes.
pub(crate) const CURRENT: usize = MIGRATIONS.len();

pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<usize> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > CURRENT {
        // A newer stationd wrote this database; refusing beats corrupting it.
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {version} is newer than this build's {CURRENT}"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(CURRENT - version)
}
