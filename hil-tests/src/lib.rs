//! The bench harness: a [`Rig`] is the daemon under test plus what is wired to it.
//!
//! `STATIOND_UNDER_TEST=sim` starts `STATIOND_BIN` (default: `stationd` on PATH) on a
//! temporary state dir with sim backends and the repository's bundled model; any other
//! value names a rig file `rigs/<name>.toml` describing a bench whose daemon is already
//! installed and running (systemd). Scenarios assert only through public interfaces.
//!
//! The suite logs in like any client: in sim mode as a user it adds with `stationd user
//! add` before starting the daemon; on a bench as `STATIOND_USER` / `STATIOND_PASSWORD`
//! (an admin or engineer of that station; never written in a rig file).
//!
//! The HTTP client is a few lines over `TcpStream` on purpose: the suite must build on a
//! bench PC quickly and has no need for TLS or pooling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Deserialize;

/// A bench description (rigs/*.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigFile {
    /// Where the installed daemon's REST API answers, e.g. "127.0.0.1:8080".
    pub api: String,
    /// Station whose camera looks at the reference part.
    pub station_id: String,
    /// Decision the reference part under the camera must get.
    pub reference_part_decision: String,
    /// Id of the configured wrench on the bench (its controller must be reachable).
    pub wrench: Option<String>,
    /// A Pset that exists on that controller.
    pub wrench_pset: Option<u32>,
    /// GPIO loopback wiring, if the bench has it.
    pub gpio: Option<GpioLoopback>,
}

/// The bench's own GPIO lines wired to the daemon's: `trigger` drives the daemon's trigger
/// input of `station_id`; each of `lamps` reads one of the daemon's outputs. The suite
/// requests these lines itself (they must be other lines than the daemon's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioLoopback {
    /// The daemon's trigger input name and the bench line wired to it.
    pub trigger_input: String,
    pub trigger: BenchLine,
    /// Decision ("pass", "fail", "uncertain") to the daemon's lamp output and the bench
    /// line that reads it.
    pub lamps: std::collections::BTreeMap<String, LampWire>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchLine {
    pub chip: String,
    pub offset: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LampWire {
    /// The daemon's output name.
    pub output: String,
    pub chip: String,
    pub offset: u32,
}

pub struct Rig {
    pub api: String,
    pub station_id: String,
    pub reference_part_decision: String,
    pub wrench: Option<String>,
    pub wrench_pset: u32,
    /// `None` for a bench without GPIO loopback wiring. In sim mode the daemon's simulated
    /// chip stands in: inputs are driven through its inject endpoint and outputs read
    /// from `GET /api/v1/system/gpio`.
    pub gpio: Option<GpioLoopback>,
    /// The access token the requests carry.
    token: String,
    sim: bool,
    child: Option<Child>,
    state_dir: Option<PathBuf>,
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// The admin the sim-mode daemon is given before it starts.
const SIM_USER: (&str, &str) = ("hil", "bench-suite-pass-42");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("hil-tests sits in the repository").to_owned()
}

impl Rig {
    pub fn from_env() -> Rig {
        let under_test = std::env::var("STATIOND_UNDER_TEST").unwrap_or_else(|_| "sim".to_owned());
        let mut rig = if under_test == "sim" { Rig::sim() } else { Rig::bench(&under_test) };
        let (user, password) = if rig.sim {
            (SIM_USER.0.to_owned(), SIM_USER.1.to_owned())
        } else {
            let var = |name: &str| {
                std::env::var(name).unwrap_or_else(|_| panic!("set {name} to log in to the bench's daemon"))
            };
            (var("STATIOND_USER"), var("STATIOND_PASSWORD"))
        };
        let body = serde_json::json!({"username": user, "password": password}).to_string();
        let answer = rig.request("POST", "/api/v1/auth/login", Some("application/json"), body.as_bytes());
        assert_eq!(answer.status, 200, "login as {user}: {}", String::from_utf8_lossy(&answer.body));
        rig.token = answer.json()["access_token"].as_str().expect("an access token").to_owned();
        rig
    }

    fn bench(name: &str) -> Rig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rigs").join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file: RigFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Rig {
            api: file.api,
            station_id: file.station_id,
            reference_part_decision: file.reference_part_decision,
            wrench: file.wrench,
            wrench_pset: file.wrench_pset.unwrap_or(1),
            gpio: file.gpio,
            token: String::new(),
            sim: false,
            child: None,
            state_dir: None,
        }
    }

    fn sim() -> Rig {
        let root = repo_root();
        let bin = std::env::var("STATIOND_BIN").unwrap_or_else(|_| "stationd".to_owned());
        let unique = format!("stationd-hil-{}-{:?}", std::process::id(), std::thread::current().id());
        let state_dir = std::env::temp_dir().join(unique.replace(['(', ')'], ""));
        std::fs::create_dir_all(&state_dir).unwrap();
        let config = format!(
            "state_dir = {state:?}\n[api]\nbind = \"127.0.0.1:0\"\n[inference]\nmodel_dir = {model:?}\n\
             [cameras.cam0]\nbackend = \"sim\"\nfolder = {folder:?}\n[stations.default]\ncamera = \"cam0\"\n\
             pass_outputs = [\"green\"]\nfail_outputs = [\"red\"]\nuncertain_outputs = [\"amber\"]\n\
             [wrenches.wrench-sim]\nbackend = \"sim\"\nstation = \"default\"\n\
             [gpio]\nbackend = \"sim\"\n[gpio.inputs.trigger]\nline = 0\ntrigger = \"default\"\n\
             [gpio.outputs.green]\nline = 10\n[gpio.outputs.amber]\nline = 11\n[gpio.outputs.red]\nline = 12\n",
            state = state_dir.join("state").display().to_string(),
            model = root.join("models/parts-classifier").display().to_string(),
            folder = root.join("examples/parts").display().to_string(),
        );
        let config_path = state_dir.join("stationd.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut add = Command::new(&bin)
            .args(["user", "add", SIM_USER.0, "--role", "admin", "--password-stdin", "--config"])
            .arg(&config_path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        add.stdin.take().unwrap().write_all(format!("{}\n", SIM_USER.1).as_bytes()).unwrap();
        assert!(add.wait().unwrap().success(), "stationd user add");
        let mut child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut api = None;
        let stderr = BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(at) = line.find("addr=") {
                api = Some(line[at + 5..].split_whitespace().next().unwrap().to_owned());
            }
            if line.contains("stationd ready") {
                break;
            }
        }
        // The sim camera's first frame is a good part (examples/parts/00_ok.jpg).
        Rig {
            api: api.expect("the daemon logged its API address before getting ready"),
            station_id: "default".to_owned(),
            reference_part_decision: "pass".to_owned(),
            wrench: Some("wrench-sim".to_owned()),
            wrench_pset: 1,
            gpio: Some(GpioLoopback {
                trigger_input: "trigger".to_owned(),
                trigger: BenchLine { chip: "sim".to_owned(), offset: 0 },
                lamps: [("pass", "green"), ("fail", "red"), ("uncertain", "amber")]
                    .into_iter()
                    .map(|(d, o)| (d.to_owned(), LampWire { output: o.to_owned(), chip: "sim".to_owned(), offset: 0 }))
                    .collect(),
            }),
            token: String::new(),
            sim: true,
            child: Some(child),
            state_dir: Some(state_dir),
        }
    }

    pub fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(&self.api).unwrap_or_else(|e| panic!("connect {}: {e}", self.api));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.api,
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if !self.token.is_empty() {
            head.push_str(&format!("Authorization: Bearer {}\r\n", self.token));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
        assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "use JSON endpoints only");
        Answer { status, body: raw[split + 4..].to_vec() }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, None, &[])
    }

    pub fn upload(&self, file: &[u8], content_type: &str) -> Answer {
        let boundary = "hil-boundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"station_id\"\r\n\r\n{}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"part\"\r\nContent-Type: {content_type}\r\n\r\n",
            self.station_id
        )
        .into_bytes();
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.request("POST", "/api/v1/inspect", Some(&format!("multipart/form-data; boundary={boundary}")), &body)
    }

    /// Presses and releases the trigger: on a bench by driving the wired line for 100 ms,
    /// in sim mode through the daemon's inject endpoint.
    pub fn press_trigger(&self) {
        let gpio = self.gpio.as_ref().expect("this rig has GPIO loopback");
        if self.sim {
            let path = format!("/api/v1/system/gpio/{}/inject", gpio.trigger_input);
            let answer =
                self.request("POST", &path, Some("application/json"), br#"{"level": "pulse", "hold_ms": 100}"#);
            assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        } else {
            let line = &gpio.trigger;
            let request = gpiocdev::Request::builder()
                .on_chip(&line.chip)
                .with_consumer("stationd-hil")
                .with_line(line.offset)
                .as_output(gpiocdev::line::Value::Inactive)
                .request()
                .unwrap_or_else(|e| panic!("bench trigger line {}:{}: {e}", line.chip, line.offset));
            request.set_lone_value(gpiocdev::line::Value::Active).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            request.set_lone_value(gpiocdev::line::Value::Inactive).unwrap();
        }
    }

    /// Whether the lamp for `decision` is lit: read on the bench's wired line, or in sim
    /// mode from the daemon's own view of its output.
    pub fn lamp(&self, decision: &str) -> bool {
        let gpio = self.gpio.as_ref().expect("this rig has GPIO loopback");
        let wire = gpio.lamps.get(decision).unwrap_or_else(|| panic!("no lamp wired for {decision}"));
        if self.sim {
            let lines = self.get("/api/v1/system/gpio").json();
            let line = lines["msg"].as_array().unwrap().iter().find(|l| l["name"] == wire.output.as_str()).cloned();
            line.and_then(|l| l["active"].as_bool()).unwrap_or_else(|| panic!("no output {}", wire.output))
        } else {
            let request = gpiocdev::Request::builder()
                .on_chip(&wire.chip)
                .with_consumer("stationd-hil")
                .with_line(wire.offset)
                .as_input()
                .request()
                .unwrap_or_else(|e| panic!("bench lamp line {}:{}: {e}", wire.chip, wire.offset));
            request.lone_value().unwrap() == gpiocdev::line::Value::Active
        }
    }

    pub fn example(name: &str) -> Vec<u8> {
        std::fs::read(repo_root().join("examples/parts").join(name)).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        if let Some(dir) = self.state_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
