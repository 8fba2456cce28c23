//! A save's manifest and checksums file: written once the data file is, and read back
//! checked against each other and against the manifest's own checksum.

use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use serde_json::{json, Value};
use twox_hash::XxHash3_64;

use super::footer::Footer;
use super::{
    data_file, hex, modified_ns, write_synced, Persisted, CHECKSUMS, DATA, FORMAT, FORMAT_VERSION,
    MANIFEST,
};
use crate::disk::{io_error, Message, Segment};
use crate::error::{Error, Result};

/// The manifest's own checksum, in its `checksums` object: over every other field.
const MANIFEST_SUM: &str = "manifest_xxh3";
/// Checksum the data file's blocks, write them and the manifest, all synced.
pub(super) fn write_manifest(dir: &Path, saved: &Persisted, schema: &SchemaRef) -> Result<()> {
    let (data_path, file, meta) = data_file(dir)?;
    let len = meta.len();
    let footer = Footer::read(&file, &data_path, len)?;
    let structure = footer.structure_checksum(&file, &data_path, len)?;
    let modified = modified_ns(&meta, &data_path)?;
    let segment = Segment::persisted(data_path.clone(), file, len);
    let mut sums = Vec::with_capacity(footer.checksummed() * 8);
    for block in footer.dictionaries.iter().chain(&footer.batches) {
        sums.extend_from_slice(
            &Message::persisted(&segment, block)?
                .checksum()?
                .to_le_bytes(),
        );
    }
    write_synced(&dir.join(CHECKSUMS), &sums)?;
    let fields: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
        .collect();
    let mut manifest = json!({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": saved.id,
        "written_by": format!("batchcorder {}", env!("CARGO_PKG_VERSION")),
        "data_file": DATA,
        "data_bytes": len,
        "data_modified_ns": modified,
        "batches": saved.batches,
        "rows": saved.rows,
        "dictionaries": footer.dictionaries.len(),
        "schema": fields,
        "checksums": {
            "algorithm": "xxh3-64",
            "file": CHECKSUMS,
            "file_xxh3": hex(XxHash3_64::oneshot(&sums)),
            "schema_and_footer_xxh3": hex(structure),
        },
    });
    manifest["checksums"][MANIFEST_SUM] = hex(manifest_checksum(&manifest)).into();
    let mut text = serde_json::to_vec_pretty(&manifest)
        .map_err(|err| Error::Internal(format!("manifest: {err}")))?;
    text.push(b'\n');
    write_synced(&dir.join(MANIFEST), &text)
}

/// XXH3 of the manifest without its own checksum, in a canonical form (compact, keys
/// sorted), so that a tool that reformats the file changes nothing.
fn manifest_checksum(manifest: &Value) -> u64 {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(fields) => {
                let mut fields: Vec<_> = fields.iter().collect();
                fields.sort_unstable_by_key(|(key, _)| *key);
                out.push('{');
                for (i, (key, value)) in fields.into_iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { "," });
                    out.push_str(&Value::from(key.as_str()).to_string());
                    out.push(':');
                    canonical(value, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { "," });
                    canonical(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut without = manifest.clone();
    if let Some(sums) = without.get_mut("checksums").and_then(Value::as_object_mut) {
        sums.remove(MANIFEST_SUM);
    }
    let mut text = String::new();
    canonical(&without, &mut text);
    XxHash3_64::oneshot(text.as_bytes())
}

/// A persisted cache's manifest and checksums, checked against each other.
pub(super) struct Layout {
    pub(super) path: PathBuf,
    pub(super) id: String,
    pub(super) data_bytes: u64,
    /// The data file's modification time at its save; `None` if the manifest lacks it.
    pub(super) data_modified_ns: Option<u64>,
    pub(super) batches: u64,
    pub(super) rows: u64,
    pub(super) checksums: Vec<u64>,
    pub(super) structure_checksum: u64,
}

impl Layout {
    pub(super) fn read(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot open {}: it is a file; pass the directory a cache was persisted to",
                    path.display()
                )))
            }
            Err(err) => return Err(io_error("cannot open persisted cache", path, err)),
        }
        let manifest_path = path.join(MANIFEST);
        let text = match std::fs::read(&manifest_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Corrupt(format!(
                    "{} holds no {MANIFEST}: it is not a persisted batchcorder cache, or its \
                     save did not finish",
                    path.display()
                )))
            }
            Err(err) => return Err(io_error("cannot read", &manifest_path, err)),
        };
        let not_ours = |why: &str| {
            Error::Corrupt(format!(
                "{} is not a persisted batchcorder cache: {why}",
                manifest_path.display()
            ))
        };
        let manifest: Value =
            serde_json::from_slice(&text).map_err(|err| not_ours(&format!("not JSON ({err})")))?;
        if manifest.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(not_ours(&format!("its \"format\" is not \"{FORMAT}\"")));
        }
        let number = |key: &str| {
            manifest
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| not_ours(&format!("\"{key}\" is missing or not a number")))
        };
        let version = number("format_version")?;
        if version > FORMAT_VERSION {
            return Err(Error::InvalidArgument(format!(
                "{} was saved in format version {version}, newer than this batchcorder {} \
                 reads (up to {FORMAT_VERSION}); upgrade batchcorder to open it",
                path.display(),
                env!("CARGO_PKG_VERSION")
            )));
        }
        let text_field = |value: Option<&Value>, key: &str| {
            value
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| not_ours(&format!("\"{key}\" is missing or not text")))
        };
        let checksums_entry = manifest.get("checksums");
        let sum = |key: &str| {
            let text = text_field(checksums_entry.and_then(|c| c.get(key)), key)?;
            u64::from_str_radix(&text, 16).map_err(|_| not_ours(&format!("\"{key}\" is not hex")))
        };
        let algorithm = text_field(
            checksums_entry.and_then(|c| c.get("algorithm")),
            "algorithm",
        )?;
        if algorithm != "xxh3-64" {
            return Err(not_ours(&format!(
                "unknown checksum algorithm \"{algorithm}\""
            )));
        }
        if sum(MANIFEST_SUM)? != manifest_checksum(&manifest) {
            return Err(Error::Corrupt(format!(
                "the persisted cache at {} is damaged: {} was edited (its fields do not \
                 match its checksum {MANIFEST_SUM}); persist the stream again",
                path.display(),
                manifest_path.display()
            )));
        }
        let mut layout = Self {
            path: path.to_path_buf(),
            id: text_field(manifest.get("id"), "id")?,
            data_bytes: number("data_bytes")?,
            data_modified_ns: manifest.get("data_modified_ns").and_then(Value::as_u64),
            batches: number("batches")?,
            rows: number("rows")?,
            checksums: Vec::new(),
            structure_checksum: sum("schema_and_footer_xxh3")?,
        };
        let sums_path = path.join(CHECKSUMS);
        let sums = std::fs::read(&sums_path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => layout.damaged(format!("{CHECKSUMS} is missing")),
            _ => io_error("cannot read", &sums_path, err),
        })?;
        if sums.len() % 8 != 0 || XxHash3_64::oneshot(&sums) != sum("file_xxh3")? {
            return Err(layout.damaged(format!("{CHECKSUMS} does not match the manifest")));
        }
        layout.checksums = sums
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(layout)
    }

    pub(super) fn damaged(&self, why: String) -> Error {
        Error::Corrupt(format!(
            "the persisted cache at {} is damaged: {why}; persist the stream again",
            self.path.display()
        ))
    }
}

/// Tests and fuzzing only: rewrite the checksums and the manifest of the save at `path`
/// from its data file as it is now, as if batchcorder had saved those bytes: a save
/// crafted to pass every checksum, which must still never crash a reader.
#[cfg(feature = "fault-injection")]
pub fn reseal(path: &Path) -> Result<()> {
    let manifest_path = path.join(MANIFEST);
    let text = std::fs::read(&manifest_path)
        .map_err(|err| io_error("cannot read", &manifest_path, err))?;
    let manifest: Value = serde_json::from_slice(&text)
        .map_err(|err| Error::Corrupt(format!("{}: {err}", manifest_path.display())))?;
    let (data_path, file, meta) = data_file(path)?;
    let footer = Footer::read(&file, &data_path, meta.len())?;
    let saved = Persisted {
        path: path.to_path_buf(),
        id: manifest["id"].as_str().unwrap_or_default().to_owned(),
        batches: footer.batches.len() as u64,
        rows: manifest["rows"].as_u64().unwrap_or_default(),
    };
    for name in [MANIFEST, CHECKSUMS] {
        let _ = std::fs::remove_file(path.join(name));
    }
    write_manifest(path, &saved, &footer.schema)
}
