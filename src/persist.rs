//! Durable small files (the phase state, the mirror-failure journal).

use std::io::Write;
use std::path::Path;

/// Writes `body` to a temp file beside `path`, fsyncs it, renames it over
/// `path` and fsyncs the directory: a crash leaves the old file or the new
/// one, never a mix.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
