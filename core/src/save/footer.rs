//! The footer of a save's data file, an Arrow IPC file: its schema and the blocks of its
//! messages, parsed without trusting them, and a checksum of the bytes outside the blocks.

use std::fs::File;
use std::hash::Hasher;
use std::path::Path;
use std::sync::Arc;

use arrow_ipc::Block;
use arrow_schema::SchemaRef;
use twox_hash::XxHash3_64;

use crate::disk::{catch_quietly, map_range};
use crate::error::{Error, Result};
/// The footer of an Arrow IPC file: its schema and the blocks of its messages.
pub(super) struct Footer {
    pub(super) schema: SchemaRef,
    pub(super) dictionaries: Vec<Block>,
    pub(super) batches: Vec<Block>,
}

impl Footer {
    /// The footer of the data file at `path`, `len` bytes long.
    pub(super) fn read(file: &File, path: &Path, len: u64) -> Result<Self> {
        // arrow-ipc's schema conversion panics on some malformed input instead of
        // failing; nothing outlives the parse.
        catch_quietly(|| Self::parse(file, path, len)).unwrap_or_else(|panic| {
            Err(Error::Corrupt(format!(
                "{} is not a whole Arrow IPC file: its footer does not parse ({panic})",
                path.display()
            )))
        })
    }

    fn parse(file: &File, path: &Path, len: u64) -> Result<Self> {
        let damaged = |why: String| {
            Error::Corrupt(format!(
                "{} is not a whole Arrow IPC file: {why}",
                path.display()
            ))
        };
        const TRAILER: u64 = 10; // footer length (4) and magic (6)
        if len < 8 + TRAILER {
            return Err(damaged(format!("it has only {len} bytes")));
        }
        let trailer = map_range(file, path, len - TRAILER, TRAILER as usize, false)?;
        let trailer: [u8; 10] = trailer.as_slice().try_into().expect("10 bytes");
        let footer_len = arrow_ipc::reader::read_footer_length(trailer)
            .map_err(|err| damaged(err.to_string()))? as u64;
        if footer_len > len - TRAILER - 8 {
            return Err(damaged(format!(
                "its footer length {footer_len} overruns the file"
            )));
        }
        let bytes = map_range(
            file,
            path,
            len - TRAILER - footer_len,
            footer_len as usize,
            true,
        )?;
        let footer = arrow_ipc::root_as_footer(bytes.as_slice())
            .map_err(|err| damaged(format!("its footer does not parse ({err})")))?;
        let schema = footer
            .schema()
            .ok_or_else(|| damaged("its footer has no schema".into()))?;
        let schema = arrow_ipc::convert::try_fb_to_schema(schema)
            .map_err(|err| damaged(format!("its schema does not parse ({err})")))?;
        let schema = Arc::new(schema);
        let footer_start = len - TRAILER - footer_len;
        let dictionaries: Vec<Block> = footer
            .dictionaries()
            .map(|list| list.iter().copied().collect())
            .unwrap_or_default();
        let batches: Vec<Block> = footer
            .recordBatches()
            .map(|list| list.iter().copied().collect())
            .unwrap_or_default();
        for block in dictionaries.iter().chain(&batches) {
            let end = (block.offset() as i128)
                + block.metaDataLength() as i128
                + block.bodyLength() as i128;
            if block.offset() < 8 || block.metaDataLength() < 0 || end > footer_start as i128 {
                return Err(damaged(format!(
                    "a block at byte {} overruns it",
                    block.offset()
                )));
            }
        }
        Ok(Self {
            schema,
            dictionaries,
            batches,
        })
    }

    /// Blocks that have a checksum each: dictionaries, then batches.
    pub(super) fn checksummed(&self) -> usize {
        self.dictionaries.len() + self.batches.len()
    }

    /// XXH3 of every byte outside the blocks: magic, schema message, footer, trailer.
    pub(super) fn structure_checksum(&self, file: &File, path: &Path, len: u64) -> Result<u64> {
        let mut blocks: Vec<(u64, u64)> = self
            .dictionaries
            .iter()
            .chain(&self.batches)
            .map(|b| {
                let start = b.offset() as u64;
                (
                    start,
                    start + b.metaDataLength() as u64 + b.bodyLength() as u64,
                )
            })
            .collect();
        blocks.sort_unstable();
        let mut hasher = XxHash3_64::with_seed(0);
        let mut at = 0u64;
        for (start, end) in blocks.into_iter().chain([(len, len)]) {
            if start > at {
                hasher.write(map_range(file, path, at, (start - at) as usize, true)?.as_slice());
            }
            at = at.max(end);
        }
        Ok(hasher.finish())
    }
}
