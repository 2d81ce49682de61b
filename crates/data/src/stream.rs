//! Reading and writing record files one record at a time, so a 600K-record file runs in the
//! memory of one record.
//!
//! A file is either one JSON array of records (what LLaVA's `train.py` `json.load`s) or JSON
//! Lines (one record per line). The kind is told from the first character that is not
//! whitespace (after an optional UTF-8 byte-order mark): `[` is an array, `{` JSON Lines. An
//! array is parsed element by element through serde's `SeqAccess` over a `BufReader`; JSON Lines
//! through serde_json's `StreamDeserializer`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};

/// The two layouts a record file can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `[record, record, ...]`.
    Json,
    /// One record per line.
    Jsonl,
}

impl Format {
    /// The layout an output file gets from its name: `.jsonl` → JSON Lines, anything else → a
    /// JSON array (what LLaVA's `train.py` reads).
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("jsonl") => Format::Jsonl,
            _ => Format::Json,
        }
    }
}

/// Whether [`for_each`] should go on after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Opens `path` and tells its layout from its first bytes.
fn open(path: &Path) -> Result<(Format, BufReader<File>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let io = |e| Error::io(path, e);
    if reader.fill_buf().map_err(io)?.starts_with(UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
    }
    loop {
        let buf = reader.fill_buf().map_err(io)?;
        let Some(&first) = buf.first() else {
            return Err(Error::format(
                path,
                "empty file (expected a JSON array of records or JSON Lines)",
            ));
        };
        if first.is_ascii_whitespace() {
            reader.consume(1);
            continue;
        }
        return match first {
            b'[' => Ok((Format::Json, reader)),
            b'{' => Ok((Format::Jsonl, reader)),
            0xFF | 0xFE => Err(Error::format(
                path,
                "not UTF-8 text (it starts with a UTF-16 byte-order mark; re-save it as UTF-8)",
            )),
            other => Err(Error::format(
                path,
                format!(
                    "expected a JSON array of records (`[`) or JSON Lines (`{{` on each line), \
                     found {}",
                    describe_byte(other)
                ),
            )),
        };
    }
}

fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", b as char)
    } else {
        format!("byte 0x{b:02X}")
    }
}

/// The message for a serde_json error inside a record, in words a user can act on.
fn json_message(e: &serde_json::Error, format: Format) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Eof => match format {
            Format::Json => format!(
                "the file ends inside this record or before the closing `]` ({at}): truncated JSON"
            ),
            Format::Jsonl => format!("the file ends inside this record ({at}): truncated JSON"),
        },
        Category::Io => format!("cannot read ({at}): {e}"),
        _ => {
            let text = e.to_string();
            // serde_json reports invalid UTF-8 inside a string as a bad code point.
            if text.starts_with("invalid unicode code point") {
                format!("not valid UTF-8 text at {at}")
            } else {
                format!("invalid JSON: {text}")
            }
        }
    }
}

/// Calls `f(index, record)` for every record of `path` in file order (0-based index), until
/// `f` returns [`Flow::Stop`] or an error. Returns the number of records passed to `f`.
///
/// Records are whatever JSON values the file holds (their structure is the caller's to check).
/// Malformed JSON, a file that breaks off and invalid UTF-8 are [`Error::Json`] naming the
/// record index and the line and column.
pub fn for_each<F>(path: &Path, mut f: F) -> Result<usize>
where
    F: FnMut(usize, Value) -> Result<Flow>,
{
    let (format, reader) = open(path)?;
    match format {
        Format::Jsonl => {
            let mut index = 0;
            for item in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
                let value = item.map_err(|e| Error::Json {
                    path: path.to_path_buf(),
                    index,
                    msg: json_message(&e, format),
                })?;
                let flow = f(index, value)?;
                index += 1;
                if flow == Flow::Stop {
                    break;
                }
            }
            Ok(index)
        }
        Format::Json => {
            let mut state = ArrayState {
                f: &mut f,
                index: 0,
                failed: None,
                stopped: false,
            };
            let mut de = serde_json::Deserializer::from_reader(reader);
            // The visitor is `&mut state`: serde takes visitors by value.
            let parsed = serde::Deserializer::deserialize_seq(&mut de, &mut state);
            if let Some(e) = state.failed.take() {
                return Err(e);
            }
            let index = state.index;
            let json_err = |e: serde_json::Error| Error::Json {
                path: path.to_path_buf(),
                index,
                msg: json_message(&e, format),
            };
            if state.stopped {
                return Ok(index);
            }
            parsed.map_err(json_err)?;
            de.end().map_err(|e| Error::Json {
                path: path.to_path_buf(),
                index,
                msg: format!("text after the closing `]`: {}", json_message(&e, format)),
            })?;
            Ok(index)
        }
    }
}

/// Drives a JSON array through [`SeqAccess`], one element at a time.
struct ArrayState<'f, F> {
    f: &'f mut F,
    index: usize,
    /// The callback's own error, kept out of serde's error type.
    failed: Option<Error>,
    stopped: bool,
}

/// Marks the point where the callback asked to stop or failed (never shown to users).
const STOP: &str = "sightline-data: stop";

impl<'de, F> Visitor<'de> for &mut ArrayState<'_, F>
where
    F: FnMut(usize, Value) -> Result<Flow>,
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(value) = seq.next_element_seed(ValueSeed)? {
            match (self.f)(self.index, value) {
                Ok(flow) => {
                    self.index += 1;
                    if flow == Flow::Stop {
                        self.stopped = true;
                        return Err(A::Error::custom(STOP));
                    }
                }
                Err(e) => {
                    self.failed = Some(e);
                    return Err(A::Error::custom(STOP));
                }
            }
        }
        Ok(())
    }
}

/// Deserializes one array element as a [`Value`].
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Value, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// Counts the records of a file (a full parse: a malformed file is an error here too).
pub fn count(path: &Path) -> Result<usize> {
    for_each(path, |_, _| Ok(Flow::Continue))
}

/// Writes records as a JSON array (one record per line between `[` and `]`) or as JSON Lines.
/// Text is written as UTF-8, not `\u` escapes.
pub struct RecordWriter<W: Write> {
    w: W,
    format: Format,
    count: usize,
    /// Names the output in errors.
    name: PathBuf,
}

impl<W: Write> RecordWriter<W> {
    /// `name` is only used in error messages (`-` for stdout).
    pub fn new(w: W, format: Format, name: impl Into<PathBuf>) -> Self {
        Self {
            w,
            format,
            count: 0,
            name: name.into(),
        }
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.name, e)
    }

    /// Appends one record.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        let sep: &[u8] = match (self.format, self.count) {
            (Format::Json, 0) => b"[\n",
            (Format::Json, _) => b",\n",
            (Format::Jsonl, _) => b"",
        };
        self.w.write_all(sep).map_err(|e| self.io(e))?;
        serde_json::to_writer(&mut self.w, record).map_err(|e| self.io(e.into()))?;
        if self.format == Format::Jsonl {
            self.w.write_all(b"\n").map_err(|e| self.io(e))?;
        }
        self.count += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Closes the array (an empty one is `[]`) and flushes; returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        let end: &[u8] = match (self.format, self.count) {
            (Format::Json, 0) => b"[]\n",
            (Format::Json, _) => b"\n]\n",
            (Format::Jsonl, _) => b"",
        };
        self.w.write_all(end).map_err(|e| self.io(e))?;
        self.w.flush().map_err(|e| self.io(e))?;
        Ok(self.w)
    }
}

/// Reads a whole small file of records into memory (tests and fixtures; the verbs stream).
pub fn read_all(path: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for_each(path, |_, v| {
        out.push(v);
        Ok(Flow::Continue)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn ids(path: &Path) -> Result<Vec<String>> {
        Ok(read_all(path)?
            .iter()
            .map(|v| v["id"].as_str().unwrap_or("?").to_string())
            .collect())
    }

    #[test]
    fn reads_arrays_and_lines_alike() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = write(
            &dir,
            "a.json",
            b"\xEF\xBB\xBF \n[{\"id\":\"x\"},\n {\"id\":\"y\"}]\n",
        );
        let l = write(&dir, "l.jsonl", b"{\"id\":\"x\"}\n\n{\"id\":\"y\"}");
        assert_eq!(ids(&a)?, ["x", "y"]);
        assert_eq!(ids(&l)?, ["x", "y"]);
        assert_eq!(count(&write(&dir, "e.json", b"[]"))?, 0);
        Ok(())
    }

    #[test]
    fn stops_early_without_reading_the_rest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // The tail is garbage: stopping after record 0 must not reach it.
        let a = write(&dir, "a.json", b"[{\"id\":\"x\"}, {\"id\":\"y\"}, !!!");
        let n = for_each(&a, |_, _| Ok(Flow::Stop))?;
        assert_eq!(n, 1);
        Ok(())
    }

    #[test]
    fn malformed_files_name_the_record() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cases: &[(&str, &[u8], &str)] = &[
            (
                "t.json",
                b"[{\"id\":\"x\"}, {\"id\":\"y\", \"conv",
                "record 1: the file ends inside this record",
            ),
            (
                "t.jsonl",
                b"{\"id\":\"x\"}\n{\"id\":",
                "record 1: the file ends inside this record",
            ),
            (
                "c.json",
                b"[{\"id\":\"x\"} {\"id\":\"y\"}]",
                "record 1: invalid JSON: expected `,` or `]` at line 1 column 13",
            ),
            (
                "u.json",
                b"[{\"id\":\"\xff\xfe\"}]",
                "record 0: not valid UTF-8 text at line 1",
            ),
            ("z.json", b"", "empty file"),
            ("w.json", b"\xff\xfe[\x00", "UTF-16"),
            (
                "s.json",
                b"\"just a string\"",
                "expected a JSON array of records (`[`) or JSON Lines",
            ),
            (
                "g.json",
                b"[{\"id\":\"x\"}] [",
                "record 1: text after the closing `]`",
            ),
        ];
        for (name, bytes, want) in cases {
            let p = write(&dir, name, bytes);
            let e = count(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
            assert!(e.starts_with(&p.display().to_string()), "{name}: {e}");
        }
        Ok(())
    }

    #[test]
    fn writes_arrays_that_json_load_reads() -> anyhow::Result<()> {
        let mut w = RecordWriter::new(Vec::new(), Format::Json, "-");
        w.write(&serde_json::json!({"id": "é", "b": 1, "a": 2}))?;
        w.write(&serde_json::json!({"id": "2"}))?;
        let s = String::from_utf8(w.finish()?)?;
        assert_eq!(s, "[\n{\"id\":\"é\",\"b\":1,\"a\":2},\n{\"id\":\"2\"}\n]\n");
        let w = RecordWriter::new(Vec::new(), Format::Json, "-");
        assert_eq!(w.finish()?, b"[]\n");
        let mut w = RecordWriter::new(Vec::new(), Format::Jsonl, "-");
        w.write(&serde_json::json!({"id": "1"}))?;
        assert_eq!(w.finish()?, b"{\"id\":\"1\"}\n");
        Ok(())
    }
}
