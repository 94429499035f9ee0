//! The image store: files under `<state_dir>/images/<yyyy-mm-dd>/<id>.<ext>`.
//!
//! Writes are durable before they return (temp file, fsync, rename, fsync of the
//! directory), because the row that references an image is committed right after: a row
//! must never point at a missing or truncated file, whatever crashes when.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `root/relative` durably. `relative` uses `/` separators.
pub(crate) fn write_durably(root: &Path, relative: &str, bytes: &[u8]) -> io::Result<()> {
    let path = root.join(relative);
    let dir = path.parent().expect("image paths have a parent directory");
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        // The new directory's entry lives in its parent; make that durable too.
        sync_dir(dir.parent().unwrap_or(root))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes files no row references and temp files left by a crash mid-write.
/// Returns how many files it removed.
pub(crate) fn sweep_orphans(root: &Path, referenced: &HashSet<String>) -> io::Result<usize> {
    let mut removed = 0;
    if !root.exists() {
        return Ok(0);
    }
    for day in fs::read_dir(root)? {
        let day = day?;
        if !day.file_type()?.is_dir() {
            continue;
        }
        let mut empty = true;
        for file in fs::read_dir(day.path())? {
            let file = file?;
            let relative = format!("{}/{}", day.file_name().to_string_lossy(), file.file_name().to_string_lossy());
            if referenced.contains(&relative) {
                empty = false;
                continue;
            }
            fs::remove_file(file.path())?;
            removed += 1;
        }
        if empty {
            // Best effort: a day folder whose images were all deleted or orphaned.
            let _ = fs::remove_dir(day.path());
        }
    }
    Ok(removed)
}

pub(crate) fn remove(root: &Path, relative: &str) -> io::Result<()> {
    match fs::remove_file(root.join(relative)) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub(crate) fn full_path(root: &Path, relative: &str) -> PathBuf {
    root.join(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_sweep_keeps_referenced_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_durably(root, "2026-11-23/a.jpg", b"a").unwrap();
        write_durably(root, "2026-11-23/b.jpg", b"b").unwrap();
        write_durably(root, "2026-11-22/c.png", b"c").unwrap();
        fs::write(root.join("2026-11-23/d.tmp"), b"half").unwrap();
        let referenced: HashSet<String> = ["2026-11-23/a.jpg".to_owned()].into();
        assert_eq!(sweep_orphans(root, &referenced).unwrap(), 3);
        assert_eq!(fs::read(root.join("2026-11-23/a.jpg")).unwrap(), b"a");
        assert!(!root.join("2026-11-22").exists());
    }
}
