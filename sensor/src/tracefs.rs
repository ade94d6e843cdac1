//! tracefs: where it is mounted, and the field layout of a tracepoint's
//! record from its `format` file.
//!
//! Classic tracepoint records are ABI-ish but have changed between kernels
//! (e.g. `sched_process_exit` gained `group_dead` in 6.x), so offsets are
//! read at start rather than compiled in.

use std::path::{Path, PathBuf};

/// Why tracefs or a format file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed; mount it: `mount -t tracefs nodev /sys/kernel/tracing`")]
    NotMounted {
        #[source]
        source: std::io::Error,
    },
    /// The format file could not be read (no such tracepoint?).
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The format file has no such field.
    #[error("tracepoint {event} has no field {field}")]
    NoField { event: String, field: String },
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint record.
#[derive(Debug, Clone, Default)]
pub struct Format {
    pub event: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of `events/<cat>/<name>/format`.
    pub fn parse(event: &str, text: &str) -> Format {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let decl = line.strip_prefix("field:")?.split(';').next()?;
                let mut offset = None;
                let mut size = None;
                for part in line.split(';') {
                    let part = part.trim();
                    if let Some(v) = part.strip_prefix("offset:") {
                        offset = v.parse().ok();
                    } else if let Some(v) = part.strip_prefix("size:") {
                        size = v.parse().ok();
                    }
                }
                // "char prev_comm[16]" → "prev_comm"; "__data_loc char[] comm" → "comm".
                let last = decl.split_whitespace().last()?;
                let name = last.split('[').next()?.to_string();
                Some(Field {
                    name,
                    offset: offset?,
                    size: size?,
                })
            })
            .collect();
        Format {
            event: event.to_string(),
            fields,
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field that must exist.
    pub fn offset(&self, name: &str) -> Result<u32, TracefsError> {
        self.field(name)
            .map(|f| f.offset)
            .ok_or_else(|| TracefsError::NoField {
                event: self.event.clone(),
                field: name.to_string(),
            })
    }
}

/// The tracefs mount point, mounting tracefs at `/sys/kernel/tracing` when
/// neither usual place has it (minimal hosts do not mount it; aya's
/// tracepoint attach needs it too).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    for candidate in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted {
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// Reads and parses `events/<category>/<name>/format` under `root`.
pub fn read_format(root: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(Format::parse(&format!("{category}:{name}"), &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_6_18: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s pid=%d prio=%d group_dead=%s\", REC->comm, REC->pid
";

    const HANG_6_18: &str = "format:
\tfield:__data_loc char[] comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
";

    #[test]
    fn parses_exit_format_of_6_18() {
        let f = Format::parse("sched:sched_process_exit", EXIT_6_18);
        assert_eq!(f.offset("pid").expect("pid"), 24);
        assert_eq!(f.offset("group_dead").expect("group_dead"), 32);
        assert_eq!(
            f.field("comm"),
            Some(&Field {
                name: "comm".into(),
                offset: 8,
                size: 16
            })
        );
    }

    #[test]
    fn parses_data_loc_fields() {
        let f = Format::parse("sched:sched_process_hang", HANG_6_18);
        assert_eq!(f.offset("comm").expect("comm"), 8);
        assert_eq!(f.offset("pid").expect("pid"), 12);
    }

    #[test]
    fn missing_field_is_an_error_naming_it() {
        let f = Format::parse(
            "sched:sched_process_exit",
            "format:\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n",
        );
        let err = f
            .offset("group_dead")
            .expect_err("no group_dead on old kernels");
        assert!(err.to_string().contains("group_dead"));
    }
}
