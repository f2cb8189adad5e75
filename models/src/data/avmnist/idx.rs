//! IDX files (the MNIST container): a big-endian header with the element type and the
//! dimensions, then the raw values. Gzip-compressed files are recognised by their magic.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::data::error::DataError;

/// An unsigned-byte IDX array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const UBYTE: u8 = 0x08;

/// Reads an IDX file of unsigned bytes, decompressing it if it is gzip.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, "read", e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 5);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::Idx {
                path: path.to_path_buf(),
                problem: format!("gzip data is corrupt: {e}"),
            })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

/// Parses an uncompressed IDX byte stream; `path` is only used in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let bad = |problem: String| DataError::Idx {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes, too short for an IDX header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "magic {:02x?} does not start with two zero bytes: not an IDX file",
            &bytes[..4]
        )));
    }
    if bytes[2] != UBYTE {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(bad("rank 0".into()));
    }
    let start = 4 + 4 * rank;
    if bytes.len() < start {
        return Err(bad(format!(
            "file ends inside the header ({} dimensions declared)",
            rank
        )));
    }
    let dims: Vec<usize> = bytes[4..start]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let found = bytes.len() - start;
    if found != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} bytes of data, found {found}"
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[start..].to_vec(),
    })
}
