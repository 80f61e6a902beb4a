//! Files written whole: the node's small files (the development
//! certificate, key and secret) go to a temporary file that is synced and
//! renamed over the old one, so a full disk or a crash leaves either the
//! old file or the new one, never one cut short. The journals and the
//! archive, which are appended to, keep whole records their own way
//! (`gifts::ledger::journal`, `room::archive`).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a file readable by its owner only, whole or not at all.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    replace(path, data, true).with_context(|| format!("writing {}", path.display()))
}

/// Replaces the file at `path` with `data`, whole or not at all: written to
/// `<path>.tmp`, synced, renamed over `path`, and the rename synced. On an
/// error the temporary file is removed and `path` is as it was. `private`:
/// readable by the owner only.
pub(crate) fn replace(path: &Path, data: &[u8], private: bool) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Syncs the directory holding `path`, so a rename in it is durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}
