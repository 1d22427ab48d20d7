//! Writing result images to disk atomically: a temporary file in the target folder, synced, then
//! renamed over the final name, so no half-written file ever carries it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::{Image, file_name};
use crate::error::{Error, Result};

/// Writes `images` into `dir` (created if missing) as `{stem}-{n}.{ext}`, each atomically, and
/// returns their paths in order.
pub(crate) fn save_all(images: &[Image], dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::download(
            format!("could not create the folder {}", dir.display()),
            Some(Box::new(e)),
        )
    })?;
    images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            let path = dir.join(file_name(stem, index, image.extension));
            write_atomically(&path, &image.bytes).map_err(|e| {
                Error::download(
                    format!("could not write {}", path.display()),
                    Some(Box::new(e)),
                )
            })?;
            Ok(path)
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".gptimage-")
        .suffix(".part")
        .tempfile_in(dir)?;
    temporary.write_all(bytes)?;
    publish_mode(temporary.as_file())?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Gives a file the usual mode of a saved document (`rw-r--r--`); temporary files start private.
pub(crate) fn publish_mode(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// A number in `[0, 1)` for retry jitter, from the standard library's per-process random keys.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (RandomState::new().hash_one(n) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.png"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "a saved image is readable like any document");
        }
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let values: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.windows(2).any(|w| w[0] != w[1]));
    }
}
