//! The bench harness: a [`Rig`] is the daemon under test plus what is wired to it.
//!
//! `STATIOND_UNDER_TEST=sim` starts `STATIOND_BIN` (default: `stationd` on PATH) on a
//! temporary state dir with sim backends and the repository's bundled model; any other
//! value names a rig file `rigs/<name>.toml` describing a bench whose daemon is already
//! installed and running (systemd). Scenarios assert only through public interfaces.
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
}

pub struct Rig {
    pub api: String,
    pub station_id: String,
    pub reference_part_decision: String,
    pub wrench: Option<String>,
    pub wrench_pset: u32,
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("hil-tests sits in the repository").to_owned()
}

impl Rig {
    pub fn from_env() -> Rig {
        let under_test = std::env::var("STATIOND_UNDER_TEST").unwrap_or_else(|_| "sim".to_owned());
        if under_test == "sim" { Rig::sim() } else { Rig::bench(&under_test) }
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
             [wrenches.wrench-sim]\nbackend = \"sim\"\nstation = \"default\"\n",
            state = state_dir.join("state").display().to_string(),
            model = root.join("models/parts-classifier").display().to_string(),
            folder = root.join("examples/parts").display().to_string(),
        );
        let config_path = state_dir.join("stationd.toml");
        std::fs::write(&config_path, config).unwrap();
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
