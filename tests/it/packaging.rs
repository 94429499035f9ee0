//! The systemd unit and the package metadata agree with the daemon: exit codes, stop
//! timeout against the drain deadline, notify and watchdog, device access, and a hardening
//! exposure of at most 2.5 by `systemd-analyze security --offline=yes` where it exists.

use std::collections::BTreeMap;
use std::process::Command;

fn unit() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string("systemd/stationd.service").unwrap();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with('[')) {
        if let Some((key, value)) = line.split_once('=') {
            keys.entry(key.to_owned()).or_default().push(value.to_owned());
        }
    }
    keys
}

fn one<'a>(keys: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let values = keys.get(key).unwrap_or_else(|| panic!("the unit sets {key}"));
    values.last().unwrap()
}

#[test]
fn unit_matches_the_daemon() {
    let keys = unit();
    assert_eq!(one(&keys, "Type"), "notify");
    assert_eq!(one(&keys, "Restart"), "on-failure");
    assert_eq!(one(&keys, "RestartPreventExitStatus"), "78", "EXIT_CONFIG in main.rs");
    assert!(one(&keys, "ExecStartPre").contains("stationd check-config /etc/stationd/stationd.toml"));
    assert!(one(&keys, "ExecStart").contains("--config /etc/stationd/stationd.toml"));
    assert!(one(&keys, "WatchdogSec").ends_with('s'));

    // The stop timeout must cover the largest drain deadline the config accepts by default
    // plus storage's grace, or systemd kills a daemon that is still flushing.
    let defaults = stationd::config::Config::embedded_defaults();
    let stop: u64 = one(&keys, "TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > defaults.shutdown_deadline.as_secs() + 1, "TimeoutStopSec={stop}");

    // Cameras and GPIO chips stay reachable under DevicePolicy=closed.
    let devices = &keys["DeviceAllow"];
    assert!(devices.iter().any(|d| d.starts_with("char-video4linux")), "{devices:?}");
    assert!(devices.iter().any(|d| d.starts_with("char-gpiochip")), "{devices:?}");
    assert_eq!(one(&keys, "SupplementaryGroups"), "gpio video");
    // Ports above 1024 only: no capability is needed to bind.
    assert_eq!(one(&keys, "CapabilityBoundingSet"), "");

    // The package installs the unit and keeps the config as a conffile.
    let cargo = std::fs::read_to_string("Cargo.toml").unwrap();
    assert!(cargo.contains("conf-files = [\"/etc/stationd/stationd.toml\"]"));
    assert!(cargo.contains("unit-scripts = \"systemd/\""));
}

#[test]
fn unit_hardening_exposure_is_at_most_2_5() {
    let output = match Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "systemd/stationd.service"])
        .output()
    {
        Ok(output) => output,
        Err(err) => {
            // Not every build host has systemd; CI's does (see .ci/run).
            eprintln!("systemd-analyze is not available ({err}): exposure not checked here");
            return;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let level: f64 = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(level <= 2.5, "{line}");
}
