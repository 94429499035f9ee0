//! Tidy checks (rust-analyzer style): the architecture invariants in ARCHITECTURE.md,
//! enforced by grepping the source, so `cargo test` is the whole local gate.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Source without `#[cfg(test)] mod tests` blocks (they sit at the end of files here).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn offenders(files: &[PathBuf], needles: &[&str], exempt: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !exempt(f)) {
        let code = code_of(file);
        for needle in needles {
            if code.contains(needle) {
                found.push(format!("{}: {needle}", file.display()));
            }
        }
    }
    found
}

#[test]
fn core_is_pure() {
    let files = rust_files(Path::new("src/core"));
    assert!(!files.is_empty());
    let forbidden = [
        "tokio::net",
        "tokio::fs",
        "tokio::time",
        "std::fs",
        "std::net",
        "rusqlite",
        "Instant::now",
        "SystemTime::now",
        "Utc::now",
        "Local::now",
        "std::thread",
        "tracing::",
    ];
    let found = offenders(&files, &forbidden, |_| false);
    assert!(found.is_empty(), "I/O or clocks in the core:\n{}", found.join("\n"));
}

#[test]
fn only_storage_has_sql() {
    let found = offenders(&rust_files(Path::new("src")), &["rusqlite", "SELECT ", "INSERT INTO"], |f| {
        f.starts_with("src/storage")
    });
    assert!(found.is_empty(), "SQL outside src/storage:\n{}", found.join("\n"));
}

#[test]
fn only_the_supervisor_spawns() {
    let needles = ["tokio::spawn", "task::spawn(", "thread::spawn", "thread::Builder"];
    let found = offenders(&rust_files(Path::new("src")), &needles, |f| f.ends_with("supervisor.rs"));
    assert!(found.is_empty(), "long-lived tasks spawned outside supervisor.rs:\n{}", found.join("\n"));
}

#[test]
fn only_app_names_concrete_backends() {
    let found = offenders(&rust_files(Path::new("src")), &["SimCamera", "V4l2Camera", "SimGpio", "CdevGpio"], |f| {
        f.ends_with("app.rs") || f.starts_with("src/south/camera") || f.starts_with("src/south/gpio")
    });
    assert!(found.is_empty(), "concrete backends named outside app.rs:\n{}", found.join("\n"));
}

#[test]
fn domain_types_are_not_serialize() {
    let domain = ["src/core", "src/bus.rs", "src/storage", "src/cycle.rs"];
    let files: Vec<PathBuf> = domain
        .iter()
        .flat_map(|d| {
            let p = Path::new(d);
            if p.is_dir() { rust_files(p) } else { vec![p.to_owned()] }
        })
        .collect();
    let found = offenders(&files, &["Serialize,", "Serialize)", "impl Serialize", "serde::Serialize"], |_| false);
    assert!(
        found.is_empty(),
        "domain types must not be Serialize (DTOs live next to their protocol):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_has_docs_and_no_leftovers() {
    let mut problems = Vec::new();
    for file in rust_files(Path::new("src")).iter().chain(rust_files(Path::new("tests")).iter()) {
        let text = std::fs::read_to_string(file).unwrap();
        if !text.starts_with("//!") {
            problems.push(format!("{}: does not start with a //! module comment", file.display()));
        }
        for leftover in ["todo!(", "dbg!(", "unimplemented!("] {
            if text.contains(leftover) && !file.ends_with("tidy.rs") {
                problems.push(format!("{}: {leftover}", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
