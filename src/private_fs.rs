//! Everything under `storage.data_dir` (spooled events with card and patient data, the dedup index) is readable
//! by the gateway's own user only, whatever the umask: directories are created `0700` (existing ones are
//! tightened to it) and files `0600`.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Mode of every directory the gateway creates under `data_dir`.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file it creates there.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents `0700`, and tightens an existing `dir` to `0700`. A directory the
/// gateway may use but not change (a volume root owned by another user) is logged, not refused: the files in
/// it are `0600` all the same.
///
/// # Errors
/// The directory cannot be created or read.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != DIR_MODE {
            if let Err(error) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
                tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), %error, "cannot make the directory private");
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Open options that create a file `0600` (on Unix).
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Creates `path` empty (`0600`) when it does not exist, or tightens it to `0600` when it does.
///
/// # Errors
/// The file cannot be created, read or changed.
pub fn ensure_file(path: &Path) -> io::Result<()> {
    if !path.exists() {
        file_options().write(true).create(true).truncate(false).open(path)?;
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path)?.permissions().mode() & 0o777 != FILE_MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_and_existing_dirs_and_files_become_private() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        create_dir(&fresh).unwrap();
        assert_eq!((mode(&root.path().join("a")), mode(&fresh)), (DIR_MODE, DIR_MODE));
        let old = root.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&old).unwrap();
        assert_eq!(mode(&old), DIR_MODE, "an existing directory is tightened");
        let f = old.join("f");
        ensure_file(&f).unwrap();
        assert_eq!(mode(&f), FILE_MODE);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure_file(&f).unwrap();
        assert_eq!(mode(&f), FILE_MODE, "an existing file is tightened");
        let g = old.join("g");
        file_options().write(true).create_new(true).open(&g).unwrap();
        assert_eq!(mode(&g), FILE_MODE);
    }
}
