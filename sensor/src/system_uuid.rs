//! The host's SMBIOS system UUID, read once at start and sent in every
//! heartbeat, so the decider can check that the BMC it would fence (and
//! trust as a power witness) belongs to this machine.

use std::{io::Read, path::Path};

/// Where the kernel shows the SMBIOS system UUID (root-only on most hosts).
pub const DEFAULT_PATH: &str = "/sys/class/dmi/id/product_uuid";

/// Most bytes read from the file: a UUID line is 37; anything longer than
/// this is not one, and reading more would only cost memory.
const MAX_BYTES: u64 = 128;

/// Why the file gave no usable UUID.
#[derive(Debug, thiserror::Error)]
pub enum UuidError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {shown:?}, not a system UUID (8-4-4-4-12 hex, not all zeros or all Fs)")]
    Invalid { path: String, shown: String },
}

/// The UUID in `path`, lowercase hyphenated.
pub fn read(path: &Path) -> Result<String, UuidError> {
    let shown_path = || path.display().to_string();
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut buf))
        .map_err(|source| UuidError::Read {
            path: shown_path(),
            source,
        })?;
    let text = String::from_utf8_lossy(&buf);
    if buf.len() as u64 <= MAX_BYTES {
        if let Some(uuid) = vigil_proto::system_uuid::normalize(&text) {
            return Ok(uuid);
        }
    }
    Err(UuidError::Invalid {
        path: shown_path(),
        shown: text.trim().chars().take(40).collect(),
    })
}

/// The UUID in `path`, or empty with one warning saying what it costs:
/// a sensor without it still works, only the BMC witness stays off.
pub fn read_or_warn(path: &Path) -> String {
    read(path).unwrap_or_else(|e| {
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::from(e)),
            "no system UUID: the decider cannot verify this node's BMC identity; its BMC power \
             witness stays off (point --system-uuid-file at a file holding the host's SMBIOS UUID)"
        );
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, content).expect("write");
        f
    }

    #[test]
    fn reads_and_normalizes_the_kernel_format() {
        let f = file(b"4C4C4544-0042-3510-8052-B4C04F4B4E32\n");
        assert_eq!(
            read(f.path()).expect("valid"),
            "4c4c4544-0042-3510-8052-b4c04f4b4e32"
        );
    }

    #[test]
    fn placeholder_garbage_oversize_and_missing_are_refused() {
        let zeros = file(b"00000000-0000-0000-0000-000000000000\n");
        assert!(matches!(read(zeros.path()), Err(UuidError::Invalid { .. })));
        let garbage = file(b"Not Settable\n");
        let err = read(garbage.path()).expect_err("not a uuid");
        assert!(err.to_string().contains("Not Settable"), "{err}");
        let mut big = b"4c4c4544-0042-3510-8052-b4c04f4b4e32".to_vec();
        big.resize(4096, b' ');
        let big = file(&big);
        assert!(matches!(read(big.path()), Err(UuidError::Invalid { .. })));
        let missing = Path::new("/nonexistent/vigil/product_uuid");
        let err = read(missing).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/vigil/product_uuid"));
        assert_eq!(read_or_warn(missing), "");
    }
}
