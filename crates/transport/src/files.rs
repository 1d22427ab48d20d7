//! Writing result images to disk atomically: a temporary file in the target folder, synced, then
//! renamed over the final name, so no half-written file ever carries it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::Image;
use crate::error::{Error, Result};

/// Writes `images` into `dir` (created if missing) as `{stem}-{n}.{ext}`, each atomically, and
/// returns their paths in order.
pub(crate) fn save_all(images: &[Image], dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::write(format!("could not create the folder {}", dir.display()), e))?;
    images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            let path = dir.join(file_name(stem, index, image.extension));
            write_atomically(&path, &image.bytes)
                .map_err(|e| Error::write(format!("could not write {}", path.display()), e))?;
            Ok(path)
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    publish(path, |file| file.write_all(bytes))
}

/// Copies the file `from` to `path` as [`write_atomically`] writes: whole or not at all.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) fn copy_atomically(from: &Path, path: &Path) -> std::io::Result<()> {
    publish(path, |file| {
        std::io::copy(&mut std::fs::File::open(from)?, file).map(drop)
    })
}

/// Puts at `path` what `fill` writes into a temporary file of the same folder: given the
/// published mode, synced, renamed over the name, the folder synced.
fn publish(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".gptimage-")
        .suffix(".part")
        .tempfile_in(dir)?;
    fill(temporary.as_file_mut())?;
    publish_mode(temporary.as_file())?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    sync_folder(dir)
}

/// Runs file work on a thread made for blocking, off the async runtime's; `thread` names it
/// should it fail ("the writing thread").
#[cfg(feature = "async")]
pub(crate) async fn on_a_thread<T: Send + 'static>(
    thread: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::download(format!("{thread} failed"), Some(Box::new(e))))?
}

/// Makes a rename in `dir` durable: until the folder itself is synced, a power cut can lose the
/// new name even though the file's bytes reached the disk. (Windows has no such step.)
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
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

/// A file name for image `index` (from 0) of a task: `{stem}-{index+1}.{ext}`, where the stem
/// keeps only letters, digits, `-` and `_` (a task id from the server never names a path).
pub(crate) fn file_name(stem: &str, index: usize, extension: &str) -> String {
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let safe = if safe.is_empty() {
        "image".to_owned()
    } else {
        safe
    };
    format!("{safe}-{}.{extension}", index + 1)
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
    fn images_are_named_safely() {
        assert_eq!(file_name("n36abc", 0, "png"), "n36abc-1.png");
        assert_eq!(
            file_name("../../etc/passwd", 1, "jpg"),
            "______etc_passwd-2.jpg"
        );
        assert_eq!(file_name("", 0, "gif"), "image-1.gif");
    }
}
