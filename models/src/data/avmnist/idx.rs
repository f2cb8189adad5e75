//! IDX files (the MNIST container): a big-endian header with the element type and the
//! dimensions, then the raw values. Gzip-compressed files are recognised by their magic.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::data::error::DataError;
use crate::data::files;

/// An unsigned-byte IDX array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const UBYTE: u8 = 0x08;

/// Largest IDX data accepted (after decompression), and largest IDX file read. MNIST's
/// largest file holds 47 MB; the limit keeps a corrupt or hostile header from sizing an
/// allocation, and a gzip stream from expanding past it.
pub const MAX_IDX_BYTES: usize = 256 << 20;

/// Reads an IDX file of unsigned bytes, decompressing it if it is gzip (one member or
/// several, as `cat a.gz b.gz` makes). The decompressed size is bounded by what the IDX
/// header declares: decompression stops one byte past it, so a small file that expands to
/// gigabytes is rejected after reading no more than the header promised.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = files::read_regular(path, MAX_IDX_BYTES as u64, "IDX file")?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse_idx(&raw, path);
    }
    let bad = |problem: String| DataError::Idx {
        path: path.to_path_buf(),
        problem,
    };
    let corrupt = |e: std::io::Error| bad(format!("gzip data is corrupt: {e}"));
    let mut gz = MultiGzDecoder::new(raw.as_slice());
    let mut header = vec![0u8; 4];
    let got = read_full(&mut gz, &mut header).map_err(corrupt)?;
    header.truncate(got);
    if got == 4 && header[0] == 0 && header[1] == 0 && header[2] == UBYTE && header[3] > 0 {
        header.resize(4 + 4 * header[3] as usize, 0);
        let got = read_full(&mut gz, &mut header[4..]).map_err(corrupt)?;
        header.truncate(4 + got);
    }
    // Checks magic, type and rank, and bounds the declared count.
    let (dims, start, count) = parse_header(&header, path)?;
    debug_assert_eq!(start, header.len());
    let mut data = Vec::new();
    files::try_reserve(&mut data, count, path, "IDX data")?;
    (&mut gz)
        .take(count as u64)
        .read_to_end(&mut data)
        .map_err(corrupt)?;
    if data.len() < count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} bytes of data, the gzip stream holds {}",
            data.len()
        )));
    }
    let mut probe = [0u8; 1];
    if read_full(&mut gz, &mut probe).map_err(corrupt)? != 0 {
        return Err(bad(format!(
            "the gzip stream holds more than the {count} bytes of data that dimensions {dims:?} need"
        )));
    }
    Ok(IdxArray { dims, data })
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses the header at the start of `bytes`: (dimensions, data start, element count),
/// the count checked for overflow and against [`MAX_IDX_BYTES`].
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize, usize), DataError> {
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
        .filter(|&c| c <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "dimensions {dims:?} declare more than the limit of {MAX_IDX_BYTES} bytes of data"
            ))
        })?;
    Ok((dims, start, count))
}

/// Parses an uncompressed IDX byte stream; `path` is only used in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let (dims, start, count) = parse_header(bytes, path)?;
    let found = bytes.len() - start;
    if found != count {
        return Err(DataError::Idx {
            path: path.to_path_buf(),
            problem: format!("dimensions {dims:?} need {count} bytes of data, found {found}"),
        });
    }
    let mut data = Vec::new();
    files::try_reserve(&mut data, count, path, "IDX data")?;
    data.extend_from_slice(&bytes[start..]);
    Ok(IdxArray { dims, data })
}
