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

/// `stationd wrench-sim` answers a real MID 0001 and takes commands on stdin.
#[test]
fn wrench_sim_plays_a_controller() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_stationd"))
        .args(["wrench-sim", "--bind", "127.0.0.1:0", "--max-comm-revision", "3"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stationd wrench-sim");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "wrench-sim ended early");
        // The log may be coloured: drop escape sequences before looking for the field.
        let plain: String =
            line.split('\x1b').map(|part| part.split_once('m').map_or(part, |(_, rest)| rest)).collect();
        if plain.contains("listening") {
            let rest = plain.split("addr=").nth(1).unwrap_or_else(|| panic!("no addr in {plain:?}"));
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    // Revision 6 is above this controller's maximum: error 97; revision 3 is answered.
    stream.write_all(b"00200001006         \0").unwrap();
    let mut reply = [0u8; 27];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"002600040010        000197\0");
    stream.write_all(b"00200001003         \0").unwrap();
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(&header[4..11], b"0002003", "MID 0002 revision 3");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "status").unwrap();
    drop(stdin); // end of commands; the simulator keeps serving until a signal
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn user_add_and_reset_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stationd.toml");
    let text = stationd::config::EMBEDDED_DEFAULTS
        .replace("state_dir = \"./var\"", &format!("state_dir = {:?}", dir.path().join("state").display().to_string()));
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();

    let (code, out) = stationd(&["user", "add", "erik", "--role", "engineer", "--config", config]);
    assert_eq!(code, 0, "{out}");
    let password = out.trim().strip_prefix("user erik: password ").expect("the made password is printed");
    assert_eq!(password.len(), 20);
    let (code, out) = stationd(&["user", "add", "Erik", "--role", "operator", "--config", config]);
    assert_eq!((code, out.trim()), (1, "stationd user: user \"Erik\" exists"));
    let (code, out) = stationd(&["user", "add", "root", "--role", "superuser", "--config", config]);
    assert_eq!((code, out.trim()), (1, "stationd user: role \"superuser\" is not one of admin, engineer, operator"));

    let (code, out) = stationd(&["user", "reset-password", "erik", "--config", config]);
    assert_eq!(code, 0, "{out}");
    assert_ne!(out.trim().strip_prefix("user erik: password "), Some(password), "a new password");
    let (code, out) = stationd(&["user", "reset-password", "nobody", "--config", config]);
    assert_eq!((code, out.trim()), (1, "stationd user: no user \"nobody\""));

    let state = dir.path().join("state");
    let db = stationd::storage::Db::open_for_users(&state).unwrap();
    let erik = db.user_by_name("erik").unwrap().unwrap();
    assert_eq!((erik.role, erik.token_generation), (stationd::auth::Role::Engineer, 1));
    let log: Vec<String> = db.audit_log(10, None).unwrap().into_iter().map(|e| e.detail).collect();
    assert_eq!(log, ["command line: user erik", "command line: user erik (engineer)"]);
}
