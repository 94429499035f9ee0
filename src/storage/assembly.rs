//! Assembly coaching records: assemblies (revisions of one family; a published revision
//! is frozen), their steps and step actions, operators, and unit records, one per unit
//! built, each with its stamped events (every prediction, tightening, IO change, QA answer
//! and step boundary). A finished unit record is announced through the MQTT outbox in the
//! transaction that finishes it.

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use super::{Db, StorageError};
use crate::core::assembly::{Action, Message, NokPolicy, Outcome, TorqueCheck, VisionCheck};

#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rusqlite::Error> for AssemblyError {
    fn from(err: rusqlite::Error) -> AssemblyError {
        AssemblyError::Storage(err.into())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assembly {
    pub id: Uuid,
    /// Every revision of one assembly shares it (the seed's `revision_id`).
    pub family_id: Uuid,
    pub revision: u32,
    pub name: String,
    pub description: String,
    pub image_link: Option<String>,
    pub published: bool,
    pub active: bool,
    pub approver: Option<String>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: DateTime<Utc>,
    pub step_count: u32,
}

/// Fields of a new assembly, or changes to one (`None` keeps the stored value).
#[derive(Debug, Clone, Default)]
pub struct AssemblyFields {
    pub name: Option<String>,
    pub description: Option<String>,
    pub image_link: Option<String>,
    pub approver: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: i64,
    pub assembly_id: Uuid,
    pub index: usize,
    pub name: String,
    pub description: String,
    pub image_link: Option<String>,
    pub video_link: Option<String>,
    pub overlay_link: Option<String>,
    pub camera_id: Option<String>,
    pub minimum_predict: f32,
    pub benchmark: Option<f64>,
    pub timeout: Option<f64>,
    pub actions: Vec<StepAction>,
}

/// A step's fields; `None` keeps the stored value on update (and takes the default on insert).
#[derive(Debug, Clone, Default)]
pub struct StepFields {
    pub name: Option<String>,
    pub description: Option<String>,
    pub image_link: Option<String>,
    pub video_link: Option<String>,
    pub overlay_link: Option<String>,
    pub camera_id: Option<String>,
    pub minimum_predict: Option<f32>,
    pub benchmark: Option<f64>,
    pub timeout: Option<f64>,
}

/// One entry of a step's action list (the seed's StepData).
#[derive(Debug, Clone, PartialEq)]
pub struct StepAction {
    pub id: i64,
    pub step_id: i64,
    pub name: String,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub id: i64,
    pub first_name: String,
    pub last_name: String,
    pub role: String,
    pub rfid: Option<String>,
    pub has_password: bool,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub num_records: u64,
}

impl Operator {
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

#[derive(Debug, Clone)]
pub struct NewOperator {
    pub first_name: String,
    pub last_name: String,
    pub role: String,
    pub rfid: Option<String>,
    pub password_hash: Option<String>,
    pub active: bool,
}

/// Changes to an operator; `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default)]
pub struct OperatorUpdate {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub role: Option<String>,
    pub rfid: Option<Option<String>>,
    pub password_hash: Option<Option<String>>,
    pub active: Option<bool>,
}

/// One unit built (or attempted) at the station.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRecord {
    pub seq: i64,
    pub id: Uuid,
    pub assembly_id: Uuid,
    pub assembly_name: String,
    pub revision: u32,
    pub operator_id: i64,
    pub operator_name: String,
    pub serial: String,
    pub station_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
}

/// One stamped event of a unit record, flat as stored. What `ok`, `flag`, `value` and
/// `text` mean depends on `kind` (see `UnitEvent::from_message`).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitEvent {
    pub at: DateTime<Utc>,
    pub step: Option<usize>,
    pub kind: &'static str,
    pub inspection_id: Option<Uuid>,
    pub tightening_seq: Option<i64>,
    pub ok: Option<bool>,
    pub flag: Option<bool>,
    /// Seconds of active time, or a confidence.
    pub value: Option<f64>,
    pub text: Option<String>,
}

pub const UNIT_EVENT_KINDS: [&str; 14] = [
    "started",
    "step_advance",
    "prediction",
    "tightening",
    "stray_tightening",
    "input",
    "output",
    "qa",
    "notice",
    "paused",
    "resumed",
    "step_complete",
    "step_interrupt",
    "assembly_complete",
];

fn seconds(delta: TimeDelta) -> f64 {
    delta.num_milliseconds() as f64 / 1000.0
}

impl UnitEvent {
    pub fn from_message(message: &Message, at: DateTime<Utc>) -> UnitEvent {
        let event = |step: Option<usize>, kind: &'static str| UnitEvent {
            at,
            step,
            kind,
            inspection_id: None,
            tightening_seq: None,
            ok: None,
            flag: None,
            value: None,
            text: None,
        };
        match message {
            Message::Started { serial, operator, steps } => UnitEvent {
                value: Some(*steps as f64),
                text: Some(format!("{serial} by {operator}")),
                ..event(None, "started")
            },
            Message::StepAdvance { step, name } => {
                UnitEvent { text: Some(name.clone()), ..event(Some(*step), "step_advance") }
            }
            Message::Prediction { step, inspection_id, label, confidence, matched } => UnitEvent {
                inspection_id: Some(*inspection_id),
                ok: Some(*matched),
                value: Some(f64::from(*confidence)),
                text: label.clone(),
                ..event(Some(*step), "prediction")
            },
            Message::Tightening { step, seq, ok, counted, expected, note } => UnitEvent {
                tightening_seq: Some(*seq),
                ok: Some(*ok),
                flag: Some(*counted),
                text: note.clone(),
                ..event(Some(*step), if *expected { "tightening" } else { "stray_tightening" })
            },
            Message::Io { step, line, active, output } => UnitEvent {
                ok: Some(*active),
                text: Some(line.clone()),
                ..event(Some(*step), if *output { "output" } else { "input" })
            },
            Message::Qa { step, passed, by } => {
                UnitEvent { ok: Some(*passed), text: Some(by.clone()), ..event(Some(*step), "qa") }
            }
            Message::Notice { step, text } => UnitEvent { text: Some(text.clone()), ..event(Some(*step), "notice") },
            Message::Paused { step } => event(Some(*step), "paused"),
            Message::Resumed { step } => event(Some(*step), "resumed"),
            Message::StepComplete { step, active, over_benchmark } => UnitEvent {
                flag: Some(*over_benchmark),
                value: Some(seconds(*active)),
                ..event(Some(*step), "step_complete")
            },
            Message::StepInterrupt { step, active, reason } => UnitEvent {
                value: Some(seconds(*active)),
                text: Some(reason.clone()),
                ..event(Some(*step), "step_interrupt")
            },
            Message::AssemblyComplete { outcome, reason, active } => UnitEvent {
                ok: Some(*outcome == Outcome::Completed),
                value: Some(seconds(*active)),
                text: Some(reason.clone().unwrap_or_else(|| outcome.as_str().to_owned())),
                ..event(None, "assembly_complete")
            },
        }
    }
}

/// Which unit records to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct UnitFilter {
    pub assembly_id: Option<Uuid>,
    pub operator_id: Option<i64>,
    pub serial: Option<String>,
    pub limit: u32,
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn uuid(text: String, index: usize) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into()))
}

const ASSEMBLY_COLUMNS: &str = "a.id, a.family_id, a.revision, a.name, a.description, a.image_link, a.published,
    a.active, a.approver, a.notes, a.created_at_ms, a.edited_at_ms,
    (SELECT COUNT(*) FROM steps s WHERE s.assembly_id = a.id)";

fn read_assembly(row: &Row<'_>) -> rusqlite::Result<Assembly> {
    Ok(Assembly {
        id: uuid(row.get(0)?, 0)?,
        family_id: uuid(row.get(1)?, 1)?,
        revision: row.get(2)?,
        name: row.get(3)?,
        description: row.get(4)?,
        image_link: row.get(5)?,
        published: row.get(6)?,
        active: row.get(7)?,
        approver: row.get(8)?,
        notes: row.get(9)?,
        created_at: time(row.get(10)?),
        edited_at: time(row.get(11)?),
        step_count: row.get(12)?,
    })
}

const STEP_COLUMNS: &str = "id, assembly_id, position, name, description, image_link, video_link, overlay_link,
    camera_id, minimum_predict, benchmark_s, timeout_s";

fn read_step(row: &Row<'_>) -> rusqlite::Result<Step> {
    Ok(Step {
        id: row.get(0)?,
        assembly_id: uuid(row.get(1)?, 1)?,
        index: row.get::<_, i64>(2)? as usize,
        name: row.get(3)?,
        description: row.get(4)?,
        image_link: row.get(5)?,
        video_link: row.get(6)?,
        overlay_link: row.get(7)?,
        camera_id: row.get(8)?,
        minimum_predict: row.get::<_, f64>(9)? as f32,
        benchmark: row.get(10)?,
        timeout: row.get(11)?,
        actions: Vec::new(),
    })
}

const ACTION_COLUMNS: &str = "id, step_id, name, data_type, expected_class, continuous, dwell_s, wrench_id, pset,
    count, target, tolerance, nok_policy, max_nok, line, level, prompt, expected_items";

fn read_action(row: &Row<'_>) -> rusqlite::Result<StepAction> {
    let data_type: String = row.get(3)?;
    let delta = |s: Option<f64>| s.map(|s| TimeDelta::milliseconds((s * 1000.0) as i64));
    let action = match data_type.as_str() {
        "ML" | "QA_DWELL" => Action::Vision(VisionCheck {
            expected_class: row.get(4)?,
            continuous: row.get(5)?,
            dwell: if data_type == "QA_DWELL" { delta(row.get(6)?) } else { None },
            expected_items: match row.get::<_, Option<String>>(17)? {
                Some(json) => super::decode_expected(&json).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(17, Type::Text, "expected_items are not a list".into())
                })?,
                None => Vec::new(),
            },
        }),
        "TORQUE" | "TORQUE_ONLY" => Action::Torque(TorqueCheck {
            wrench: row.get::<_, Option<String>>(7)?.unwrap_or_default(),
            pset: row.get(8)?,
            count: row.get::<_, Option<u32>>(9)?.unwrap_or(1),
            target: row.get(10)?,
            tolerance: row.get(11)?,
            nok: match row.get::<_, Option<String>>(12)?.as_deref() {
                Some("fail") => NokPolicy::Fail,
                _ => NokPolicy::Rework { max_nok: row.get(13)? },
            },
            only: data_type == "TORQUE_ONLY",
        }),
        "INPUT" | "OUTPUT" => {
            let line = row.get::<_, Option<String>>(14)?.unwrap_or_default();
            let active = row.get::<_, Option<bool>>(15)?.unwrap_or(true);
            if data_type == "INPUT" { Action::Input { line, active } } else { Action::Output { line, active } }
        }
        _ => Action::Qa { prompt: row.get::<_, Option<String>>(16)?.unwrap_or_default() },
    };
    Ok(StepAction { id: row.get(0)?, step_id: row.get(1)?, name: row.get(2)?, action })
}

/// The seed's action name of an action.
pub fn data_type(action: &Action) -> &'static str {
    match action {
        Action::Vision(check) if check.dwell.is_some() => "QA_DWELL",
        Action::Vision(_) => "ML",
        Action::Torque(check) if check.only => "TORQUE_ONLY",
        Action::Torque(_) => "TORQUE",
        Action::Input { .. } => "INPUT",
        Action::Output { .. } => "OUTPUT",
        Action::Qa { .. } => "QA",
    }
}

fn write_action(
    tx: &Transaction<'_>,
    id: Option<i64>,
    step_id: i64,
    name: &str,
    action: &Action,
) -> rusqlite::Result<i64> {
    let (mut expected, mut continuous, mut dwell, mut items) = (None, false, None, None);
    let (mut wrench, mut pset, mut count, mut target, mut tolerance) = (None, None, None, None, None);
    let (mut nok, mut max_nok, mut line, mut level, mut prompt) = (None, None, None, None, None::<String>);
    match action {
        Action::Vision(check) => {
            expected = check.expected_class.clone();
            continuous = check.continuous;
            dwell = check.dwell.map(seconds);
            items = (!check.expected_items.is_empty()).then(|| super::encode_expected(&check.expected_items));
        }
        Action::Torque(check) => {
            wrench = Some(check.wrench.clone());
            pset = check.pset;
            count = Some(check.count);
            target = check.target;
            tolerance = check.tolerance;
            (nok, max_nok) = match check.nok {
                NokPolicy::Fail => (Some("fail"), None),
                NokPolicy::Rework { max_nok } => (Some("rework"), max_nok),
            };
        }
        Action::Input { line: l, active } | Action::Output { line: l, active } => {
            line = Some(l.clone());
            level = Some(*active);
        }
        Action::Qa { prompt: p } => prompt = Some(p.clone()),
    }
    let kind = data_type(action);
    let values: [&dyn rusqlite::ToSql; 17] = [
        &step_id,
        &kind,
        &name,
        &expected,
        &continuous,
        &dwell,
        &wrench,
        &pset,
        &count,
        &target,
        &tolerance,
        &nok,
        &max_nok,
        &line,
        &level,
        &prompt,
        &items,
    ];
    match id {
        Some(id) => {
            let mut with_id = values.to_vec();
            with_id.push(&id);
            tx.execute(
                "UPDATE step_actions SET data_type = ?2, name = ?3, expected_class = ?4, continuous = ?5,
                     dwell_s = ?6, wrench_id = ?7, pset = ?8, count = ?9, target = ?10, tolerance = ?11,
                     nok_policy = ?12, max_nok = ?13, line = ?14, level = ?15, prompt = ?16, expected_items = ?17
                 WHERE step_id = ?1 AND id = ?18",
                with_id.as_slice(),
            )?;
            Ok(id)
        }
        None => {
            tx.execute(
                "INSERT INTO step_actions (step_id, position, data_type, name, expected_class, continuous, dwell_s,
                     wrench_id, pset, count, target, tolerance, nok_policy, max_nok, line, level, prompt,
                     expected_items)
                 VALUES (?1, (SELECT COALESCE(MAX(position), -1) + 1 FROM step_actions WHERE step_id = ?1),
                     ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                values.as_slice(),
            )?;
            Ok(tx.last_insert_rowid())
        }
    }
}

const OPERATOR_COLUMNS: &str = "o.id, o.first_name, o.last_name, o.role, o.rfid, o.password_hash IS NOT NULL, o.active,
    o.created_at_ms, (SELECT COUNT(*) FROM unit_records r WHERE r.operator_id = o.id)";

fn read_operator(row: &Row<'_>) -> rusqlite::Result<Operator> {
    Ok(Operator {
        id: row.get(0)?,
        first_name: row.get(1)?,
        last_name: row.get(2)?,
        role: row.get(3)?,
        rfid: row.get(4)?,
        has_password: row.get(5)?,
        active: row.get(6)?,
        created_at: time(row.get(7)?),
        num_records: row.get::<_, i64>(8)? as u64,
    })
}

const UNIT_COLUMNS: &str = "r.seq, r.id, r.assembly_id, a.name, a.revision, r.operator_id,
    o.first_name || ' ' || o.last_name, r.serial, r.station_id, r.started_at_ms, r.ended_at_ms, r.outcome, r.reason";
const UNIT_FROM: &str =
    "unit_records r JOIN assemblies a ON a.id = r.assembly_id JOIN operators o ON o.id = r.operator_id";

fn read_unit(row: &Row<'_>) -> rusqlite::Result<UnitRecord> {
    Ok(UnitRecord {
        seq: row.get(0)?,
        id: uuid(row.get(1)?, 1)?,
        assembly_id: uuid(row.get(2)?, 2)?,
        assembly_name: row.get(3)?,
        revision: row.get(4)?,
        operator_id: row.get(5)?,
        operator_name: row.get(6)?,
        serial: row.get(7)?,
        station_id: row.get(8)?,
        started_at: time(row.get(9)?),
        ended_at: row.get::<_, Option<i64>>(10)?.map(time),
        outcome: row.get::<_, Option<String>>(11)?.as_deref().and_then(Outcome::parse),
        reason: row.get(12)?,
    })
}

/// Refuses changes to a published (frozen) revision; otherwise stamps the revision as
/// edited now, inside the edit's transaction.
fn editable(tx: &Transaction<'_>, assembly_id: Uuid, now: DateTime<Utc>) -> Result<(), AssemblyError> {
    let published: Option<bool> = tx
        .query_row("SELECT published FROM assemblies WHERE id = ?1", [assembly_id.to_string()], |r| r.get(0))
        .optional()?;
    match published {
        None => Err(AssemblyError::NotFound(format!("assembly {assembly_id}"))),
        Some(true) => Err(AssemblyError::Conflict(format!(
            "assembly {assembly_id} is published and frozen: create a new revision to change it"
        ))),
        Some(false) => {
            tx.execute(
                "UPDATE assemblies SET edited_at_ms = ?2 WHERE id = ?1",
                params![assembly_id.to_string(), ms(now)],
            )?;
            Ok(())
        }
    }
}

fn insert_events(tx: &Transaction<'_>, record_seq: i64, events: &[UnitEvent]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO unit_events (record_seq, at_ms, step_index, kind, inspection_id, tightening_seq, ok, flag,
             value, text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for e in events {
        insert.execute(params![
            record_seq,
            ms(e.at),
            e.step.map(|s| s as i64),
            e.kind,
            e.inspection_id.map(|i| i.to_string()),
            e.tightening_seq,
            e.ok,
            e.flag,
            e.value,
            e.text
        ])?;
    }
    Ok(())
}

/// Rewrites a step list's positions as 0, 1, 2... in `order`.
fn renumber(tx: &Transaction<'_>, order: &[i64]) -> rusqlite::Result<()> {
    for (position, id) in order.iter().enumerate() {
        tx.execute("UPDATE steps SET position = ?2 WHERE id = ?1", params![id, position as i64])?;
    }
    Ok(())
}

fn step_ids(tx: &Transaction<'_>, assembly_id: Uuid) -> rusqlite::Result<Vec<i64>> {
    let mut statement = tx.prepare("SELECT id FROM steps WHERE assembly_id = ?1 ORDER BY position")?;
    let ids = statement.query_map([assembly_id.to_string()], |r| r.get(0))?.collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

impl super::Storage {
    /// `call` for the edits that can be refused (not found, frozen, in use).
    pub async fn edit<T, F>(&self, f: F) -> Result<T, AssemblyError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, AssemblyError> + Send + 'static,
    {
        self.call(move |db| Ok(f(db))).await?
    }
}

impl Db {
    pub fn insert_assembly(&mut self, fields: AssemblyFields, now: DateTime<Utc>) -> Result<Assembly, StorageError> {
        let id = Uuid::new_v4();
        self.conn.execute(
            "INSERT INTO assemblies (id, family_id, revision, name, description, image_link, approver, notes,
                 created_at_ms, edited_at_ms)
             VALUES (?1, ?1, 1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                id.to_string(),
                fields.name.unwrap_or_default(),
                fields.description.unwrap_or_default(),
                fields.image_link,
                fields.approver,
                fields.notes,
                ms(now)
            ],
        )?;
        Ok(self.assembly(id)?.expect("just inserted"))
    }

    pub fn assembly(&self, id: Uuid) -> Result<Option<Assembly>, StorageError> {
        let sql = format!("SELECT {ASSEMBLY_COLUMNS} FROM assemblies a WHERE a.id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], read_assembly).optional()?)
    }

    /// Every revision of every assembly, by family then revision.
    pub fn assemblies(&self) -> Result<Vec<Assembly>, StorageError> {
        let sql = format!("SELECT {ASSEMBLY_COLUMNS} FROM assemblies a ORDER BY a.family_id, a.revision");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], read_assembly)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest published revision of each assembly.
    pub fn coachable_assemblies(&self) -> Result<Vec<Assembly>, StorageError> {
        let sql = format!(
            "SELECT {ASSEMBLY_COLUMNS} FROM assemblies a WHERE a.published = 1 AND a.revision =
                 (SELECT MAX(b.revision) FROM assemblies b WHERE b.family_id = a.family_id AND b.published = 1)
             ORDER BY a.name"
        );
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], read_assembly)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn update_assembly(
        &mut self,
        id: Uuid,
        fields: AssemblyFields,
        now: DateTime<Utc>,
    ) -> Result<Assembly, AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, id, now)?;
        tx.execute(
            "UPDATE assemblies SET name = COALESCE(?2, name), description = COALESCE(?3, description),
                 image_link = COALESCE(?4, image_link), approver = COALESCE(?5, approver), notes = COALESCE(?6, notes)
             WHERE id = ?1",
            params![id.to_string(), fields.name, fields.description, fields.image_link, fields.approver, fields.notes],
        )?;
        tx.commit()?;
        Ok(self.assembly(id)?.expect("exists"))
    }

    /// Freezes a revision so that it can be coached.
    pub fn publish_assembly(
        &mut self,
        id: Uuid,
        approver: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Assembly, AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, id, now)?;
        let steps: i64 =
            tx.query_row("SELECT COUNT(*) FROM steps WHERE assembly_id = ?1", [id.to_string()], |r| r.get(0))?;
        if steps == 0 {
            return Err(AssemblyError::Conflict(format!("assembly {id} has no steps to publish")));
        }
        tx.execute(
            "UPDATE assemblies SET published = 1, approver = COALESCE(?2, approver) WHERE id = ?1",
            params![id.to_string(), approver],
        )?;
        tx.commit()?;
        Ok(self.assembly(id)?.expect("exists"))
    }

    /// Makes `id` the active revision of its family (the others inactive), or inactive.
    pub fn set_assembly_active(&mut self, id: Uuid, active: bool) -> Result<Assembly, AssemblyError> {
        let tx = self.conn.transaction()?;
        let found: Option<(String, bool)> = tx
            .query_row("SELECT family_id, published FROM assemblies WHERE id = ?1", [id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (family, published) = found.ok_or_else(|| AssemblyError::NotFound(format!("assembly {id}")))?;
        if active && !published {
            return Err(AssemblyError::Conflict(format!(
                "assembly {id} is a draft: publish it before making it active"
            )));
        }
        if active {
            tx.execute("UPDATE assemblies SET active = 0 WHERE family_id = ?1", [&family])?;
        }
        tx.execute("UPDATE assemblies SET active = ?2 WHERE id = ?1", params![id.to_string(), active])?;
        tx.commit()?;
        Ok(self.assembly(id)?.expect("exists"))
    }

    /// A new draft revision of `id`'s assembly, numbered after the family's newest, with a
    /// copy of `id`'s steps and actions.
    pub fn new_assembly_revision(&mut self, id: Uuid, now: DateTime<Utc>) -> Result<Assembly, AssemblyError> {
        let new_id = Uuid::new_v4();
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO assemblies (id, family_id, revision, name, description, image_link, notes, created_at_ms,
                 edited_at_ms)
             SELECT ?2, family_id, (SELECT MAX(revision) + 1 FROM assemblies b WHERE b.family_id = a.family_id),
                 name, description, image_link, notes, ?3, ?3
             FROM assemblies a WHERE id = ?1",
            params![id.to_string(), new_id.to_string(), ms(now)],
        )?;
        if inserted == 0 {
            return Err(AssemblyError::NotFound(format!("assembly {id}")));
        }
        for old_step in step_ids(&tx, id)? {
            tx.execute(
                "INSERT INTO steps (assembly_id, position, name, description, image_link, video_link, overlay_link,
                     camera_id, minimum_predict, benchmark_s, timeout_s)
                 SELECT ?2, position, name, description, image_link, video_link, overlay_link, camera_id,
                     minimum_predict, benchmark_s, timeout_s FROM steps WHERE id = ?1",
                params![old_step, new_id.to_string()],
            )?;
            let new_step = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO step_actions (step_id, position, data_type, name, expected_class, continuous, dwell_s,
                     wrench_id, pset, count, target, tolerance, nok_policy, max_nok, line, level, prompt,
                     expected_items)
                 SELECT ?2, position, data_type, name, expected_class, continuous, dwell_s, wrench_id, pset, count,
                     target, tolerance, nok_policy, max_nok, line, level, prompt, expected_items
                 FROM step_actions WHERE step_id = ?1",
                params![old_step, new_step],
            )?;
        }
        tx.commit()?;
        Ok(self.assembly(new_id)?.expect("just inserted"))
    }

    /// Deletes a revision with its steps; refused once a unit was built to it.
    pub fn delete_assembly(&mut self, id: Uuid) -> Result<(), AssemblyError> {
        let units: i64 =
            self.conn.query_row("SELECT COUNT(*) FROM unit_records WHERE assembly_id = ?1", [id.to_string()], |r| {
                r.get(0)
            })?;
        if units > 0 {
            return Err(AssemblyError::Conflict(format!(
                "assembly {id} has {units} unit records and is kept for traceability; deactivate it instead"
            )));
        }
        match self.conn.execute("DELETE FROM assemblies WHERE id = ?1", [id.to_string()])? {
            0 => Err(AssemblyError::NotFound(format!("assembly {id}"))),
            _ => Ok(()),
        }
    }

    /// The steps of an assembly in order, with their actions.
    pub fn steps(&self, assembly_id: Uuid) -> Result<Vec<Step>, StorageError> {
        let sql = format!("SELECT {STEP_COLUMNS} FROM steps WHERE assembly_id = ?1 ORDER BY position");
        let mut steps: Vec<Step> =
            self.conn.prepare(&sql)?.query_map([assembly_id.to_string()], read_step)?.collect::<Result<_, _>>()?;
        let sql = format!("SELECT {ACTION_COLUMNS} FROM step_actions WHERE step_id = ?1 ORDER BY position");
        let mut actions = self.conn.prepare(&sql)?;
        for step in &mut steps {
            step.actions = actions.query_map([step.id], read_action)?.collect::<Result<_, _>>()?;
        }
        Ok(steps)
    }

    pub fn step(&self, assembly_id: Uuid, step_id: i64) -> Result<Option<Step>, StorageError> {
        Ok(self.steps(assembly_id)?.into_iter().find(|s| s.id == step_id))
    }

    /// Adds a step at `index` (the end when `None` or past it).
    pub fn insert_step(
        &mut self,
        assembly_id: Uuid,
        fields: StepFields,
        index: Option<usize>,
        now: DateTime<Utc>,
    ) -> Result<Step, AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, assembly_id, now)?;
        let mut order = step_ids(&tx, assembly_id)?;
        tx.execute(
            "INSERT INTO steps (assembly_id, position, name, description, image_link, video_link, overlay_link,
                 camera_id, minimum_predict, benchmark_s, timeout_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                assembly_id.to_string(),
                order.len() as i64,
                fields.name.unwrap_or_default(),
                fields.description.unwrap_or_default(),
                fields.image_link,
                fields.video_link,
                fields.overlay_link,
                fields.camera_id,
                f64::from(fields.minimum_predict.unwrap_or(0.0)),
                fields.benchmark,
                fields.timeout
            ],
        )?;
        let id = tx.last_insert_rowid();
        order.insert(index.unwrap_or(order.len()).min(order.len()), id);
        renumber(&tx, &order)?;
        tx.commit()?;
        Ok(self.step(assembly_id, id)?.expect("just inserted"))
    }

    pub fn update_step(
        &mut self,
        assembly_id: Uuid,
        step_id: i64,
        fields: StepFields,
        now: DateTime<Utc>,
    ) -> Result<Step, AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, assembly_id, now)?;
        let updated = tx.execute(
            "UPDATE steps SET name = COALESCE(?3, name), description = COALESCE(?4, description),
                 image_link = COALESCE(?5, image_link), video_link = COALESCE(?6, video_link),
                 overlay_link = COALESCE(?7, overlay_link), camera_id = COALESCE(?8, camera_id),
                 minimum_predict = COALESCE(?9, minimum_predict), benchmark_s = COALESCE(?10, benchmark_s),
                 timeout_s = COALESCE(?11, timeout_s)
             WHERE assembly_id = ?1 AND id = ?2",
            params![
                assembly_id.to_string(),
                step_id,
                fields.name,
                fields.description,
                fields.image_link,
                fields.video_link,
                fields.overlay_link,
                fields.camera_id,
                fields.minimum_predict.map(f64::from),
                fields.benchmark,
                fields.timeout
            ],
        )?;
        if updated == 0 {
            return Err(AssemblyError::NotFound(format!("step {step_id} of assembly {assembly_id}")));
        }
        tx.commit()?;
        Ok(self.step(assembly_id, step_id)?.expect("exists"))
    }

    pub fn move_step(
        &mut self,
        assembly_id: Uuid,
        step_id: i64,
        index: usize,
        now: DateTime<Utc>,
    ) -> Result<(), AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, assembly_id, now)?;
        let mut order = step_ids(&tx, assembly_id)?;
        let from = order
            .iter()
            .position(|id| *id == step_id)
            .ok_or_else(|| AssemblyError::NotFound(format!("step {step_id} of assembly {assembly_id}")))?;
        let id = order.remove(from);
        order.insert(index.min(order.len()), id);
        renumber(&tx, &order)?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_step(&mut self, assembly_id: Uuid, step_id: i64, now: DateTime<Utc>) -> Result<(), AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, assembly_id, now)?;
        let deleted = tx.execute(
            "DELETE FROM steps WHERE assembly_id = ?1 AND id = ?2",
            params![assembly_id.to_string(), step_id],
        )?;
        if deleted == 0 {
            return Err(AssemblyError::NotFound(format!("step {step_id} of assembly {assembly_id}")));
        }
        renumber(&tx, &step_ids(&tx, assembly_id)?)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds an action to the end of a step's list, or replaces action `id`.
    pub fn put_step_action(
        &mut self,
        assembly_id: Uuid,
        step_id: i64,
        id: Option<i64>,
        name: &str,
        action: &Action,
        now: DateTime<Utc>,
    ) -> Result<StepAction, AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, assembly_id, now)?;
        let step_exists: Option<i64> = tx
            .query_row(
                "SELECT id FROM steps WHERE assembly_id = ?1 AND id = ?2",
                params![assembly_id.to_string(), step_id],
                |r| r.get(0),
            )
            .optional()?;
        if step_exists.is_none() {
            return Err(AssemblyError::NotFound(format!("step {step_id} of assembly {assembly_id}")));
        }
        if let Some(id) = id {
            let exists: Option<i64> = tx
                .query_row("SELECT id FROM step_actions WHERE step_id = ?1 AND id = ?2", params![step_id, id], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_none() {
                return Err(AssemblyError::NotFound(format!("step data {id} of step {step_id}")));
            }
        }
        let id = write_action(&tx, id, step_id, name, action)?;
        tx.commit()?;
        Ok(StepAction { id, step_id, name: name.to_owned(), action: action.clone() })
    }

    pub fn delete_step_action(
        &mut self,
        assembly_id: Uuid,
        step_id: i64,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<(), AssemblyError> {
        let tx = self.conn.transaction()?;
        editable(&tx, assembly_id, now)?;
        let deleted = tx.execute(
            "DELETE FROM step_actions WHERE id = ?2 AND step_id = ?1
                 AND step_id IN (SELECT id FROM steps WHERE assembly_id = ?3)",
            params![step_id, id, assembly_id.to_string()],
        )?;
        if deleted == 0 {
            return Err(AssemblyError::NotFound(format!("step data {id} of step {step_id}")));
        }
        tx.commit()?;
        Ok(())
    }

    /// The assembly a step belongs to.
    pub fn step_assembly(&self, step_id: i64) -> Result<Option<Uuid>, StorageError> {
        let id: Option<String> =
            self.conn.query_row("SELECT assembly_id FROM steps WHERE id = ?1", [step_id], |r| r.get(0)).optional()?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    pub fn insert_operator(&mut self, new: NewOperator, now: DateTime<Utc>) -> Result<Operator, AssemblyError> {
        let inserted = self.conn.execute(
            "INSERT INTO operators (first_name, last_name, role, rfid, password_hash, active, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![new.first_name, new.last_name, new.role, new.rfid, new.password_hash, new.active, ms(now)],
        );
        match inserted {
            Ok(_) => Ok(self.operator(self.conn.last_insert_rowid())?.expect("just inserted")),
            Err(err) if super::users::is_unique_violation(&err) => {
                Err(AssemblyError::Conflict("an operator with this name or RFID tag already exists".into()))
            }
            Err(err) => Err(err.into()),
        }
    }

    fn operator_where(&self, condition: &str, value: &dyn rusqlite::ToSql) -> Result<Option<Operator>, StorageError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators o WHERE {condition}");
        Ok(self.conn.query_row(&sql, [value], read_operator).optional()?)
    }

    pub fn operator(&self, id: i64) -> Result<Option<Operator>, StorageError> {
        self.operator_where("o.id = ?1", &id)
    }

    pub fn operator_by_rfid(&self, rfid: &str) -> Result<Option<Operator>, StorageError> {
        self.operator_where("o.rfid = ?1", &rfid)
    }

    pub fn operator_by_name(&self, first_name: &str, last_name: &str) -> Result<Option<Operator>, StorageError> {
        let sql = format!(
            "SELECT {OPERATOR_COLUMNS} FROM operators o
             WHERE o.first_name = ?1 COLLATE NOCASE AND o.last_name = ?2 COLLATE NOCASE"
        );
        Ok(self.conn.query_row(&sql, [first_name, last_name], read_operator).optional()?)
    }

    pub fn operator_password_hash(&self, id: i64) -> Result<Option<String>, StorageError> {
        let hash =
            self.conn.query_row("SELECT password_hash FROM operators WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        Ok(hash.flatten())
    }

    pub fn operators(&self, active_only: bool) -> Result<Vec<Operator>, StorageError> {
        let filter = if active_only { "WHERE o.active = 1" } else { "" };
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators o {filter} ORDER BY o.last_name, o.first_name");
        let rows = self.conn.prepare(&sql)?.query_map([], read_operator)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn update_operator(&mut self, id: i64, update: OperatorUpdate) -> Result<Operator, AssemblyError> {
        let (set_rfid, rfid) = (update.rfid.is_some(), update.rfid.flatten());
        let (set_hash, hash) = (update.password_hash.is_some(), update.password_hash.flatten());
        let updated = self.conn.execute(
            "UPDATE operators SET first_name = COALESCE(?2, first_name), last_name = COALESCE(?3, last_name),
                 role = COALESCE(?4, role), rfid = CASE WHEN ?5 THEN ?6 ELSE rfid END,
                 password_hash = CASE WHEN ?7 THEN ?8 ELSE password_hash END, active = COALESCE(?9, active)
             WHERE id = ?1",
            params![
                id,
                update.first_name,
                update.last_name,
                update.role,
                set_rfid,
                rfid,
                set_hash,
                hash,
                update.active
            ],
        );
        match updated {
            Ok(0) => Err(AssemblyError::NotFound(format!("operator {id}"))),
            Ok(_) => Ok(self.operator(id)?.expect("exists")),
            Err(err) if super::users::is_unique_violation(&err) => {
                Err(AssemblyError::Conflict("an operator with this name or RFID tag already exists".into()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes an operator who never built a unit; one who did is kept for traceability.
    pub fn delete_operator(&mut self, id: i64) -> Result<(), AssemblyError> {
        let units: i64 =
            self.conn.query_row("SELECT COUNT(*) FROM unit_records WHERE operator_id = ?1", [id], |r| r.get(0))?;
        if units > 0 {
            return Err(AssemblyError::Conflict(format!(
                "operator {id} has {units} unit records and is kept for traceability; deactivate them instead"
            )));
        }
        match self.conn.execute("DELETE FROM operators WHERE id = ?1", [id])? {
            0 => Err(AssemblyError::NotFound(format!("operator {id}"))),
            _ => Ok(()),
        }
    }

    /// Opens the record of a unit about to be built.
    pub fn start_unit_record(
        &mut self,
        id: Uuid,
        assembly_id: Uuid,
        operator_id: i64,
        serial: &str,
        station_id: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StorageError> {
        self.conn.execute(
            "INSERT INTO unit_records (id, assembly_id, operator_id, serial, station_id, started_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id.to_string(), assembly_id.to_string(), operator_id, serial, station_id, ms(now)],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Appends events to a unit record in one transaction.
    pub fn append_unit_events(&mut self, record_seq: i64, events: &[UnitEvent]) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        insert_events(&tx, record_seq, events)?;
        tx.commit()?;
        Ok(())
    }

    /// Closes a unit record with its last events and announces it (outbox), in one
    /// transaction: a crash leaves the record either open or finished, never in between.
    pub fn finish_unit_record(
        &mut self,
        record_seq: i64,
        events: &[UnitEvent],
        outcome: Outcome,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        insert_events(&tx, record_seq, events)?;
        tx.execute(
            "UPDATE unit_records SET ended_at_ms = ?2, outcome = ?3, reason = ?4 WHERE seq = ?1 AND ended_at_ms IS NULL",
            params![record_seq, ms(now), outcome.as_str(), reason],
        )?;
        if self.outbox {
            let station: String =
                tx.query_row("SELECT station_id FROM unit_records WHERE seq = ?1", [record_seq], |r| r.get(0))?;
            super::insert_outbox(&tx, &station, "unit_record", record_seq, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records left open by a crash or power loss: closed as aborted at the next start.
    pub fn close_open_unit_records(&mut self, now: DateTime<Utc>) -> Result<Vec<Uuid>, StorageError> {
        let open: Vec<(i64, String)> = self
            .conn
            .prepare("SELECT seq, id FROM unit_records WHERE ended_at_ms IS NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let reason = "the daemon stopped while the unit was being built";
        for (seq, _) in &open {
            let event = UnitEvent::from_message(
                &Message::AssemblyComplete {
                    outcome: Outcome::Aborted,
                    reason: Some(reason.into()),
                    active: TimeDelta::zero(),
                },
                now,
            );
            self.finish_unit_record(*seq, &[event], Outcome::Aborted, Some(reason), now)?;
        }
        Ok(open.into_iter().filter_map(|(_, id)| Uuid::parse_str(&id).ok()).collect())
    }

    pub fn unit_record(&self, id: Uuid) -> Result<Option<UnitRecord>, StorageError> {
        let sql = format!("SELECT {UNIT_COLUMNS} FROM {UNIT_FROM} WHERE r.id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], read_unit).optional()?)
    }

    pub fn unit_record_by_seq(&self, seq: i64) -> Result<Option<UnitRecord>, StorageError> {
        let sql = format!("SELECT {UNIT_COLUMNS} FROM {UNIT_FROM} WHERE r.seq = ?1");
        Ok(self.conn.query_row(&sql, [seq], read_unit).optional()?)
    }

    pub fn unit_records(&self, filter: &UnitFilter) -> Result<Vec<UnitRecord>, StorageError> {
        let sql = format!(
            "SELECT {UNIT_COLUMNS} FROM {UNIT_FROM}
             WHERE (?1 IS NULL OR r.assembly_id = ?1) AND (?2 IS NULL OR r.operator_id = ?2)
                 AND (?3 IS NULL OR r.serial = ?3)
             ORDER BY r.seq DESC LIMIT ?4"
        );
        let rows = self
            .conn
            .prepare(&sql)?
            .query_map(
                params![filter.assembly_id.map(|a| a.to_string()), filter.operator_id, filter.serial, filter.limit],
                read_unit,
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn unit_events(&self, record_seq: i64) -> Result<Vec<UnitEvent>, StorageError> {
        let mut statement = self.conn.prepare(
            "SELECT at_ms, step_index, kind, inspection_id, tightening_seq, ok, flag, value, text
             FROM unit_events WHERE record_seq = ?1 ORDER BY seq",
        )?;
        let rows = statement
            .query_map([record_seq], |row| {
                let kind: String = row.get(2)?;
                Ok(UnitEvent {
                    at: time(row.get(0)?),
                    step: row.get::<_, Option<i64>>(1)?.map(|s| s as usize),
                    kind: UNIT_EVENT_KINDS.iter().find(|k| **k == kind).copied().unwrap_or("notice"),
                    inspection_id: row.get::<_, Option<String>>(3)?.and_then(|i| Uuid::parse_str(&i).ok()),
                    tightening_seq: row.get(4)?,
                    ok: row.get(5)?,
                    flag: row.get(6)?,
                    value: row.get(7)?,
                    text: row.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn named(name: &str) -> AssemblyFields {
        AssemblyFields { name: Some(name.into()), ..AssemblyFields::default() }
    }

    #[test]
    fn revisions_freeze_on_publish_and_copy_their_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap();
        let a = db.insert_assembly(named("housing"), t(0)).unwrap();
        assert!(matches!(db.publish_assembly(a.id, None, t(1)), Err(AssemblyError::Conflict(_))));
        let s1 =
            db.insert_step(a.id, StepFields { name: Some("one".into()), ..StepFields::default() }, None, t(1)).unwrap();
        let s0 = db
            .insert_step(a.id, StepFields { name: Some("zero".into()), ..StepFields::default() }, Some(0), t(1))
            .unwrap();
        let torque = Action::Torque(TorqueCheck {
            wrench: "w1".into(),
            pset: Some(2),
            count: 4,
            target: None,
            tolerance: None,
            nok: NokPolicy::Rework { max_nok: Some(3) },
            only: true,
        });
        db.put_step_action(a.id, s1.id, None, "screws", &torque, t(2)).unwrap();
        let input = Action::Input { line: "clamp".into(), active: false };
        db.put_step_action(a.id, s0.id, None, "clamp", &input, t(2)).unwrap();
        let steps = db.steps(a.id).unwrap();
        assert_eq!(steps.iter().map(|s| (s.index, s.name.as_str())).collect::<Vec<_>>(), [(0, "zero"), (1, "one")]);
        assert_eq!(steps[1].actions[0].action, torque);
        assert_eq!(steps[0].actions[0].action, input);

        db.publish_assembly(a.id, Some("QA lead".into()), t(3)).unwrap();
        assert!(matches!(db.delete_step(a.id, s0.id, t(4)), Err(AssemblyError::Conflict(_))));
        let r2 = db.new_assembly_revision(a.id, t(5)).unwrap();
        assert_eq!((r2.family_id, r2.revision, r2.published, r2.step_count), (a.id, 2, false, 2));
        assert_eq!(db.steps(r2.id).unwrap()[1].actions[0].action, torque);
        assert_eq!(db.coachable_assemblies().unwrap().iter().map(|a| a.revision).collect::<Vec<_>>(), [1]);
        db.move_step(r2.id, db.steps(r2.id).unwrap()[1].id, 0, t(6)).unwrap();
        db.publish_assembly(r2.id, None, t(7)).unwrap();
        assert_eq!(db.coachable_assemblies().unwrap().iter().map(|a| a.revision).collect::<Vec<_>>(), [2]);
        assert_eq!(db.steps(r2.id).unwrap()[0].name, "one");
        db.set_assembly_active(r2.id, true).unwrap();
        assert!(!db.assembly(a.id).unwrap().unwrap().active);
    }

    #[test]
    fn a_unit_record_keeps_its_events_and_is_announced_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap();
        let a = db.insert_assembly(named("housing"), t(0)).unwrap();
        let new = NewOperator {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            role: "operator".into(),
            rfid: Some("04A1".into()),
            password_hash: None,
            active: true,
        };
        let op = db.insert_operator(new.clone(), t(0)).unwrap();
        assert!(matches!(db.insert_operator(new, t(0)), Err(AssemblyError::Conflict(_))));
        let id = Uuid::new_v4();
        let seq = db.start_unit_record(id, a.id, op.id, "SN-1", "s1", t(1)).unwrap();
        let message = Message::Tightening {
            step: 1,
            seq: 7,
            ok: false,
            counted: false,
            expected: true,
            note: Some("NOK".into()),
        };
        let stray = Message::Tightening { step: 1, seq: 8, ok: true, counted: false, expected: false, note: None };
        let events = [UnitEvent::from_message(&message, t(2)), UnitEvent::from_message(&stray, t(2))];
        db.append_unit_events(seq, &events).unwrap();
        assert!(db.next_outbox("s1").unwrap().is_none(), "announced only when finished");
        let open = db.close_open_unit_records(t(3)).unwrap();
        assert_eq!(open, [id]);
        let record = db.unit_record(id).unwrap().unwrap();
        assert_eq!((record.outcome, record.operator_name.as_str()), (Some(Outcome::Aborted), "Ada Lovelace"));
        let events = db.unit_events(seq).unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            ["tightening", "stray_tightening", "assembly_complete"]
        );
        assert_eq!((events[0].tightening_seq, events[0].ok, events[0].flag), (Some(7), Some(false), Some(false)));
        assert!(matches!(
            db.next_outbox("s1").unwrap().unwrap().record,
            Some(super::super::OutboxRecord::UnitRecord(..))
        ));
        assert!(matches!(db.delete_operator(op.id), Err(AssemblyError::Conflict(_))));
        assert!(matches!(db.delete_assembly(a.id), Err(AssemblyError::Conflict(_))));
        assert_eq!(db.operator_by_rfid("04A1").unwrap().unwrap().num_records, 1);
    }
}
