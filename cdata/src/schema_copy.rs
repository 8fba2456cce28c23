//! The upstream's schema exactly as its producer wrote it: an owned deep copy of its
//! `ArrowSchema` tree, handed to consumers instead of arrow-rs's re-export, which drops
//! what arrow-rs has no place for (an extension type on a dictionary's values, metadata
//! that is not UTF-8).

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{ArrowError, Schema};

use crate::abi::ArrowSchema;

/// One node of a copied schema tree.
#[derive(Debug, Clone)]
pub struct SchemaCopy {
    format: CString,
    name: Option<CString>,
    /// The metadata in the C Data Interface's encoding.
    metadata: Option<Box<[u8]>>,
    flags: i64,
    children: Vec<SchemaCopy>,
    dictionary: Option<Box<SchemaCopy>>,
}

/// What an exported node's `private_data` owns.
struct ExportedNode {
    _format: CString,
    _name: Option<CString>,
    _metadata: Option<Box<[u8]>>,
    /// Each child is a boxed struct of ours; `children` in the node points to this list.
    children: Vec<*mut ArrowSchema>,
    dictionary: *mut ArrowSchema,
}

impl SchemaCopy {
    /// Copy `schema` and everything below it.
    ///
    /// # Safety
    /// `schema` is an unreleased schema: its pointers are NULL or valid for their counts.
    pub unsafe fn of(schema: &ArrowSchema) -> Result<Self, String> {
        if schema.format.is_null() {
            return Err("a schema node has no format string".into());
        }
        // SAFETY: an unreleased schema's strings are NUL-terminated.
        let format = unsafe { CStr::from_ptr(schema.format) }.to_owned();
        let name = (!schema.name.is_null())
            // SAFETY: as above.
            .then(|| unsafe { CStr::from_ptr(schema.name) }.to_owned());
        let metadata = if schema.metadata.is_null() {
            None
        } else {
            // SAFETY: an unreleased schema's metadata is in the C Data Interface's encoding.
            Some(unsafe { copy_metadata(schema.metadata) })
        };
        let count = usize::try_from(schema.n_children)
            .map_err(|_| format!("a schema node has {} children", schema.n_children))?;
        if count > 0 && schema.children.is_null() {
            return Err("a schema node has a NULL child list".into());
        }
        let mut children = Vec::with_capacity(count);
        for index in 0..count {
            // SAFETY: the child list holds `n_children` pointers, each NULL or valid.
            let child = unsafe { (*schema.children.add(index)).as_ref() }
                .ok_or_else(|| format!("a schema node has a NULL child {index}"))?;
            // SAFETY: a child of an unreleased schema is unreleased.
            children.push(unsafe { Self::of(child) }?);
        }
        // SAFETY: the dictionary is NULL or a valid, unreleased schema.
        let dictionary = match unsafe { schema.dictionary.as_ref() } {
            // SAFETY: as above.
            Some(dictionary) => Some(Box::new(unsafe { Self::of(dictionary) }?)),
            None => None,
        };
        Ok(Self {
            format,
            name,
            metadata,
            flags: schema.flags,
            children,
            dictionary,
        })
    }

    /// The schema as arrow-rs holds it: without the metadata entries whose key or value
    /// is not UTF-8, and without what arrow-rs has no place for.
    pub fn to_arrow(&self) -> Result<Schema, ArrowError> {
        Schema::try_from(&self.arrow_view())
    }

    /// The C schema tree arrow-rs reads: this one without the metadata entries whose key
    /// or value is not UTF-8, which arrow-rs refuses.
    pub fn arrow_view(&self) -> FFI_ArrowSchema {
        // SAFETY: a fresh tree of ours, which keeps the C Data Interface's rules.
        unsafe { self.utf8_metadata_only().export().into_ffi() }
    }

    /// The same tree without the metadata entries whose key or value is not UTF-8.
    fn utf8_metadata_only(&self) -> Self {
        Self {
            metadata: self.metadata.as_deref().and_then(utf8_entries),
            children: self.children.iter().map(Self::utf8_metadata_only).collect(),
            dictionary: self
                .dictionary
                .as_ref()
                .map(|d| Box::new(d.utf8_metadata_only())),
            ..self.clone()
        }
    }

    /// A new `ArrowSchema` tree with its own copy of everything; the caller releases it.
    pub fn export(&self) -> ArrowSchema {
        let children: Vec<*mut ArrowSchema> = self
            .children
            .iter()
            .map(|child| Box::into_raw(Box::new(child.export())))
            .collect();
        let dictionary = self
            .dictionary
            .as_ref()
            .map_or(ptr::null_mut(), |d| Box::into_raw(Box::new(d.export())));
        let format = self.format.clone();
        let name = self.name.clone();
        let metadata = self.metadata.clone();
        let mut node = Box::new(ExportedNode {
            children,
            dictionary,
            _format: format,
            _name: name,
            _metadata: metadata,
        });
        ArrowSchema {
            format: node._format.as_ptr(),
            name: node._name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            metadata: node
                ._metadata
                .as_ref()
                .map_or(ptr::null(), |m| m.as_ptr().cast::<c_char>()),
            flags: self.flags,
            n_children: node.children.len() as i64,
            children: if node.children.is_empty() {
                ptr::null_mut()
            } else {
                node.children.as_mut_ptr()
            },
            dictionary,
            release: Some(release_exported),
            private_data: Box::into_raw(node).cast(),
        }
    }
}

unsafe extern "C" fn release_exported(schema: *mut ArrowSchema) {
    // SAFETY: a release callback gets a valid schema, or NULL from a careless caller.
    let Some(schema) = (unsafe { schema.as_mut() }) else {
        return;
    };
    if schema.private_data.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `export`, released once.
    let node = unsafe { Box::from_raw(schema.private_data.cast::<ExportedNode>()) };
    for owned in node
        .children
        .iter()
        .copied()
        .chain((!node.dictionary.is_null()).then_some(node.dictionary))
    {
        // A consumer may have moved a child out (and marked it released): then only the
        // struct, which is ours, is freed here.
        // SAFETY: made by `Box::into_raw` in `export`, freed once, here.
        let mut owned = unsafe { Box::from_raw(owned) };
        if let Some(release) = owned.release {
            // SAFETY: an unreleased child, released once.
            unsafe { release(&mut *owned) };
        }
    }
    schema.release = None;
    schema.private_data = ptr::null_mut();
}

/// A copy of C Data Interface metadata: an int32 pair count, then for each pair an int32
/// length and the key's bytes, an int32 length and the value's bytes.
///
/// # Safety
/// `metadata` points to metadata in that encoding.
unsafe fn copy_metadata(metadata: *const c_char) -> Box<[u8]> {
    // SAFETY: each length read lies inside the encoding, as the caller promised.
    let read_i32 =
        |at: usize| unsafe { ptr::read_unaligned(metadata.add(at).cast::<i32>()).max(0) as usize };
    let pairs = read_i32(0);
    let mut at = 4;
    for _ in 0..pairs * 2 {
        at += 4 + read_i32(at);
    }
    // SAFETY: the encoding is `at` bytes long, counted above.
    unsafe { std::slice::from_raw_parts(metadata.cast::<u8>(), at) }.into()
}

/// The entries of `metadata` whose key and value are UTF-8, re-encoded; `None` if none is.
fn utf8_entries(metadata: &[u8]) -> Option<Box<[u8]>> {
    let read_i32 = |at: usize| {
        i32::from_ne_bytes(metadata[at..at + 4].try_into().expect("four bytes")).max(0) as usize
    };
    let mut at = 4;
    let mut kept: Vec<(&[u8], &[u8])> = Vec::new();
    for _ in 0..read_i32(0) {
        let key_len = read_i32(at);
        let key = &metadata[at + 4..at + 4 + key_len];
        at += 4 + key_len;
        let value_len = read_i32(at);
        let value = &metadata[at + 4..at + 4 + value_len];
        at += 4 + value_len;
        if std::str::from_utf8(key).is_ok() && std::str::from_utf8(value).is_ok() {
            kept.push((key, value));
        }
    }
    if kept.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(kept.len() as i32).to_ne_bytes());
    for (key, value) in kept {
        for bytes in [key, value] {
            out.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
            out.extend_from_slice(bytes);
        }
    }
    Some(out.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};
    use std::collections::HashMap;

    #[test]
    fn a_copy_exports_the_same_schema_and_outlives_its_source() {
        let field = Field::new(
            "tags",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            true,
        )
        .with_metadata(HashMap::from([("k".to_string(), "v".to_string())]));
        let inner = Field::new("x", DataType::Int32, false);
        let nested = Field::new("s", DataType::Struct(vec![inner].into()), true);
        let schema = Schema::new(vec![field, nested])
            .with_metadata(HashMap::from([("origin".to_string(), "test".to_string())]));
        let source = FFI_ArrowSchema::try_from(&schema).unwrap();
        // SAFETY: an unreleased schema exported by arrow-rs.
        let copy = unsafe { SchemaCopy::of(ArrowSchema::of_ffi(&source)) }.unwrap();
        drop(source);
        for _ in 0..2 {
            // SAFETY: a fresh export of ours.
            let back = unsafe { copy.export().into_ffi() };
            assert_eq!(Schema::try_from(&back).unwrap(), schema);
        }
    }

    #[test]
    fn metadata_that_is_not_utf8_is_dropped_only_from_the_arrow_rs_view() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&2i32.to_ne_bytes());
        for entry in [&b"ok"[..], b"yes", b"blob", b"\xff"] {
            bytes.extend_from_slice(&(entry.len() as i32).to_ne_bytes());
            bytes.extend_from_slice(entry);
        }
        let copy = SchemaCopy {
            format: CString::new("+s").unwrap(),
            name: None,
            metadata: Some(bytes.clone().into_boxed_slice()),
            flags: 0,
            children: Vec::new(),
            dictionary: None,
        };
        let exported = copy.export();
        // SAFETY: the export's metadata is the encoding it was given.
        assert_eq!(&*unsafe { copy_metadata(exported.metadata) }, &bytes[..]);
        // SAFETY: a fresh export of ours, released by arrow-rs's drop.
        drop(unsafe { exported.into_ffi() });
        let schema = copy.to_arrow().unwrap();
        assert_eq!(
            schema.metadata(),
            &HashMap::from([("ok".into(), "yes".into())])
        );
    }
}
