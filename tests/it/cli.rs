//! The binary's command line: exit codes systemd acts on, and errors that name the key.

use std::process::Command;

fn stationd(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stationd")).args(args).output().expect("run stationd");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().expect("exited"), text)
}

#[test]
fn version_and_help() {
    let (code, out) = stationd(&["--version"]);
    assert_eq!((code, out.trim()), (0, concat!("stationd ", env!("CARGO_PKG_VERSION"))));
    let (code, out) = stationd(&["--help"]);
    assert!(code == 0 && out.contains("check-config") && out.contains("run"), "{out}");
}

#[test]
fn check_config_exit_codes() {
    // The laptop config is valid here; the reference config names files of an installed
    // system, which this checkout does not have: exit 78 naming the key.
    assert_eq!(stationd(&["check-config", "etc/stationd.dev.toml"]).0, 0);
    let (code, out) = stationd(&["check-config", "etc/stationd.toml"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("`inference.model_dir`"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    let text = std::fs::read_to_string("etc/stationd.dev.toml").unwrap().replace("threads = 1", "thread = 1");
    std::fs::write(&typo, text).unwrap();
    let (code, out) = stationd(&["check-config", typo.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(out.contains("`inference.thread`: unknown field `thread`"), "{out}");

    let (code, out) = stationd(&["run", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 78, "run refuses a bad config with the same code: {out}");
    let (code, _) = stationd(&["check-config", "/nonexistent/stationd.toml"]);
    assert_eq!(code, 78);
}

#[test]
fn print_default_config_round_trips() {
    let (code, out) = stationd(&["print-default-config"]);
    assert_eq!(code, 0);
    stationd::config::Config::from_toml_str(&out).expect("printed defaults parse");
}
