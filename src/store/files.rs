//! Creating what lives in the data directory: private to the user warren runs as,
//! whatever the umask. It holds salted password hashes (`meta.log`) and message
//! bodies; a directory other local users can read gives both away.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Directories: owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files: owner read and write.
pub const FILE_MODE: u32 = 0o600;

/// `create_dir_all`, every directory it creates mode 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Options for a data file: created mode 0600 (an existing file keeps its mode).
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// `File::create`, mode 0600.
fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// `fs::write` then `sync_all`, mode 0600: the bytes are on disk when it returns.
pub fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = create(path)?;
    io::Write::write_all(&mut f, data)?;
    f.sync_all()
}

/// Keep a copy of `bytes` from `file` (what recovery is about to cut off, or a whole
/// damaged file) in the data directory's `quarantine/` folder for recovery by hand, and
/// return where. Recovery never drops bytes it cannot account for without one.
pub fn quarantine(
    data_dir: &Path,
    file: &Path,
    what: &str,
    bytes: &[u8],
) -> io::Result<std::path::PathBuf> {
    let dir = data_dir.join("quarantine");
    create_dir(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let path = dir.join(format!("{stamp}-{name}-{what}"));
    write_synced(&path, bytes)?;
    tracing::warn!(
        file = %file.display(),
        copy = %path.display(),
        bytes = bytes.len(),
        "unreadable data set aside in quarantine/ for recovery by hand"
    );
    Ok(path)
}

/// A warning line if other users may read or enter `dir` (a data directory made by an
/// older warren, or by hand), with the command that closes it.
pub fn exposure(dir: &Path) -> Option<String> {
    let mode = fs::metadata(dir).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0).then(|| {
        format!(
            "data dir {} is mode {mode:o}: other local users can read password hashes and messages; \
             restrict it with: chmod -R go-rwx {}",
            dir.display(),
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("warren-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // SAFETY: umask only changes the process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        create_dir(&dir.join("a/b")).unwrap();
        write_synced(&dir.join("a/b/f"), b"x").unwrap();
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("a")), DIR_MODE);
        assert_eq!(mode(&dir.join("a/b")), DIR_MODE);
        assert_eq!(mode(&dir.join("a/b/f")), FILE_MODE);
        assert!(exposure(&dir.join("a")).is_none());
        fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(exposure(&dir.join("a"))
            .unwrap()
            .contains("chmod -R go-rwx"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
