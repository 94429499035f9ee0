//! JSON shapes of the REST API, following the inspection seed where it has one. The only
//! `Serialize` types of the API; built from domain values, never the other way round.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bus::StationSnapshot;
use crate::core::decision::Detection;
use crate::core::expected::{ExpectedItem, Found};
use crate::storage::{InspectionRecord, Statistics, TrendBucket, TrendInterval, UnitEvent, UnitRecord};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// "ready", "starting" or "degraded".
    pub status: &'static str,
    pub services: BTreeMap<String, ServiceStateDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceStateDto {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DetectionDto {
    pub class_name: String,
    pub confidence: f32,
    /// `[x1, y1, x2, y2]` in image pixels.
    pub bbox: [f32; 4],
    /// The box's area; null unless the station has `mm_per_pixel`.
    pub area_mm2: Option<f64>,
    /// Counted as a defect by the decision rule (the others are the parts found).
    pub defect: bool,
}

impl DetectionDto {
    pub fn new(d: &Detection, defect: bool, mm_per_pixel: Option<f64>) -> DetectionDto {
        let [x1, y1, x2, y2] = d.bbox.map(f64::from);
        let area_mm2 = mm_per_pixel.map(|scale| {
            let area = (x2 - x1).max(0.0) * (y2 - y1).max(0.0) * scale * scale;
            (area * 100.0).round() / 100.0
        });
        DetectionDto { class_name: d.class_name.clone(), confidence: d.confidence, bbox: d.bbox, area_mm2, defect }
    }

    /// A record's detections: its defects, then its parts.
    pub fn all(r: &InspectionRecord) -> Vec<DetectionDto> {
        let defects = r.defects.iter().map(|d| DetectionDto::new(d, true, r.mm_per_pixel));
        defects.chain(r.parts.iter().map(|d| DetectionDto::new(d, false, r.mm_per_pixel))).collect()
    }
}

/// An expected item found (the order-accuracy seed's `matched` and `quantity_mismatch`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct FoundItemDto {
    pub name: String,
    pub expected_quantity: u32,
    pub detected_quantity: u32,
    /// "exact" or "alias".
    pub match_type: &'static str,
    pub confidence: f32,
    /// The detected class, when found under an alias.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_as: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MissingItemDto {
    pub name: String,
    pub expected_quantity: u32,
    pub detected_quantity: u32,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExtraItemDto {
    pub name: String,
    pub detected_quantity: u32,
    /// Always "not_in_order".
    pub reason: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ValidationDto {
    pub matched: Vec<FoundItemDto>,
    pub missing: Vec<MissingItemDto>,
    pub extra: Vec<ExtraItemDto>,
    pub quantity_mismatch: Vec<FoundItemDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ValidationSummaryDto {
    pub total_expected_items: u32,
    pub total_expected_quantity: u32,
    pub matched_items: u32,
    pub matched_quantity: u32,
    pub missing_items: u32,
    pub extra_items: u32,
    /// Share of the expected quantity found, 0..=1.
    pub accuracy_score: f64,
    /// Nothing missing and no quantity wrong.
    pub order_complete: bool,
}

/// The expected-items check of an inspection, in the order-accuracy seed's results shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExpectedItemsDto {
    /// The recipe the items came from; null for a list given with the trigger.
    pub recipe: Option<String>,
    pub items: Vec<ItemDto>,
    pub validation: ValidationDto,
    pub summary: ValidationSummaryDto,
}

/// One expected item: `{name, quantity, aliases}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemDto {
    pub name: String,
    pub quantity: u32,
    pub aliases: Vec<String>,
}

impl ItemDto {
    pub fn list(items: &[ExpectedItem]) -> Vec<ItemDto> {
        let item =
            |i: &ExpectedItem| ItemDto { name: i.name.clone(), quantity: i.quantity, aliases: i.aliases.clone() };
        items.iter().map(item).collect()
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecipeDto {
    pub name: String,
    pub items: Vec<ItemDto>,
    /// Stations that check this recipe when a trigger names none.
    pub stations: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecipeList {
    pub recipes: Vec<RecipeDto>,
}

impl ExpectedItemsDto {
    fn of(r: &InspectionRecord) -> Option<ExpectedItemsDto> {
        let expected = r.expected.as_ref()?;
        let check = r.expected_check()?;
        let found = |f: &Found| FoundItemDto {
            name: f.name.clone(),
            expected_quantity: f.expected_quantity,
            detected_quantity: f.detected_quantity,
            match_type: f.match_type.as_str(),
            confidence: (f.confidence * 1000.0).round() / 1000.0,
            detected_as: f.detected_as.clone(),
        };
        let s = &check.summary;
        Some(ExpectedItemsDto {
            recipe: expected.recipe.clone(),
            items: ItemDto::list(&expected.items),
            validation: ValidationDto {
                matched: check.matched.iter().map(found).collect(),
                missing: check
                    .missing
                    .iter()
                    .map(|m| MissingItemDto {
                        name: m.name.clone(),
                        expected_quantity: m.expected_quantity,
                        detected_quantity: 0,
                    })
                    .collect(),
                extra: check
                    .extra
                    .iter()
                    .map(|e| ExtraItemDto {
                        name: e.name.clone(),
                        detected_quantity: e.detected_quantity,
                        reason: "not_in_order",
                    })
                    .collect(),
                quantity_mismatch: check.quantity_mismatch.iter().map(found).collect(),
            },
            summary: ValidationSummaryDto {
                total_expected_items: s.total_expected_items,
                total_expected_quantity: s.total_expected_quantity,
                matched_items: s.matched_items,
                matched_quantity: s.matched_quantity,
                missing_items: s.missing_items,
                extra_items: s.extra_items,
                accuracy_score: s.accuracy_score,
                order_complete: s.order_complete,
            },
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InspectionDto {
    pub id: String,
    pub seq: i64,
    pub station_id: String,
    pub part_id: Option<String>,
    pub decision: &'static str,
    pub confidence: f32,
    /// Top class of a classifier, or the strongest defect class.
    pub label: Option<String>,
    /// Per-label scores of a classifier.
    pub scores: BTreeMap<String, f32>,
    /// Everything a detection model found (defects and parts).
    pub objects_found: usize,
    pub total_time_ms: f64,
    pub inference_time_ms: f64,
    pub detections: Vec<DetectionDto>,
    /// The expected-items check, when the inspection had a recipe or a list.
    pub expected_items: Option<ExpectedItemsDto>,
    pub image_url: Option<String>,
    /// An anomaly model's heatmap over the image (PNG), when the model gives a map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_url: Option<String>,
    pub source: String,
    pub model: ModelRef,
    pub timestamp: String,
}

impl From<&InspectionRecord> for InspectionDto {
    fn from(r: &InspectionRecord) -> InspectionDto {
        InspectionDto {
            id: r.id.to_string(),
            seq: r.seq,
            station_id: r.station_id.clone(),
            part_id: r.part_id.clone(),
            decision: r.decision.as_str(),
            confidence: r.confidence,
            label: r.label.clone(),
            scores: r.scores.iter().cloned().collect(),
            objects_found: r.detections().count(),
            total_time_ms: round2(r.total_ms),
            inference_time_ms: round2(r.inference_ms),
            detections: DetectionDto::all(r),
            expected_items: ExpectedItemsDto::of(r),
            image_url: r.image.as_ref().map(|_| format!("/api/v1/inspections/{}/image", r.id)),
            heatmap_url: r.anomaly_map.as_ref().map(|_| format!("/api/v1/inspections/{}/heatmap", r.id)),
            source: r.source.clone(),
            model: ModelRef { name: r.model_name.clone(), version: r.model_version.clone() },
            timestamp: rfc3339(r.inspected_at),
        }
    }
}

pub fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InspectionList {
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
    pub inspections: Vec<InspectionDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatisticsDto {
    pub total_inspections: u64,
    pub passed: u64,
    pub failed: u64,
    pub uncertain: u64,
    /// Fraction 0..=1 (the seed's shape); null when there were no inspections.
    pub pass_rate: Option<f64>,
    pub avg_inspection_time_ms: Option<f64>,
    pub defect_breakdown: BTreeMap<String, u64>,
    pub hours: u32,
    pub station_id: Option<String>,
}

impl StatisticsDto {
    pub fn new(stats: Statistics, hours: u32, station_id: Option<String>) -> StatisticsDto {
        StatisticsDto {
            total_inspections: stats.total,
            passed: stats.passed,
            failed: stats.failed,
            uncertain: stats.uncertain,
            pass_rate: (stats.total > 0)
                .then(|| (stats.passed as f64 / stats.total as f64 * 10_000.0).round() / 10_000.0),
            avg_inspection_time_ms: stats.avg_total_ms.map(round2),
            defect_breakdown: stats.defect_breakdown,
            hours,
            station_id,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TrendsDto {
    pub labels: Vec<String>,
    pub total: Vec<u64>,
    pub passed: Vec<u64>,
    pub failed: Vec<u64>,
    pub interval: &'static str,
}

impl TrendsDto {
    pub fn new(buckets: Vec<TrendBucket>, interval: TrendInterval) -> TrendsDto {
        TrendsDto {
            labels: buckets.iter().map(|b| b.start.format("%Y-%m-%d %H:%M:%S").to_string()).collect(),
            total: buckets.iter().map(|b| b.total).collect(),
            passed: buckets.iter().map(|b| b.passed).collect(),
            failed: buckets.iter().map(|b| b.failed).collect(),
            interval: match interval {
                TrendInterval::Hour => "hour",
                TrendInterval::Day => "day",
            },
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StationDto {
    pub station_id: String,
    pub pass_count: u64,
    pub fail_count: u64,
    pub uncertain_count: u64,
    /// Percentage 0..=100 over the last hour.
    pub pass_rate_1h: Option<f64>,
    pub last_inspection: Option<LastInspectionDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LastInspectionDto {
    pub id: String,
    pub seq: i64,
    pub decision: &'static str,
    pub confidence: f32,
    pub cycle_time_ms: f64,
    pub timestamp: String,
}

impl StationDto {
    pub fn new(station_id: &str, s: &StationSnapshot) -> StationDto {
        StationDto {
            station_id: station_id.to_owned(),
            pass_count: s.pass_count,
            fail_count: s.fail_count,
            uncertain_count: s.uncertain_count,
            pass_rate_1h: s.pass_rate_1h.map(|r| (r * 100.0).round() / 100.0),
            last_inspection: s.last.as_ref().map(|l| LastInspectionDto {
                id: l.id.to_string(),
                seq: l.seq,
                decision: l.decision.as_str(),
                confidence: l.confidence,
                cycle_time_ms: round2(l.cycle_time_ms),
                timestamp: rfc3339(l.inspected_at),
            }),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StationList {
    pub stations: Vec<StationDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MqttStatusDto {
    pub enabled: bool,
    pub broker: Option<String>,
    pub stations: Vec<MqttStationDto>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MqttStationDto {
    pub station_id: String,
    pub connected: bool,
    /// Messages waiting in the outbox.
    pub backlog: u64,
    pub oldest_pending_age_s: Option<f64>,
    /// Delivered since the daemon started.
    pub delivered: u64,
    pub last_error: Option<String>,
}

/// The inspection seed's OPC-UA status shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OpcuaStatusDto {
    pub enabled: bool,
    pub running: bool,
    pub endpoint: Option<String>,
    pub station_count: usize,
    pub nodes: Vec<String>,
}

/// A stored tightening, as `GET /api/v1/tightenings` and the MQTT tightening topic give it.
/// Torques are the controller's integer hundredths shown as decimals of `torque_unit`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TighteningDto {
    pub id: i64,
    pub wrench_id: String,
    pub station_id: Option<String>,
    pub tightening_id: u64,
    pub status: &'static str,
    pub source: &'static str,
    pub torque: f64,
    pub torque_min: Option<f64>,
    pub torque_max: Option<f64>,
    pub torque_target: Option<f64>,
    pub torque_unit: String,
    pub torque_status: Option<String>,
    pub angle: i64,
    pub angle_min: Option<i64>,
    pub angle_max: Option<i64>,
    pub angle_target: Option<i64>,
    pub angle_status: Option<String>,
    pub program_nr: Option<u32>,
    pub batch_size: Option<u32>,
    pub batch_counter: Option<u32>,
    pub batch_status: Option<String>,
    pub vin: Option<String>,
    pub tool_serial: Option<String>,
    pub controller_name: Option<String>,
    pub controller_time: String,
    pub received_at: String,
}

/// Open Protocol's integer hundredths as the decimal the API shows.
pub fn hundredths(value: i64) -> f64 {
    value as f64 / 100.0
}

impl From<&crate::storage::TighteningRecord> for TighteningDto {
    fn from(record: &crate::storage::TighteningRecord) -> TighteningDto {
        let t = &record.tightening;
        TighteningDto {
            id: record.seq,
            wrench_id: t.wrench_id.clone(),
            station_id: t.station_id.clone(),
            tightening_id: t.tightening_id,
            status: if t.ok { "ok" } else { "nok" },
            source: if t.backfilled { "backfill" } else { "live" },
            torque: hundredths(t.torque),
            torque_min: t.torque_min.map(hundredths),
            torque_max: t.torque_max.map(hundredths),
            torque_target: t.torque_target.map(hundredths),
            torque_unit: t.torque_unit.clone(),
            torque_status: t.torque_status.clone(),
            angle: t.angle,
            angle_min: t.angle_min,
            angle_max: t.angle_max,
            angle_target: t.angle_target,
            angle_status: t.angle_status.clone(),
            program_nr: t.pset,
            batch_size: t.batch_size,
            batch_counter: t.batch_counter,
            batch_status: t.batch_status.clone(),
            vin: t.vin.clone(),
            tool_serial: t.tool_serial.clone(),
            controller_name: t.controller_name.clone(),
            controller_time: t.controller_time.clone(),
            received_at: rfc3339(t.received_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TighteningList {
    pub items: Vec<TighteningDto>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

/// A raised anomaly of a continuous pipeline (REST and MQTT).
#[derive(Serialize, utoipa::ToSchema)]
pub struct PipelineEventDto {
    pub id: String,
    pub pipeline_id: String,
    pub station_id: String,
    pub anomaly_score: f32,
    pub threshold: f32,
    /// Anomalous frames in the confirmation window, and the window.
    pub frames_anomalous: u32,
    pub frames_window: u32,
    pub label: Option<String>,
    pub timestamp: String,
}

impl From<&crate::storage::PipelineEvent> for PipelineEventDto {
    fn from(event: &crate::storage::PipelineEvent) -> PipelineEventDto {
        PipelineEventDto {
            id: event.id.to_string(),
            pipeline_id: event.pipeline_id.to_string(),
            station_id: event.station_id.clone(),
            anomaly_score: event.score,
            threshold: event.threshold,
            frames_anomalous: event.frames_anomalous,
            frames_window: event.frames_window,
            label: event.label.clone(),
            timestamp: rfc3339(event.at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StorageDto {
    pub state_dir: String,
    pub database_bytes: u64,
    pub wal_bytes: u64,
    pub images: ImagesDto,
    pub records: RecordsDto,
    pub outbox_pending: u64,
    /// Images older than this are removed every hour; null keeps them.
    pub image_retention_days: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImagesDto {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecordsDto {
    pub inspections: u64,
    pub tightenings: u64,
    pub pipeline_events: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CleanupDto {
    pub images_removed: u64,
    pub bytes_freed: u64,
}

/// An alert, in the inspection seed's shape (`id, severity, title, message, timestamp,
/// acknowledged`) plus what a station adds: the rule and what it concerns (`source`), the
/// station, whether it is still active, and who acknowledged it when.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertDto {
    pub id: String,
    pub severity: &'static str,
    pub title: String,
    pub message: String,
    pub rule: String,
    pub source: String,
    pub station_id: Option<String>,
    pub timestamp: String,
    pub active: bool,
    pub cleared_at: Option<String>,
    pub acknowledged: bool,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
}

impl From<&crate::storage::AlertRecord> for AlertDto {
    fn from(a: &crate::storage::AlertRecord) -> AlertDto {
        let (rule, source) = a.key.split_once(':').unwrap_or((&a.key, &a.key));
        AlertDto {
            id: a.id.clone(),
            severity: a.severity.as_str(),
            title: a.title.clone(),
            message: a.message.clone(),
            rule: rule.to_owned(),
            source: source.to_owned(),
            station_id: a.station_id.clone(),
            timestamp: rfc3339(a.raised_at),
            active: a.cleared_at.is_none(),
            cleared_at: a.cleared_at.map(rfc3339),
            acknowledged: a.acknowledged_at.is_some(),
            acknowledged_by: a.acknowledged_by.clone(),
            acknowledged_at: a.acknowledged_at.map(rfc3339),
        }
    }
}

/// One stamped event of a unit record. Which fields are set depends on `type`:
/// `prediction` (inspection_id, label, confidence, matched), `tightening` and
/// `stray_tightening` (one the step had no torque action for; tightening_seq, ok, counted, note), `input`/`output` (line, active), `qa` (passed, by), `step_advance`
/// (name), `step_complete` (active_s, over_benchmark), `step_interrupt` (active_s, reason),
/// `assembly_complete` (active_s, reason), `started` and `notice` (text).
#[derive(Serialize, utoipa::ToSchema)]
pub struct UnitEventDto {
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_index: Option<usize>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inspection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tightening_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_benchmark: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl From<&UnitEvent> for UnitEventDto {
    fn from(e: &UnitEvent) -> UnitEventDto {
        let mut dto = UnitEventDto {
            at: rfc3339(e.at),
            step_index: e.step,
            kind: e.kind,
            inspection_id: e.inspection_id.map(|i| i.to_string()),
            tightening_seq: e.tightening_seq,
            label: None,
            confidence: None,
            matched: None,
            ok: None,
            counted: None,
            line: None,
            active: None,
            passed: None,
            by: None,
            name: None,
            active_s: None,
            over_benchmark: None,
            reason: None,
            note: None,
            text: None,
        };
        match e.kind {
            "prediction" => {
                dto.label = e.text.clone();
                dto.confidence = e.value.map(|v| (v * 1000.0).round() / 1000.0);
                dto.matched = e.ok;
            }
            "tightening" | "stray_tightening" => {
                dto.ok = e.ok;
                dto.counted = e.flag;
                dto.note = e.text.clone();
            }
            "input" | "output" => {
                dto.line = e.text.clone();
                dto.active = e.ok;
            }
            "qa" => {
                dto.passed = e.ok;
                dto.by = e.text.clone();
            }
            "step_advance" => dto.name = e.text.clone(),
            "step_complete" => {
                dto.active_s = e.value;
                dto.over_benchmark = e.flag;
            }
            "step_interrupt" | "assembly_complete" => {
                dto.active_s = e.value;
                dto.reason = e.text.clone();
            }
            _ => dto.text = e.text.clone(),
        }
        dto
    }
}

/// What happened in one step of a unit record, gathered from its events.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UnitStepDto {
    pub step_index: usize,
    pub name: String,
    /// "complete", "interrupted" or "active".
    pub status: &'static str,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Time spent in the step, pauses excluded (the last visit when it was entered twice).
    pub active_s: Option<f64>,
    pub over_benchmark: Option<bool>,
    pub inspections: Vec<String>,
    pub predictions: u32,
    pub tightenings: Vec<i64>,
    /// Tightenings of the step's torque actions that counted, and those that did not.
    pub tightenings_ok: u32,
    pub tightenings_nok: u32,
    /// Tightenings made during the step that it had no torque action for.
    pub tightenings_stray: u32,
    pub qa_passed: Option<bool>,
    pub reason: Option<String>,
}

/// Per-step view of a record's events, in the order the steps were visited.
pub fn unit_steps(events: &[UnitEvent]) -> Vec<UnitStepDto> {
    let mut steps: Vec<UnitStepDto> = Vec::new();
    for e in events {
        if e.kind == "step_advance" {
            steps.push(UnitStepDto {
                step_index: e.step.unwrap_or(0),
                name: e.text.clone().unwrap_or_default(),
                status: "active",
                started_at: rfc3339(e.at),
                ended_at: None,
                active_s: None,
                over_benchmark: None,
                inspections: Vec::new(),
                predictions: 0,
                tightenings: Vec::new(),
                tightenings_ok: 0,
                tightenings_nok: 0,
                tightenings_stray: 0,
                qa_passed: None,
                reason: None,
            });
            continue;
        }
        let Some(step) = steps.last_mut() else { continue };
        match e.kind {
            "prediction" => {
                step.predictions += 1;
                step.inspections.extend(e.inspection_id.map(|i| i.to_string()));
            }
            "stray_tightening" => {
                step.tightenings.extend(e.tightening_seq);
                step.tightenings_stray += 1;
            }
            "tightening" => {
                step.tightenings.extend(e.tightening_seq);
                if e.flag == Some(true) {
                    step.tightenings_ok += 1;
                } else {
                    step.tightenings_nok += 1;
                }
            }
            "qa" => step.qa_passed = e.ok,
            "step_complete" | "step_interrupt" => {
                step.status = if e.kind == "step_complete" { "complete" } else { "interrupted" };
                step.ended_at = Some(rfc3339(e.at));
                step.active_s = e.value;
                step.over_benchmark = e.flag;
                step.reason = if e.kind == "step_interrupt" { e.text.clone() } else { None };
            }
            _ => {}
        }
    }
    steps
}

/// A unit record: who built which unit to which revision, how it ended, step by step.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UnitRecordDto {
    pub id: String,
    pub assembly_id: String,
    pub assembly_name: String,
    pub revision: u32,
    pub operator_id: i64,
    pub operator_name: String,
    pub serial: String,
    pub station_id: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// "completed", "failed", "aborted", "incomplete", or null while being built.
    pub outcome: Option<&'static str>,
    pub reason: Option<String>,
    /// Every inspection and tightening that went into the unit.
    pub inspection_ids: Vec<String>,
    pub tightening_seqs: Vec<i64>,
    pub steps: Vec<UnitStepDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<UnitEventDto>>,
}

impl UnitRecordDto {
    /// With `with_events`, the full event list too; the steps are always there.
    pub fn new(record: &UnitRecord, events: &[UnitEvent], with_events: bool) -> UnitRecordDto {
        UnitRecordDto {
            id: record.id.to_string(),
            assembly_id: record.assembly_id.to_string(),
            assembly_name: record.assembly_name.clone(),
            revision: record.revision,
            operator_id: record.operator_id,
            operator_name: record.operator_name.clone(),
            serial: record.serial.clone(),
            station_id: record.station_id.clone(),
            started_at: rfc3339(record.started_at),
            ended_at: record.ended_at.map(rfc3339),
            outcome: record.outcome.map(|o| o.as_str()),
            reason: record.reason.clone(),
            inspection_ids: events.iter().filter_map(|e| e.inspection_id.map(|i| i.to_string())).collect(),
            tightening_seqs: events.iter().filter_map(|e| e.tightening_seq).collect(),
            steps: unit_steps(events),
            events: with_events.then(|| events.iter().map(UnitEventDto::from).collect()),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LastUnitDto {
    pub assembly_record_id: String,
    pub serial: String,
    pub outcome: &'static str,
    pub ended_at: String,
}

/// The coaching state: the unit being built (null fields when idle) and the last one.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CoachingStatusDto {
    pub station_id: String,
    /// "idle", "running" or "paused".
    pub state: &'static str,
    pub assembly_record_id: Option<String>,
    pub assembly_id: Option<String>,
    pub assembly_name: Option<String>,
    pub revision: Option<u32>,
    pub serial: Option<String>,
    pub operator_id: Option<i64>,
    pub operator_name: Option<String>,
    pub step_index: Option<usize>,
    pub step_name: Option<String>,
    pub step_count: Option<usize>,
    /// OK tightenings counted in the current step, and how many it needs.
    pub torque_ok: Option<u32>,
    pub torque_required: Option<u32>,
    pub started_at: Option<String>,
    pub last_record: Option<LastUnitDto>,
}

impl From<&crate::coaching::CoachingStatus> for CoachingStatusDto {
    fn from(s: &crate::coaching::CoachingStatus) -> CoachingStatusDto {
        let unit = s.unit.as_ref();
        CoachingStatusDto {
            station_id: s.station_id.clone(),
            state: match unit {
                None => "idle",
                Some(u) if u.paused => "paused",
                Some(_) => "running",
            },
            assembly_record_id: unit.map(|u| u.record_id.to_string()),
            assembly_id: unit.map(|u| u.assembly_id.to_string()),
            assembly_name: unit.map(|u| u.assembly_name.clone()),
            revision: unit.map(|u| u.revision),
            serial: unit.map(|u| u.serial.clone()),
            operator_id: unit.map(|u| u.operator_id),
            operator_name: unit.map(|u| u.operator_name.clone()),
            step_index: unit.map(|u| u.step_index),
            step_name: unit.map(|u| u.step_name.clone()),
            step_count: unit.map(|u| u.step_count),
            torque_ok: unit.map(|u| u.torque_done.0),
            torque_required: unit.map(|u| u.torque_done.1),
            started_at: unit.map(|u| rfc3339(u.started_at)),
            last_record: s.last.as_ref().map(|l| LastUnitDto {
                assembly_record_id: l.record_id.to_string(),
                serial: l.serial.clone(),
                outcome: l.outcome.as_str(),
                ended_at: rfc3339(l.ended_at),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::assembly::Message;

    #[test]
    fn unit_steps_count_counted_rejected_and_stray_tightenings_apart() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let tightening =
            |seq, ok, counted, expected| Message::Tightening { step: 0, seq, ok, counted, expected, note: None };
        let messages = [
            Message::StepAdvance { step: 0, name: "screws".into() },
            tightening(1, true, true, true),
            tightening(2, false, false, true),
            tightening(3, true, false, false),
            tightening(4, true, true, true),
        ];
        let events: Vec<UnitEvent> = messages.iter().map(|m| UnitEvent::from_message(m, at)).collect();
        let steps = unit_steps(&events);
        assert_eq!(steps.len(), 1);
        let step = &steps[0];
        assert_eq!((step.tightenings_ok, step.tightenings_nok, step.tightenings_stray), (2, 1, 1));
        assert_eq!(step.tightenings, [1, 2, 3, 4]);
    }
}
