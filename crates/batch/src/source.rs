//! The batch file: one pass to identify it (SHA-256 of its bytes) and index where its lines
//! start, then each line read on demand, so memory follows the work in flight, not the file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use gptimage::{GenerateRequest, InputFidelity, Quality, RawGenerateRequest, Size};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;

/// The longest line read, in bytes; a longer one is reported invalid (a prompt is at most 2000
/// characters, so a valid line is far shorter).
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// A batch file, identified by its content: its SHA-256 and where each non-blank line starts.
///
/// ```no_run
/// use gptimage_batch::Source;
///
/// let source = Source::open("prompts.jsonl")?;
/// println!("{} lines, batch {}", source.len(), source.id());
/// let first = source.read(0)?;
/// println!("line {}: {:?}", first.number, first.parse().map(|l| l.request.prompt().to_owned()));
/// # Ok::<(), gptimage_batch::Error>(())
/// ```
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    id: String,
    /// For each non-blank line: its 1-based line number in the file and its byte offset.
    starts: Vec<(u64, u64)>,
}

/// One line of the batch file, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// The line's position among the file's non-blank lines, from 0: its key in the state.
    pub item: u64,
    /// Its 1-based line number in the file, as people count.
    pub number: u64,
    /// Its text, without the line ending; only its start when the line is longer than
    /// [`MAX_LINE_BYTES`].
    pub text: String,
    /// Whether the line was longer than [`MAX_LINE_BYTES`] (and `text` is only its start).
    pub too_long: bool,
}

/// A line that parsed and passed every rule of the API.
#[derive(Debug, Clone)]
pub struct ParsedLine {
    /// The request to send.
    pub request: GenerateRequest,
    /// The optional `name` the output files are named after.
    pub name: Option<String>,
}

impl Source {
    /// Reads the whole file once, in constant memory but for 16 bytes a line.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let cannot = |e: std::io::Error| Error::Source {
            path: path.clone(),
            source: e.into(),
        };
        let mut reader = BufReader::with_capacity(256 * 1024, File::open(&path).map_err(cannot)?);
        let mut hasher = Sha256::new();
        let mut starts = Vec::new();
        let (mut offset, mut number) = (0u64, 0u64);
        let mut at_line_start = true;
        let mut blank_so_far = true;
        let mut line_start = 0u64;
        loop {
            let chunk = reader.fill_buf().map_err(cannot)?;
            if chunk.is_empty() {
                break;
            }
            hasher.update(chunk);
            for &byte in chunk {
                if at_line_start {
                    number += 1;
                    line_start = offset;
                    blank_so_far = true;
                    at_line_start = false;
                }
                if byte == b'\n' {
                    at_line_start = true;
                } else if blank_so_far && !byte.is_ascii_whitespace() {
                    blank_so_far = false;
                    starts.push((number, line_start));
                }
                offset += 1;
            }
            let read = chunk.len();
            reader.consume(read);
        }
        let id = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { path, id, starts })
    }

    /// The batch's identity: the hex SHA-256 of the file's bytes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many non-blank lines (items) the file has.
    pub fn len(&self) -> u64 {
        self.starts.len() as u64
    }

    /// Whether the file has no non-blank line.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The 1-based file line number of item `item`.
    pub fn line_number(&self, item: u64) -> Option<u64> {
        self.starts.get(item as usize).map(|(n, _)| *n)
    }

    /// Reads item `item` (0-based among the non-blank lines) from the file.
    pub fn read(&self, item: u64) -> Result<RawLine, Error> {
        let (number, start) = *self.starts.get(item as usize).ok_or(Error::Changed {
            path: self.path.clone(),
        })?;
        let cannot = |e: std::io::Error| Error::Source {
            path: self.path.clone(),
            source: e.into(),
        };
        let mut file = File::open(&self.path).map_err(cannot)?;
        file.seek(SeekFrom::Start(start)).map_err(cannot)?;
        let mut bytes = Vec::new();
        BufReader::new(file.take(MAX_LINE_BYTES as u64 + 1))
            .read_until(b'\n', &mut bytes)
            .map_err(cannot)?;
        Ok(RawLine::new(item, number, &bytes))
    }
}

impl Source {
    /// Calls `each` with every non-blank line in order, reading the file once from the start.
    pub fn scan(&self, mut each: impl FnMut(RawLine)) -> Result<(), Error> {
        let cannot = |e: std::io::Error| Error::Source {
            path: self.path.clone(),
            source: e.into(),
        };
        let mut reader = BufReader::new(File::open(&self.path).map_err(cannot)?);
        let mut bytes = Vec::new();
        let (mut item, mut number) = (0u64, 0u64);
        loop {
            bytes.clear();
            if reader.read_until(b'\n', &mut bytes).map_err(cannot)? == 0 {
                break;
            }
            number += 1;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            each(RawLine::new(item, number, &bytes));
            item += 1;
        }
        if item != self.len() {
            return Err(Error::Changed {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

impl RawLine {
    /// The line of these bytes (with or without its ending). A line over [`MAX_LINE_BYTES`]
    /// keeps only its start: the state stores it, and the reason says what was wrong.
    fn new(item: u64, number: u64, bytes: &[u8]) -> Self {
        let too_long = bytes.len() > MAX_LINE_BYTES;
        let text = if too_long {
            String::from_utf8_lossy(&bytes[..64]).into_owned()
        } else {
            String::from_utf8_lossy(bytes).trim_end().to_owned()
        };
        Self {
            item,
            number,
            text,
            too_long,
        }
    }

    /// Parses the line: a JSON object with the API's fields (`prompt`, `size`, `quality`,
    /// `images`, `input_fidelity`, `callback_url`) and an optional `name`; friendly spellings
    /// (`landscape`, `1536x1024`, `HIGH`) become the documented ones. The error says what is
    /// wrong and what is allowed.
    pub fn parse(&self) -> Result<ParsedLine, String> {
        if self.too_long {
            return Err(format!(
                "longer than {MAX_LINE_BYTES} bytes (a request is far shorter: a prompt is at \
                 most 2000 characters)"
            ));
        }
        let mut value: Value =
            serde_json::from_str(&self.text).map_err(|e| format!("not valid JSON ({e})"))?;
        let object = value.as_object_mut().ok_or("not a JSON object")?;
        let name = match object.remove("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name),
            Some(_) => return Err("'name' must be a string".into()),
        };
        normalize(object, "size", |s| s.parse::<Size>().map(Size::as_str))?;
        normalize(object, "quality", |s| {
            s.parse::<Quality>().map(Quality::as_str)
        })?;
        normalize(object, "input_fidelity", |s| {
            s.parse::<InputFidelity>().map(InputFidelity::as_str)
        })?;
        let raw: RawGenerateRequest = serde_json::from_value(value)
            .map_err(|e| format!("a field has the wrong type ({e})"))?;
        let request = raw.validate().map_err(|e| e.to_string())?;
        Ok(ParsedLine { request, name })
    }

    /// The prompt, if the line has one, for reports of lines that did not parse.
    pub fn prompt_hint(&self) -> String {
        serde_json::from_str::<Value>(&self.text)
            .ok()
            .and_then(|v| v.get("prompt")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Rewrites a friendly spelling of `field` into the documented one.
fn normalize<E: std::fmt::Display>(
    object: &mut serde_json::Map<String, Value>,
    field: &str,
    documented: impl Fn(&str) -> Result<&'static str, E>,
) -> Result<(), String> {
    if let Some(Value::String(raw)) = object.get(field) {
        let value = documented(raw).map_err(|e| e.to_string())?;
        object.insert(field.to_owned(), Value::from(value));
    }
    Ok(())
}

/// The file-name stem of a line's images: its `name` made safe for any file system, or
/// `line-N`.
pub fn stem(name: Option<&str>, number: u64) -> String {
    let safe: String = name
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if safe.is_empty() {
        format!("line-{number}")
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn blank_lines_are_skipped_and_numbers_kept() {
        let f = file("{\"prompt\":\"a\"}\n\n   \n{\"prompt\":\"b\"}\r\n{\"prompt\":\"c\"}");
        let source = Source::open(f.path()).unwrap();
        assert_eq!(source.len(), 3);
        let lines: Vec<_> = (0..3).map(|i| source.read(i).unwrap()).collect();
        assert_eq!(
            lines.iter().map(|l| l.number).collect::<Vec<_>>(),
            [1, 4, 5]
        );
        assert_eq!(lines[1].text, "{\"prompt\":\"b\"}");
        assert_eq!(lines[2].parse().unwrap().request.prompt(), "c");
        assert!(source.read(3).is_err());
    }

    #[test]
    fn a_line_too_long_says_so() {
        let long = format!(
            "{{\"prompt\": \"{}\"}}\n{{\"prompt\":\"b\"}}\n",
            "x".repeat(MAX_LINE_BYTES)
        );
        let f = file(&long);
        let source = Source::open(f.path()).unwrap();
        let first = source.read(0).unwrap();
        assert!(first.too_long && first.text.len() == 64);
        let reason = first.parse().unwrap_err();
        assert!(reason.contains("longer than"), "{reason}");
        let mut scanned = Vec::new();
        source.scan(|line| scanned.push(line)).unwrap();
        assert_eq!(scanned[0], first, "read and scan agree");
        assert_eq!(scanned[1].parse().unwrap().request.prompt(), "b");
    }

    #[test]
    fn the_id_is_the_content_not_the_path() {
        let a = Source::open(file("{\"prompt\":\"a\"}\n").path()).unwrap();
        let b = Source::open(file("{\"prompt\":\"a\"}\n").path()).unwrap();
        let c = Source::open(file("{\"prompt\":\"b\"}\n").path()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().len(), 64);
    }

    #[test]
    fn parse_says_what_is_wrong() {
        let line = |text: &str| RawLine::new(0, 1, text.as_bytes());
        assert!(line("nope").parse().unwrap_err().contains("not valid JSON"));
        assert!(
            line("[1]")
                .parse()
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            line(r#"{"prompt":" "}"#)
                .parse()
                .unwrap_err()
                .contains("'prompt' is blank")
        );
        assert!(
            line(r#"{"prompt":"a","name":3}"#)
                .parse()
                .unwrap_err()
                .contains("'name'")
        );
        let parsed = line(r#"{"prompt":"a","size":"landscape","name":"x y"}"#)
            .parse()
            .unwrap();
        assert_eq!(parsed.request.size(), Some(Size::Landscape));
        assert_eq!(stem(parsed.name.as_deref(), 7), "x_y");
        assert_eq!(stem(None, 7), "line-7");
        assert_eq!(stem(Some("日本"), 7), "__");
    }
}
