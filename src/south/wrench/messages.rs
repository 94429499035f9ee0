//! Open Protocol messages: the MIDs stationd speaks, as one enum with `to_telegram` and
//! `from_telegram` (both directions, so the simulator and the client share one layout
//! table). A flat list by MID; byte layouts follow ../shared/docs/open-protocol.md.
//!
//! Parsing is defensive: numbers are trimmed and may carry a `-`, an all-spaces field is
//! "not supported" (`None`), parameter IDs are checked so a wrong layout is an error and
//! never garbage, a short last field and unknown trailing data are accepted. Torque stays
//! integer hundredths as sent. Like `codec.rs`, this file uses nothing else of the crate.

use std::fmt;

use super::codec::Telegram;

pub const MID_COMM_START: u16 = 1;
pub const MID_COMM_START_ACK: u16 = 2;
pub const MID_COMM_STOP: u16 = 3;
pub const MID_ERROR: u16 = 4;
pub const MID_ACCEPTED: u16 = 5;
pub const MID_PSET_SUBSCRIBE: u16 = 14;
pub const MID_PSET_SELECTED: u16 = 15;
pub const MID_PSET_ACK: u16 = 16;
pub const MID_SELECT_PSET: u16 = 18;
pub const MID_SET_BATCH_SIZE: u16 = 19;
pub const MID_RESET_BATCH: u16 = 20;
pub const MID_LOCK_SUBSCRIBE: u16 = 21;
pub const MID_LOCK_STATUS: u16 = 22;
pub const MID_LOCK_ACK: u16 = 23;
pub const MID_DISABLE_TOOL: u16 = 42;
pub const MID_ENABLE_TOOL: u16 = 43;
pub const MID_VIN_DOWNLOAD: u16 = 50;
pub const MID_VIN_SUBSCRIBE: u16 = 51;
pub const MID_VIN: u16 = 52;
pub const MID_VIN_ACK: u16 = 53;
pub const MID_RESULT_SUBSCRIBE: u16 = 60;
pub const MID_RESULT: u16 = 61;
pub const MID_RESULT_ACK: u16 = 62;
pub const MID_OLD_RESULT_REQUEST: u16 = 64;
pub const MID_OLD_RESULT: u16 = 65;
pub const MID_ALARM_SUBSCRIBE: u16 = 70;
pub const MID_ALARM: u16 = 71;
pub const MID_ALARM_ACK: u16 = 72;
pub const MID_ALARM_STATUS: u16 = 76;
pub const MID_ALARM_STATUS_ACK: u16 = 77;
pub const MID_SET_TIME: u16 = 82;
pub const MID_ABORT_JOB: u16 = 127;
pub const MID_LINK_ACK: u16 = 9997;
pub const MID_LINK_NACK: u16 = 9998;
pub const MID_KEEP_ALIVE: u16 = 9999;

/// The MID 0061 revisions this build parses in full (8 to 10 parse up to PID 57).
pub const RESULT_REVISIONS: &[u16] = &[1, 2, 3, 4, 5, 6, 7, 999];

/// Every message stationd sends or understands. Subscribe variants carry the revision
/// they ask for; data variants carry the revision they came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    CommStart { revision: u16 },
    CommStartAck(ControllerInfo),
    CommStop,
    Error { mid: u16, code: ErrorCode },
    Accepted { mid: u16 },
    PsetSubscribe,
    PsetSelected { pset: u32, changed_at: String },
    PsetAck,
    SelectPset { pset: u32 },
    SetBatchSize { pset: u32, size: u32 },
    ResetBatch { pset: u32 },
    LockSubscribe,
    LockStatus { locked: bool },
    LockAck,
    DisableTool,
    EnableTool,
    VinDownload { vin: String },
    VinSubscribe,
    Vin { vin: String },
    VinAck,
    ResultSubscribe { revision: u16, no_ack: bool },
    Result(Tightening),
    ResultAck,
    OldResultRequest { tightening_id: u64 },
    OldResult(Tightening),
    AlarmSubscribe,
    Alarm(Alarm),
    AlarmAck,
    AlarmStatus { active: bool, alarm: Alarm },
    AlarmStatusAck,
    SetTime { time: String },
    AbortJob,
    LinkAck { mid: u16 },
    LinkNack { mid: u16, code: u16 },
    KeepAlive,
}

/// MID 0002: who the controller is and what it supports. Fields the revision does not
/// carry are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerInfo {
    pub revision: u16,
    pub cell_id: u32,
    pub channel_id: u32,
    pub controller_name: String,
    pub supplier_code: Option<String>,
    pub protocol_version: Option<String>,
    pub controller_software: Option<String>,
    pub tool_software: Option<String>,
    pub serial_number: Option<String>,
    /// PID 12: link-level acknowledgement with sequence numbers is supported.
    pub sequence_numbers: bool,
}

/// One tightening (MID 0061 or 0065). Torque values are hundredths of the torque unit
/// (Nm unless `torque_unit` says otherwise), angles whole degrees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tightening {
    pub revision: u16,
    pub tightening_id: u64,
    pub cell_id: Option<u32>,
    pub channel_id: Option<u32>,
    pub controller_name: Option<String>,
    pub vin: Option<String>,
    pub job_id: Option<u32>,
    pub pset: Option<u32>,
    pub batch_size: Option<u32>,
    pub batch_counter: Option<u32>,
    pub ok: bool,
    pub batch_status: Option<BatchStatus>,
    pub torque_status: Option<LimitStatus>,
    pub angle_status: Option<LimitStatus>,
    pub torque: i64,
    pub torque_min: Option<i64>,
    pub torque_max: Option<i64>,
    pub torque_target: Option<i64>,
    pub angle: i64,
    pub angle_min: Option<i64>,
    pub angle_max: Option<i64>,
    pub angle_target: Option<i64>,
    /// The controller's local wall-clock time, `YYYY-MM-DD:HH:MM:SS`, no zone.
    pub timestamp: String,
    pub pset_changed_at: Option<String>,
    pub strategy: Option<u32>,
    pub error_status: Option<u64>,
    pub tool_serial: Option<String>,
    pub pset_name: Option<String>,
    /// PID 48: 1 Nm, 2 lbf·ft, 3 lbf·in, 4 kpm, 5 kgf·cm, 6 ozf·in, 8 Ncm.
    pub torque_unit: Option<u8>,
    pub result_type: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStatus {
    Low,
    Ok,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    NotCompleted,
    Ok,
    NotUsed,
    Running,
}

/// MID 0071 / 0076 (revision 1 and 2 layouts: 4- or 5-character codes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alarm {
    pub revision: u16,
    pub code: String,
    pub controller_ready: bool,
    pub tool_ready: bool,
    pub time: String,
}

/// A MID 0004 error code with its meaning from the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const ALREADY_CONNECTED: ErrorCode = ErrorCode(96);
    pub const REVISION_UNSUPPORTED: ErrorCode = ErrorCode(97);
    pub const TIGHTENING_NOT_FOUND: ErrorCode = ErrorCode(15);

    pub fn meaning(self) -> &'static str {
        match self.0 {
            0 => "no error",
            1 => "invalid data",
            2 => "Pset ID not present",
            3 => "Pset cannot be set",
            4 => "Pset not running",
            6 => "VIN upload subscription already exists",
            7 => "VIN upload subscription does not exist",
            8 => "VIN input source not granted",
            9 => "last tightening result subscription already exists",
            10 => "last tightening result subscription does not exist",
            11 => "alarm subscription already exists",
            12 => "alarm subscription does not exist",
            13 => "parameter set selection subscription already exists",
            14 => "parameter set selection subscription does not exist",
            15 => "tightening ID requested not found",
            16 => "connection rejected, protocol busy",
            17 => "job ID not present",
            18 => "job info subscription already exists",
            19 => "job info subscription does not exist",
            20 => "job cannot be set",
            21 => "job not running",
            22 => "not possible to execute dynamic job request",
            23 => "job batch decrement failed",
            24 => "not possible to create Pset",
            25 => "programming control not granted",
            26 => "wrong tool type to Pset download",
            27 => "tool is inaccessible",
            28 => "job abortion is in progress",
            29 => "tool does not exist",
            30 => "controller is not a sync master/station controller",
            35 => "other master client already connected",
            36 => "lock type not supported",
            40 => "job line control info subscription already exists",
            41 => "job line control info subscription does not exist",
            42 => "identifier input source not granted",
            50..=51 => "external inputs subscription error",
            52 => "IO device not connected",
            53 => "faulty IO device ID",
            54 => "tool tag ID unknown",
            57 => "motor tuning failed",
            58 => "no alarm present",
            59 => "tool currently in use",
            60 => "no histogram available",
            61..=68 => "pairing error",
            69 => "unsupported extra data revision",
            70 => "calibration failed",
            71 => "subscription already exists",
            72 => "subscription does not exist",
            73 => "subscribed MID unsupported",
            74 => "subscribed MID revision unsupported",
            75 => "requested MID unsupported",
            76 => "requested MID revision unsupported",
            77 => "requested on specific data not supported",
            78 => "subscription on specific data not supported",
            79 => "command failed",
            90 => "lock at batch done subscription already exists",
            91 => "lock at batch done subscription does not exist",
            92 => "Open Protocol commands disabled",
            95 => "Power MACS in manual mode",
            96 => "client already connected",
            97 => "MID revision unsupported",
            98 => "controller internal request timeout",
            99 => "unknown MID",
            _ => "unknown error code",
        }
    }

    /// "Subscription already exists": the subscription is in place, which is what we want.
    pub fn is_already_subscribed(self) -> bool {
        matches!(self.0, 6 | 9 | 11 | 13 | 71 | 90)
    }

    /// The revision asked for is too new: step down and ask again.
    pub fn is_revision_unsupported(self) -> bool {
        matches!(self.0, 74 | 76 | 97)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {:02} ({})", self.0, self.meaning())
    }
}

/// A telegram whose data does not match its MID's layout, or a MID we do not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    UnknownMid(u16),
    Layout { mid: u16, reason: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownMid(mid) => write!(f, "MID {mid:04} is not handled"),
            ParseError::Layout { mid, reason } => write!(f, "MID {mid:04}: {reason}"),
        }
    }
}

impl std::error::Error for ParseError {}

impl Message {
    pub fn mid(&self) -> u16 {
        match self {
            Message::CommStart { .. } => MID_COMM_START,
            Message::CommStartAck(_) => MID_COMM_START_ACK,
            Message::CommStop => MID_COMM_STOP,
            Message::Error { .. } => MID_ERROR,
            Message::Accepted { .. } => MID_ACCEPTED,
            Message::PsetSubscribe => MID_PSET_SUBSCRIBE,
            Message::PsetSelected { .. } => MID_PSET_SELECTED,
            Message::PsetAck => MID_PSET_ACK,
            Message::SelectPset { .. } => MID_SELECT_PSET,
            Message::SetBatchSize { .. } => MID_SET_BATCH_SIZE,
            Message::ResetBatch { .. } => MID_RESET_BATCH,
            Message::LockSubscribe => MID_LOCK_SUBSCRIBE,
            Message::LockStatus { .. } => MID_LOCK_STATUS,
            Message::LockAck => MID_LOCK_ACK,
            Message::DisableTool => MID_DISABLE_TOOL,
            Message::EnableTool => MID_ENABLE_TOOL,
            Message::VinDownload { .. } => MID_VIN_DOWNLOAD,
            Message::VinSubscribe => MID_VIN_SUBSCRIBE,
            Message::Vin { .. } => MID_VIN,
            Message::VinAck => MID_VIN_ACK,
            Message::ResultSubscribe { .. } => MID_RESULT_SUBSCRIBE,
            Message::Result(_) => MID_RESULT,
            Message::ResultAck => MID_RESULT_ACK,
            Message::OldResultRequest { .. } => MID_OLD_RESULT_REQUEST,
            Message::OldResult(_) => MID_OLD_RESULT,
            Message::AlarmSubscribe => MID_ALARM_SUBSCRIBE,
            Message::Alarm(_) => MID_ALARM,
            Message::AlarmAck => MID_ALARM_ACK,
            Message::AlarmStatus { .. } => MID_ALARM_STATUS,
            Message::AlarmStatusAck => MID_ALARM_STATUS_ACK,
            Message::SetTime { .. } => MID_SET_TIME,
            Message::AbortJob => MID_ABORT_JOB,
            Message::LinkAck { .. } => MID_LINK_ACK,
            Message::LinkNack { .. } => MID_LINK_NACK,
            Message::KeepAlive => MID_KEEP_ALIVE,
        }
    }

    /// The telegram with a blank header apart from MID, revision and the no-ack flag; the
    /// session fills in sequence numbers.
    pub fn to_telegram(&self) -> Telegram {
        let mut w = Writer::default();
        let mut revision = 1;
        let mut no_ack_flag = false;
        match self {
            Message::CommStart { revision: rev } => {
                revision = *rev;
                if *rev >= 7 {
                    // Keep-alive mandatory: we always send it.
                    w.pid(1).num(0, 1);
                }
            }
            Message::CommStartAck(info) => {
                revision = info.revision;
                write_controller_info(&mut w, info);
            }
            Message::Error { mid, code } => {
                w.num(i64::from(*mid), 4).num(i64::from(code.0), 2);
            }
            Message::Accepted { mid } | Message::LinkAck { mid } => {
                w.num(i64::from(*mid), 4);
            }
            Message::LinkNack { mid, code } => {
                w.num(i64::from(*mid), 4).num(i64::from(*code), 4);
            }
            Message::PsetSelected { pset, changed_at } => {
                w.num(i64::from(*pset), 3).text(changed_at, 19);
            }
            Message::SelectPset { pset } | Message::ResetBatch { pset } => {
                w.num(i64::from(*pset), 3);
            }
            Message::SetBatchSize { pset, size } => {
                // Revision 1 has two digits for the size; revision 2 (R2.16) four.
                w.num(i64::from(*pset), 3);
                if *size > 99 {
                    revision = 2;
                    w.num(i64::from(*size), 4);
                } else {
                    w.num(i64::from(*size), 2);
                }
            }
            Message::LockStatus { locked } => {
                w.num(i64::from(*locked), 1);
            }
            Message::VinDownload { vin } => {
                let vin: String = vin.chars().take(25).collect();
                w.raw(vin.as_bytes());
            }
            Message::Vin { vin } => {
                w.text(vin, 25);
            }
            Message::ResultSubscribe { revision: rev, no_ack } => {
                revision = *rev;
                no_ack_flag = *no_ack;
            }
            Message::Result(t) => {
                revision = t.revision;
                write_result(&mut w, t);
            }
            Message::OldResultRequest { tightening_id } => {
                w.num(*tightening_id as i64, 10);
            }
            Message::OldResult(t) => {
                revision = t.revision;
                if t.revision == 1 {
                    write_old_result_rev1(&mut w, t);
                } else {
                    write_result(&mut w, t);
                }
            }
            Message::Alarm(alarm) => {
                revision = alarm.revision;
                write_alarm(&mut w, alarm, None);
            }
            Message::AlarmStatus { active, alarm } => {
                revision = alarm.revision;
                write_alarm(&mut w, alarm, Some(*active));
            }
            Message::SetTime { time } => {
                w.text(time, 19);
            }
            Message::CommStop
            | Message::PsetSubscribe
            | Message::PsetAck
            | Message::LockSubscribe
            | Message::LockAck
            | Message::DisableTool
            | Message::EnableTool
            | Message::VinSubscribe
            | Message::VinAck
            | Message::ResultAck
            | Message::AlarmSubscribe
            | Message::AlarmAck
            | Message::AlarmStatusAck
            | Message::AbortJob
            | Message::KeepAlive => {}
        }
        let mut telegram = Telegram::new(self.mid(), revision, w.0);
        telegram.header.no_ack = no_ack_flag;
        telegram
    }

    pub fn from_telegram(t: &Telegram) -> Result<Message, ParseError> {
        let mid = t.header.mid;
        let rev = t.header.revision;
        let mut r = Reader::new(&t.data, mid);
        let message = match mid {
            MID_COMM_START => Message::CommStart { revision: rev },
            MID_COMM_START_ACK => Message::CommStartAck(read_controller_info(&mut r, rev)?),
            MID_COMM_STOP => Message::CommStop,
            MID_ERROR => {
                let failed = r.required_num(4, "failed MID")? as u16;
                // Revision 2 has a 3-digit code (seen in implementations only).
                let width = if rev >= 2 { 3 } else { 2 };
                let code = r.required_num(width, "error code")? as u16;
                Message::Error { mid: failed, code: ErrorCode(code) }
            }
            MID_ACCEPTED => Message::Accepted { mid: r.required_num(4, "accepted MID")? as u16 },
            MID_PSET_SUBSCRIBE => Message::PsetSubscribe,
            MID_PSET_SELECTED => {
                if rev >= 2 {
                    r.pid(1)?;
                    let pset = r.required_num(3, "Pset")? as u32;
                    r.pid(2)?;
                    r.skip(25);
                    r.pid(3)?;
                    Message::PsetSelected { pset, changed_at: r.text(19) }
                } else {
                    let pset = r.required_num(3, "Pset")? as u32;
                    Message::PsetSelected { pset, changed_at: r.text(19) }
                }
            }
            MID_PSET_ACK => Message::PsetAck,
            MID_SELECT_PSET => Message::SelectPset { pset: r.required_num(3, "Pset")? as u32 },
            MID_SET_BATCH_SIZE => {
                let pset = r.required_num(3, "Pset")? as u32;
                let size = r.required_num(if rev >= 2 { 4 } else { 2 }, "batch size")? as u32;
                Message::SetBatchSize { pset, size }
            }
            MID_RESET_BATCH => Message::ResetBatch { pset: r.num(3)?.unwrap_or(0) as u32 },
            MID_LOCK_SUBSCRIBE => Message::LockSubscribe,
            MID_LOCK_STATUS => Message::LockStatus { locked: r.required_num(1, "relay status")? == 1 },
            MID_LOCK_ACK => Message::LockAck,
            MID_DISABLE_TOOL => Message::DisableTool,
            MID_ENABLE_TOOL => Message::EnableTool,
            MID_VIN_DOWNLOAD => Message::VinDownload { vin: r.text(25) },
            MID_VIN_SUBSCRIBE => Message::VinSubscribe,
            MID_VIN => {
                if rev >= 2 {
                    r.pid(1)?;
                }
                Message::Vin { vin: r.text(25) }
            }
            MID_VIN_ACK => Message::VinAck,
            MID_RESULT_SUBSCRIBE => Message::ResultSubscribe { revision: rev, no_ack: t.header.no_ack },
            MID_RESULT => Message::Result(read_result(&mut r, rev)?),
            MID_RESULT_ACK => Message::ResultAck,
            MID_OLD_RESULT_REQUEST => {
                Message::OldResultRequest { tightening_id: r.required_num(10, "tightening ID")? as u64 }
            }
            MID_OLD_RESULT => {
                Message::OldResult(if rev == 1 { read_old_result_rev1(&mut r)? } else { read_result(&mut r, rev)? })
            }
            MID_ALARM_SUBSCRIBE => Message::AlarmSubscribe,
            MID_ALARM => Message::Alarm(read_alarm(&mut r, rev, false)?.1),
            MID_ALARM_ACK => Message::AlarmAck,
            MID_ALARM_STATUS => {
                let (active, alarm) = read_alarm(&mut r, rev, true)?;
                Message::AlarmStatus { active, alarm }
            }
            MID_ALARM_STATUS_ACK => Message::AlarmStatusAck,
            MID_SET_TIME => Message::SetTime { time: r.text(19) },
            MID_ABORT_JOB => Message::AbortJob,
            MID_LINK_ACK => Message::LinkAck { mid: r.required_num(4, "acknowledged MID")? as u16 },
            MID_LINK_NACK => {
                let acked = r.required_num(4, "MID")? as u16;
                Message::LinkNack { mid: acked, code: r.required_num(4, "error code")? as u16 }
            }
            MID_KEEP_ALIVE => Message::KeepAlive,
            other => return Err(ParseError::UnknownMid(other)),
        };
        Ok(message)
    }
}

// ---------------------------------------------------------------------------------------
// MID 0002

/// (PID, width, first revision carrying it) for MID 0002.
const CONTROLLER_INFO: &[(u8, usize, u16)] = &[
    (1, 4, 1),
    (2, 2, 1),
    (3, 25, 1),
    (4, 3, 2),
    (5, 19, 3),
    (6, 19, 3),
    (7, 19, 3),
    (8, 24, 4),
    (9, 10, 4),
    (10, 3, 5),
    (11, 3, 5),
    (12, 1, 6),
    (13, 1, 6),
    (14, 10, 6),
    (15, 25, 6),
    (16, 1, 6),
    (17, 1, 7),
];

fn write_controller_info(w: &mut Writer, info: &ControllerInfo) {
    for &(pid, width, since) in CONTROLLER_INFO {
        if since > info.revision {
            break;
        }
        w.pid(pid);
        let opt = |value: &Option<String>| value.clone().unwrap_or_default();
        match pid {
            1 => w.num(i64::from(info.cell_id), width),
            2 => w.num(i64::from(info.channel_id), width),
            3 => w.text(&info.controller_name, width),
            4 => w.text(&opt(&info.supplier_code), width),
            5 => w.text(&opt(&info.protocol_version), width),
            6 => w.text(&opt(&info.controller_software), width),
            7 => w.text(&opt(&info.tool_software), width),
            9 => w.text(&opt(&info.serial_number), width),
            12 => w.num(i64::from(info.sequence_numbers), width),
            10 | 11 => w.num(1, width),
            13 | 16 | 17 => w.num(0, width),
            _ => w.text("", width),
        };
    }
}

fn read_controller_info(r: &mut Reader<'_>, revision: u16) -> Result<ControllerInfo, ParseError> {
    let mut info = ControllerInfo { revision, ..ControllerInfo::default() };
    // Parse by what is there: controllers send fewer or more parameters than their
    // header revision promises.
    for &(pid, width, _) in CONTROLLER_INFO {
        if r.is_empty() {
            break;
        }
        r.pid(pid)?;
        match pid {
            1 => info.cell_id = r.num(width)?.unwrap_or(0) as u32,
            2 => info.channel_id = r.num(width)?.unwrap_or(0) as u32,
            3 => info.controller_name = r.text(width),
            4 => info.supplier_code = r.opt_text(width),
            5 => info.protocol_version = r.opt_text(width),
            6 => info.controller_software = r.opt_text(width),
            7 => info.tool_software = r.opt_text(width),
            9 => info.serial_number = r.opt_text(width),
            12 => info.sequence_numbers = r.num(width)? == Some(1),
            _ => r.skip(width),
        }
    }
    Ok(info)
}

// ---------------------------------------------------------------------------------------
// MID 0061 / 0065

/// What a MID 0061 parameter means to us; `Num`/`Text` are parameters we carry on the
/// wire (as zeros or blanks) but do not keep.
#[derive(Clone, Copy)]
enum Field {
    Cell,
    Channel,
    Name,
    Vin,
    Job,
    Pset,
    Strategy,
    BatchSize,
    BatchCounter,
    Status,
    BatchStatus,
    TorqueStatus,
    AngleStatus,
    ErrorStatus,
    TorqueMin,
    TorqueMax,
    TorqueTarget,
    Torque,
    AngleMin,
    AngleMax,
    AngleTarget,
    Angle,
    TighteningId,
    ToolSerial,
    Timestamp,
    PsetChanged,
    PsetName,
    TorqueUnit,
    ResultType,
    Num,
    Text,
}

/// MID 0061 revision 1: (PID, width, field). 231 bytes in all.
const RESULT_REV1: &[(u8, usize, Field)] = &[
    (1, 4, Field::Cell),
    (2, 2, Field::Channel),
    (3, 25, Field::Name),
    (4, 25, Field::Vin),
    (5, 2, Field::Job),
    (6, 3, Field::Pset),
    (7, 4, Field::BatchSize),
    (8, 4, Field::BatchCounter),
    (9, 1, Field::Status),
    (10, 1, Field::TorqueStatus),
    (11, 1, Field::AngleStatus),
    (12, 6, Field::TorqueMin),
    (13, 6, Field::TorqueMax),
    (14, 6, Field::TorqueTarget),
    (15, 6, Field::Torque),
    (16, 5, Field::AngleMin),
    (17, 5, Field::AngleMax),
    (18, 5, Field::AngleTarget),
    (19, 5, Field::Angle),
    (20, 19, Field::Timestamp),
    (21, 19, Field::PsetChanged),
    (22, 1, Field::BatchStatus),
    (23, 10, Field::TighteningId),
];

/// MID 0061 revisions 2..=7, cumulative: revision n carries PIDs 1..=RESULT_LAST_PID[n-2].
const RESULT_REV2: &[(u8, usize, Field)] = &[
    (1, 4, Field::Cell),
    (2, 2, Field::Channel),
    (3, 25, Field::Name),
    (4, 25, Field::Vin),
    (5, 4, Field::Job),
    (6, 3, Field::Pset),
    (7, 2, Field::Strategy),
    (8, 5, Field::Num),
    (9, 4, Field::BatchSize),
    (10, 4, Field::BatchCounter),
    (11, 1, Field::Status),
    (12, 1, Field::BatchStatus),
    (13, 1, Field::TorqueStatus),
    (14, 1, Field::AngleStatus),
    (15, 1, Field::Num),
    (16, 1, Field::Num),
    (17, 1, Field::Num),
    (18, 1, Field::Num),
    (19, 1, Field::Num),
    (20, 10, Field::ErrorStatus),
    (21, 6, Field::TorqueMin),
    (22, 6, Field::TorqueMax),
    (23, 6, Field::TorqueTarget),
    (24, 6, Field::Torque),
    (25, 5, Field::AngleMin),
    (26, 5, Field::AngleMax),
    (27, 5, Field::AngleTarget),
    (28, 5, Field::Angle),
    (29, 5, Field::Num),
    (30, 5, Field::Num),
    (31, 5, Field::Num),
    (32, 3, Field::Num),
    (33, 3, Field::Num),
    (34, 3, Field::Num),
    (35, 6, Field::Num),
    (36, 6, Field::Num),
    (37, 6, Field::Num),
    (38, 6, Field::Num),
    (39, 6, Field::Num),
    (40, 6, Field::Num),
    (41, 10, Field::TighteningId),
    (42, 5, Field::Num),
    (43, 5, Field::Num),
    (44, 14, Field::ToolSerial),
    (45, 19, Field::Timestamp),
    (46, 19, Field::PsetChanged),
    (47, 25, Field::PsetName),
    (48, 1, Field::TorqueUnit),
    (49, 2, Field::ResultType),
    (50, 25, Field::Text),
    (51, 25, Field::Text),
    (52, 25, Field::Text),
    (53, 4, Field::Text),
    (54, 6, Field::Num),
    (55, 10, Field::Num),
    (56, 7, Field::Num),
    (57, 7, Field::Num),
];

fn result_last_pid(revision: u16) -> u8 {
    match revision {
        2 => 46,
        3 => 49,
        4 => 52,
        5 => 53,
        6 => 55,
        // 7, and 8..=10 whose extra parameters we do not read.
        _ => 57,
    }
}

/// Revision 999 ("light"): fixed positions, no parameter IDs, 121 bytes.
const RESULT_REV999: &[(usize, Field)] = &[
    (25, Field::Vin),
    (2, Field::Job),
    (3, Field::Pset),
    (4, Field::BatchSize),
    (4, Field::BatchCounter),
    (1, Field::BatchStatus),
    (1, Field::Status),
    (1, Field::TorqueStatus),
    (1, Field::AngleStatus),
    (6, Field::Torque),
    (5, Field::Angle),
    (19, Field::Timestamp),
    (19, Field::PsetChanged),
    (10, Field::TighteningId),
];

/// MID 0065 revision 1: (PID, width, field), 118 bytes.
const OLD_RESULT_REV1: &[(u8, usize, Field)] = &[
    (1, 10, Field::TighteningId),
    (2, 25, Field::Vin),
    (3, 3, Field::Pset),
    (4, 4, Field::BatchCounter),
    (5, 1, Field::Status),
    (6, 1, Field::TorqueStatus),
    (7, 1, Field::AngleStatus),
    (8, 6, Field::Torque),
    (9, 5, Field::Angle),
    (10, 19, Field::Timestamp),
    (11, 1, Field::BatchStatus),
];

fn write_result(w: &mut Writer, t: &Tightening) {
    match t.revision {
        1 => write_fields(w, t, RESULT_REV1.iter().map(|&(pid, width, f)| (Some(pid), width, f))),
        999 => write_fields(w, t, RESULT_REV999.iter().map(|&(width, f)| (None, width, f))),
        rev => {
            let last = result_last_pid(rev);
            write_fields(w, t, RESULT_REV2.iter().filter(|e| e.0 <= last).map(|&(pid, width, f)| (Some(pid), width, f)))
        }
    }
}

fn write_old_result_rev1(w: &mut Writer, t: &Tightening) {
    write_fields(w, t, OLD_RESULT_REV1.iter().map(|&(pid, width, f)| (Some(pid), width, f)));
}

fn read_result(r: &mut Reader<'_>, revision: u16) -> Result<Tightening, ParseError> {
    match revision {
        1 => read_fields(r, revision, RESULT_REV1.iter().map(|&(pid, width, f)| (Some(pid), width, f))),
        999 => read_fields(r, revision, RESULT_REV999.iter().map(|&(width, f)| (None, width, f))),
        998 => Err(ParseError::Layout { mid: MID_RESULT, reason: "revision 998 is not supported".into() }),
        rev => {
            let last = result_last_pid(rev);
            read_fields(
                r,
                rev,
                RESULT_REV2.iter().filter(|e| e.0 <= last).map(|&(pid, width, f)| (Some(pid), width, f)),
            )
        }
    }
}

fn read_old_result_rev1(r: &mut Reader<'_>) -> Result<Tightening, ParseError> {
    read_fields(r, 1, OLD_RESULT_REV1.iter().map(|&(pid, width, f)| (Some(pid), width, f)))
}

fn write_fields(w: &mut Writer, t: &Tightening, fields: impl Iterator<Item = (Option<u8>, usize, Field)>) {
    let num = |w: &mut Writer, value: Option<i64>, width| {
        match value {
            Some(v) => w.num(v, width),
            None => w.text("", width),
        };
    };
    let u = |v: Option<u32>| v.map(i64::from);
    let text = |w: &mut Writer, value: &Option<String>, width| {
        w.text(value.as_deref().unwrap_or(""), width);
    };
    let limit = |s: Option<LimitStatus>| {
        s.map(|s| match s {
            LimitStatus::Low => 0,
            LimitStatus::Ok => 1,
            LimitStatus::High => 2,
        })
    };
    for (pid, width, field) in fields {
        if let Some(pid) = pid {
            w.pid(pid);
        }
        match field {
            Field::Cell => num(w, u(t.cell_id), width),
            Field::Channel => num(w, u(t.channel_id), width),
            Field::Name => text(w, &t.controller_name, width),
            Field::Vin => text(w, &t.vin, width),
            Field::Job => num(w, u(t.job_id), width),
            Field::Pset => num(w, u(t.pset), width),
            Field::Strategy => num(w, u(t.strategy), width),
            Field::BatchSize => num(w, u(t.batch_size), width),
            Field::BatchCounter => num(w, u(t.batch_counter), width),
            Field::Status => {
                w.num(i64::from(t.ok), width);
            }
            Field::BatchStatus => num(
                w,
                t.batch_status.map(|s| match s {
                    BatchStatus::NotCompleted => 0,
                    BatchStatus::Ok => 1,
                    BatchStatus::NotUsed => 2,
                    BatchStatus::Running => 3,
                }),
                width,
            ),
            Field::TorqueStatus => num(w, limit(t.torque_status), width),
            Field::AngleStatus => num(w, limit(t.angle_status), width),
            Field::ErrorStatus => num(w, t.error_status.map(|v| v as i64), width),
            Field::TorqueMin => num(w, t.torque_min, width),
            Field::TorqueMax => num(w, t.torque_max, width),
            Field::TorqueTarget => num(w, t.torque_target, width),
            Field::Torque => {
                w.num(t.torque, width);
            }
            Field::AngleMin => num(w, t.angle_min, width),
            Field::AngleMax => num(w, t.angle_max, width),
            Field::AngleTarget => num(w, t.angle_target, width),
            Field::Angle => {
                w.num(t.angle, width);
            }
            Field::TighteningId => {
                w.num(t.tightening_id as i64, width);
            }
            Field::ToolSerial => text(w, &t.tool_serial, width),
            Field::Timestamp => {
                w.text(&t.timestamp, width);
            }
            Field::PsetChanged => text(w, &t.pset_changed_at, width),
            Field::PsetName => text(w, &t.pset_name, width),
            Field::TorqueUnit => num(w, t.torque_unit.map(i64::from), width),
            Field::ResultType => num(w, u(t.result_type), width),
            Field::Num => {
                w.num(0, width);
            }
            Field::Text => {
                w.text("", width);
            }
        }
    }
}

fn read_fields(
    r: &mut Reader<'_>,
    revision: u16,
    fields: impl Iterator<Item = (Option<u8>, usize, Field)>,
) -> Result<Tightening, ParseError> {
    let mut t = Tightening { revision, ..Tightening::default() };
    let mut have_id = false;
    for (pid, width, field) in fields {
        if r.is_empty() && have_id {
            // Parameters after the tightening ID may be missing on some controllers.
            break;
        }
        if let Some(pid) = pid {
            r.pid(pid)?;
        }
        let u = |v: Option<i64>| v.map(|v| v as u32);
        let limit = |v: Option<i64>| match v {
            Some(0) => Some(LimitStatus::Low),
            Some(1) => Some(LimitStatus::Ok),
            Some(2) => Some(LimitStatus::High),
            _ => None,
        };
        match field {
            Field::Cell => t.cell_id = u(r.num(width)?),
            Field::Channel => t.channel_id = u(r.num(width)?),
            Field::Name => t.controller_name = r.opt_text(width),
            Field::Vin => t.vin = r.opt_text(width),
            Field::Job => t.job_id = u(r.num(width)?),
            Field::Pset => t.pset = u(r.num(width)?),
            Field::Strategy => t.strategy = u(r.num(width)?),
            Field::BatchSize => t.batch_size = u(r.num(width)?),
            Field::BatchCounter => t.batch_counter = u(r.num(width)?),
            Field::Status => t.ok = r.required_num(width, "tightening status")? == 1,
            Field::BatchStatus => {
                t.batch_status = match r.num(width)? {
                    Some(0) => Some(BatchStatus::NotCompleted),
                    Some(1) => Some(BatchStatus::Ok),
                    Some(2) => Some(BatchStatus::NotUsed),
                    Some(3) => Some(BatchStatus::Running),
                    _ => None,
                }
            }
            Field::TorqueStatus => t.torque_status = limit(r.num(width)?),
            Field::AngleStatus => t.angle_status = limit(r.num(width)?),
            Field::ErrorStatus => t.error_status = r.num(width)?.map(|v| v as u64),
            Field::TorqueMin => t.torque_min = r.num(width)?,
            Field::TorqueMax => t.torque_max = r.num(width)?,
            Field::TorqueTarget => t.torque_target = r.num(width)?,
            Field::Torque => t.torque = r.required_num(width, "torque")?,
            Field::AngleMin => t.angle_min = r.num(width)?,
            Field::AngleMax => t.angle_max = r.num(width)?,
            Field::AngleTarget => t.angle_target = r.num(width)?,
            Field::Angle => t.angle = r.num(width)?.unwrap_or(0),
            Field::TighteningId => {
                t.tightening_id = r.required_num(width, "tightening ID")? as u64;
                have_id = true;
            }
            Field::ToolSerial => t.tool_serial = r.opt_text(width),
            Field::Timestamp => t.timestamp = r.text(width),
            Field::PsetChanged => t.pset_changed_at = r.opt_text(width),
            Field::PsetName => t.pset_name = r.opt_text(width),
            Field::TorqueUnit => t.torque_unit = r.num(width)?.map(|v| v as u8),
            Field::ResultType => t.result_type = u(r.num(width)?),
            Field::Num | Field::Text => r.skip(width),
        }
    }
    if !have_id {
        return Err(r.error("no tightening ID".into()));
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------
// MID 0071 / 0076

fn write_alarm(w: &mut Writer, alarm: &Alarm, status: Option<bool>) {
    let code_width = if alarm.revision >= 2 { 5 } else { 4 };
    let mut pid = 1;
    if let Some(active) = status {
        w.pid(pid).num(i64::from(active), 1);
        pid += 1;
    }
    w.pid(pid).text(&alarm.code, code_width);
    w.pid(pid + 1).num(i64::from(alarm.controller_ready), 1);
    w.pid(pid + 2).num(i64::from(alarm.tool_ready), 1);
    w.pid(pid + 3).text(&alarm.time, 19);
}

fn read_alarm(r: &mut Reader<'_>, revision: u16, status: bool) -> Result<(bool, Alarm), ParseError> {
    let code_width = if revision >= 2 { 5 } else { 4 };
    let mut pid = 1;
    let mut active = true;
    if status {
        r.pid(pid)?;
        active = r.required_num(1, "alarm status")? == 1;
        pid += 1;
    }
    r.pid(pid)?;
    let code = r.text(code_width);
    r.pid(pid + 1)?;
    let controller_ready = r.num(1)? == Some(1);
    r.pid(pid + 2)?;
    let tool_ready = r.num(1)? == Some(1);
    r.pid(pid + 3)?;
    let time = r.text(19);
    Ok((active, Alarm { revision, code, controller_ready, tool_ready, time }))
}

// ---------------------------------------------------------------------------------------
// Field writer and reader

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn pid(&mut self, pid: u8) -> &mut Writer {
        self.num(i64::from(pid), 2)
    }

    /// Right-aligned, zero-padded; clamped to what the width can hold.
    fn num(&mut self, value: i64, width: usize) -> &mut Writer {
        let max = 10i64.saturating_pow(width as u32) - 1;
        let min = -(10i64.saturating_pow(width as u32 - 1) - 1);
        let value = value.clamp(min, max);
        self.0.extend_from_slice(format!("{value:0width$}").as_bytes());
        self
    }

    /// Left-aligned, space-padded, cut to the width; only 0x20..0x7F go on the wire.
    fn text(&mut self, value: &str, width: usize) -> &mut Writer {
        let mut bytes: Vec<u8> =
            value.chars().map(|c| if (' '..='\x7f').contains(&c) { c as u8 } else { b'?' }).take(width).collect();
        bytes.resize(width, b' ');
        self.0.extend_from_slice(&bytes);
        self
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Writer {
        self.0.extend_from_slice(bytes);
        self
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    mid: u16,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], mid: u16) -> Reader<'a> {
        Reader { data, pos: 0, mid }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn error(&self, reason: String) -> ParseError {
        ParseError::Layout { mid: self.mid, reason }
    }

    /// Up to `width` bytes: a short last field is accepted.
    fn take(&mut self, width: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (self.pos + width).min(self.data.len());
        self.pos += width;
        &self.data[start..end]
    }

    fn skip(&mut self, width: usize) {
        self.take(width);
    }

    fn pid(&mut self, expected: u8) -> Result<(), ParseError> {
        let at = self.pos + 21;
        let found = self.take(2);
        if found != format!("{expected:02}").as_bytes() {
            return Err(self.error(format!(
                "expected parameter {expected:02} at byte {at}, found {:?}",
                String::from_utf8_lossy(found)
            )));
        }
        Ok(())
    }

    /// Trimmed; all spaces (or nothing) is `None`; a leading `-` is accepted.
    fn num(&mut self, width: usize) -> Result<Option<i64>, ParseError> {
        let at = self.pos + 21;
        let raw = self.take(width);
        let text = String::from_utf8_lossy(raw);
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let (negative, digits) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(format!("not a number at byte {at}: {text:?}")));
        }
        let value: i64 = digits.parse().map_err(|_| self.error(format!("number out of range at byte {at}")))?;
        Ok(Some(if negative { -value } else { value }))
    }

    fn required_num(&mut self, width: usize, what: &str) -> Result<i64, ParseError> {
        self.num(width)?.ok_or_else(|| self.error(format!("{what} is missing")))
    }

    /// Trimmed text; bytes are Latin-1, never required to be UTF-8.
    fn text(&mut self, width: usize) -> String {
        self.take(width).iter().map(|b| *b as char).collect::<String>().trim().to_owned()
    }

    fn opt_text(&mut self, width: usize) -> Option<String> {
        Some(self.text(width)).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::south::wrench::codec;

    fn full_tightening(revision: u16) -> Tightening {
        Tightening {
            revision,
            tightening_id: 345_675,
            cell_id: Some(1),
            channel_id: Some(1),
            controller_name: Some("Airbag1".into()),
            vin: Some("KPOL3456JKL".into()),
            job_id: Some(1),
            pset: Some(5),
            batch_size: Some(16),
            batch_counter: Some(8),
            ok: false,
            batch_status: Some(BatchStatus::NotCompleted),
            torque_status: Some(LimitStatus::Low),
            angle_status: Some(LimitStatus::Ok),
            torque: 1200,
            torque_min: Some(1150),
            torque_max: Some(1350),
            torque_target: Some(1250),
            angle: 154,
            angle_min: Some(100),
            angle_max: Some(200),
            angle_target: Some(150),
            timestamp: "2001-06-02:09:54:09".into(),
            pset_changed_at: Some("2001-05-29:12:34:33".into()),
            strategy: Some(1),
            error_status: Some(0),
            tool_serial: Some("0017".into()),
            pset_name: Some("M8 flange".into()),
            torque_unit: Some(1),
            result_type: Some(1),
        }
    }

    /// What a revision carries of `full_tightening`: the rest decodes as `None`.
    fn carried_by(full: &Tightening, revision: u16) -> Tightening {
        let mut t = full.clone();
        t.revision = revision;
        if revision == 1 || revision == 999 {
            t.strategy = None;
            t.error_status = None;
            t.tool_serial = None;
        }
        if revision < 3 || revision == 999 {
            t.pset_name = None;
            t.torque_unit = None;
            t.result_type = None;
        }
        if revision == 999 {
            t.cell_id = None;
            t.channel_id = None;
            t.controller_name = None;
            t.torque_min = None;
            t.torque_max = None;
            t.torque_target = None;
            t.angle_min = None;
            t.angle_max = None;
            t.angle_target = None;
        }
        t
    }

    fn wire(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        codec::encode(&message.to_telegram(), &mut out).unwrap();
        out
    }

    fn round_trip(message: &Message) -> Message {
        let mut bytes = wire(message);
        let telegram = codec::decode(&mut bytes).unwrap().unwrap();
        Message::from_telegram(&telegram).unwrap()
    }

    #[test]
    fn result_lengths_match_the_specification() {
        for (revision, len) in [(1, 231), (2, 385), (3, 419), (4, 500), (5, 506), (6, 526), (7, 544), (999, 121)] {
            let bytes = wire(&Message::Result(full_tightening(revision)));
            // The length field excludes the NUL.
            assert_eq!(bytes.len() - 1, len, "revision {revision}");
            assert_eq!(&bytes[..4], format!("{len:04}").as_bytes());
        }
        let old = wire(&Message::OldResult(carried_old(&full_tightening(1))));
        assert_eq!(old.len() - 1, 118);
    }

    fn carried_old(full: &Tightening) -> Tightening {
        Tightening {
            revision: 1,
            tightening_id: full.tightening_id,
            vin: full.vin.clone(),
            pset: full.pset,
            batch_counter: full.batch_counter,
            ok: full.ok,
            torque_status: full.torque_status,
            angle_status: full.angle_status,
            torque: full.torque,
            angle: full.angle,
            timestamp: full.timestamp.clone(),
            batch_status: full.batch_status,
            ..Tightening::default()
        }
    }

    #[test]
    fn every_message_round_trips() {
        let mut messages = vec![
            Message::CommStart { revision: 1 },
            Message::CommStart { revision: 6 },
            Message::CommStop,
            Message::Error { mid: 18, code: ErrorCode(2) },
            Message::Accepted { mid: 18 },
            Message::PsetSubscribe,
            Message::PsetSelected { pset: 5, changed_at: "2026-11-23:10:00:00".into() },
            Message::PsetAck,
            Message::SelectPset { pset: 5 },
            Message::SetBatchSize { pset: 5, size: 12 },
            Message::SetBatchSize { pset: 5, size: 1200 },
            Message::ResetBatch { pset: 5 },
            Message::LockSubscribe,
            Message::LockStatus { locked: true },
            Message::LockAck,
            Message::DisableTool,
            Message::EnableTool,
            Message::VinDownload { vin: "SN-0042".into() },
            Message::VinSubscribe,
            Message::Vin { vin: "SN-0042".into() },
            Message::VinAck,
            Message::ResultSubscribe { revision: 7, no_ack: false },
            Message::ResultSubscribe { revision: 999, no_ack: true },
            Message::ResultAck,
            Message::OldResultRequest { tightening_id: 0 },
            Message::OldResult(carried_old(&full_tightening(1))),
            Message::AlarmSubscribe,
            Message::AlarmAck,
            Message::AlarmStatusAck,
            Message::SetTime { time: "2026-11-23:10:00:00".into() },
            Message::AbortJob,
            Message::LinkAck { mid: 61 },
            Message::LinkNack { mid: 61, code: 3 },
            Message::KeepAlive,
        ];
        for revision in [1, 2] {
            let alarm = Alarm {
                revision,
                code: if revision == 1 { "E404".into() } else { "E4041".into() },
                controller_ready: true,
                tool_ready: false,
                time: "2026-11-23:10:00:00".into(),
            };
            messages.push(Message::Alarm(alarm.clone()));
            messages.push(Message::AlarmStatus { active: true, alarm });
        }
        for revision in 1..=7 {
            let info = ControllerInfo {
                revision,
                cell_id: 1,
                channel_id: 1,
                controller_name: "Airbag1".into(),
                supplier_code: (revision >= 2).then(|| "ACT".into()),
                protocol_version: (revision >= 3).then(|| "2.16.0".into()),
                controller_software: (revision >= 3).then(|| "sim 1.0".into()),
                tool_software: (revision >= 3).then(|| "sim 1.0".into()),
                serial_number: (revision >= 4).then(|| "SIM0000001".into()),
                sequence_numbers: revision >= 6,
            };
            messages.push(Message::CommStartAck(info));
        }
        for &revision in RESULT_REVISIONS {
            messages.push(Message::Result(carried_by(&full_tightening(revision), revision)));
        }
        messages.push(Message::OldResult(carried_by(&full_tightening(2), 2)));
        for message in messages {
            assert_eq!(round_trip(&message), message);
        }
    }

    #[test]
    fn controller_info_from_the_spec_example() {
        let mut bytes = b"00570002            010001020103Airbag1                  \0".to_vec();
        let telegram = codec::decode(&mut bytes).unwrap().unwrap();
        let Message::CommStartAck(info) = Message::from_telegram(&telegram).unwrap() else { panic!() };
        assert_eq!((info.cell_id, info.channel_id, info.controller_name.as_str()), (1, 1, "Airbag1"));
        assert!(!info.sequence_numbers);
    }

    #[test]
    fn defensive_parsing() {
        // A tightening ID padded with spaces (as the spec's own example does), and cut
        // short, still parses.
        let mut telegram = Message::Result(full_tightening(1)).to_telegram();
        let len = telegram.data.len();
        telegram.data[len - 10..].copy_from_slice(b"345675    ");
        let Message::Result(t) = Message::from_telegram(&telegram).unwrap() else { panic!() };
        assert_eq!(t.tightening_id, 345_675);
        telegram.data.truncate(len - 4);
        let Message::Result(t) = Message::from_telegram(&telegram).unwrap() else { panic!() };
        assert_eq!(t.tightening_id, 345_675);

        // Unknown trailing parameters of a newer revision are ignored.
        let mut newer = Message::Result(full_tightening(7)).to_telegram();
        newer.header.revision = 8;
        newer.data.extend_from_slice(b"58000000590");
        let Message::Result(t) = Message::from_telegram(&newer).unwrap() else { panic!() };
        assert_eq!((t.revision, t.tightening_id), (8, 345_675));

        // Negative numbers carry a leading '-'.
        let mut negative = full_tightening(2);
        negative.angle = -12;
        assert_eq!(round_trip(&Message::Result(negative.clone())), Message::Result(carried_by(&negative, 2)));
    }

    #[test]
    fn layout_errors_name_the_parameter() {
        let mut telegram = Message::Result(full_tightening(2)).to_telegram();
        telegram.data[0..2].copy_from_slice(b"07");
        assert_eq!(
            Message::from_telegram(&telegram).unwrap_err().to_string(),
            "MID 0061: expected parameter 01 at byte 21, found \"07\""
        );
        let mut telegram = Message::Result(full_tightening(1)).to_telegram();
        telegram.data[140 - 20..146 - 20].copy_from_slice(b"12x4  ");
        assert_eq!(
            Message::from_telegram(&telegram).unwrap_err().to_string(),
            "MID 0061: not a number at byte 141: \"12x4  \""
        );
        let unknown = Telegram::new(7400, 1, "");
        assert_eq!(Message::from_telegram(&unknown).unwrap_err(), ParseError::UnknownMid(7400));
    }

    #[test]
    fn error_codes_have_their_meaning() {
        assert_eq!(ErrorCode(96).to_string(), "error 96 (client already connected)");
        assert_eq!(ErrorCode(2).to_string(), "error 02 (Pset ID not present)");
        assert!(ErrorCode(9).is_already_subscribed());
        assert!(ErrorCode(97).is_revision_unsupported());
    }
}
