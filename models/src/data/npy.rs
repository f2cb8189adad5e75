//! NumPy `.npy` files (format 1.0 and 2.0, little-endian, C order): a header parser that
//! never panics on arbitrary bytes, a memory-mapped reader (zero-copy typed views when the
//! data is aligned, element-wise reads from the map at any offset), and a writer (used by
//! preparation and by test fixtures).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::DataError;
use super::files;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Nesting beyond this in a header is garbage; bounding it keeps the parser's stack small.
const MAX_DEPTH: usize = 8;
/// At most this many dimensions (numpy itself allows 64; no dataset needs more than a few).
pub const MAX_RANK: usize = 32;
/// Largest header accepted. numpy writes a few hundred bytes and by default refuses to read
/// headers over 10,000; bounding it bounds what the parser can allocate.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// At most this many items in one tuple, list or dictionary of a header (a shape has at
/// most MAX_RANK; the dictionary three entries): the parser stops before building more.
const MAX_ITEMS: usize = 64;

/// Element types the dataset format uses (plus f64, for reference files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    I64,
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    /// The little-endian descr numpy writes for this type.
    pub fn descr(self) -> &'static str {
        match self {
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::I64 => "<i8",
            DType::U8 => "|u1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32 ('<f4')",
            DType::F64 => "float64 ('<f8')",
            DType::I64 => "int64 ('<i8')",
            DType::U8 => "uint8 ('|u1')",
        }
    }

    /// `descr` after the byte-order check: '<', '|' and '=' (native, little on the hosts
    /// we support) are accepted; the caller rejects '>' first.
    fn from_descr(descr: &str) -> Option<DType> {
        let (order, rest) = descr.split_at_checked(1)?;
        if !matches!(order, "<" | "|" | "=") {
            return None;
        }
        match rest {
            "f4" => Some(DType::F32),
            "f8" => Some(DType::F64),
            "i8" => Some(DType::I64),
            "u1" => Some(DType::U8),
            _ => None,
        }
    }
}

/// A parsed header: the dtype descr as written, the shape, and where the data starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements, or None if the product overflows.
    pub fn elem_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// Parses the header at the start of `bytes` (the whole file or at least its header).
/// Rejects, as distinct errors, unparseable headers, big-endian dtypes and Fortran order;
/// the dtype itself is checked by the caller, which knows what it expects.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader, DataError> {
    let bad = |problem: String| DataError::NpyHeader {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() < 10 {
        return Err(bad(format!(
            "file has {} bytes, too short for a .npy header",
            bytes.len()
        )));
    }
    if &bytes[..6] != MAGIC {
        return Err(bad(
            "missing the \\x93NUMPY magic string: not a .npy file".into()
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, start) = match (major, minor) {
        (1, 0) => (2, 10),
        (2, 0) => (4, 12),
        _ => {
            return Err(bad(format!(
                "format version {major}.{minor} is not supported (expected 1.0 or 2.0)"
            )))
        }
    };
    if bytes.len() < start {
        return Err(bad("file ends inside the header length field".into()));
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} is larger than the limit of {MAX_HEADER_BYTES} bytes"
        )));
    }
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "header length {header_len} runs past the end of the file ({} bytes)",
                bytes.len()
            ))
        })?;
    let text = std::str::from_utf8(&bytes[start..end])
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| bad("header is not ASCII text".into()))?;

    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value(0).map_err(&bad)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(bad(format!(
            "unexpected text after the header dictionary at byte {}",
            p.i
        )));
    }
    let PyVal::Dict(entries) = value else {
        return Err(bad("header is not a Python dictionary literal".into()));
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, val) in entries {
        let PyVal::Str(key) = key else {
            return Err(bad("header dictionary has a non-string key".into()));
        };
        let slot_taken = match key.as_str() {
            "descr" => descr.replace(val).is_some(),
            "fortran_order" => fortran.replace(val).is_some(),
            "shape" => shape.replace(val).is_some(),
            other => return Err(bad(format!("unexpected key {other:?} in header"))),
        };
        if slot_taken {
            return Err(bad(format!("key {key:?} appears twice")));
        }
    }
    let descr = match descr {
        Some(PyVal::Str(d)) => d,
        Some(_) => {
            return Err(DataError::NpyDtype {
                path: path.to_path_buf(),
                found: "a structured dtype".into(),
                expected: "a plain little-endian dtype",
            })
        }
        None => return Err(bad("key 'descr' is missing".into())),
    };
    let fortran_order = match fortran {
        Some(PyVal::Bool(b)) => b,
        Some(_) => return Err(bad("'fortran_order' is not True or False".into())),
        None => return Err(bad("key 'fortran_order' is missing".into())),
    };
    let shape = match shape {
        Some(PyVal::Tuple(items)) => {
            if items.len() > MAX_RANK {
                return Err(bad(format!(
                    "shape has {} dimensions (at most {MAX_RANK} supported)",
                    items.len()
                )));
            }
            items
                .into_iter()
                .map(|v| match v {
                    PyVal::Int(n) => usize::try_from(n)
                        .map_err(|_| bad(format!("dimension {n} is not a valid size"))),
                    _ => Err(bad("'shape' holds something other than integers".into())),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(bad("'shape' is not a tuple".into())),
        None => return Err(bad("key 'shape' is missing".into())),
    };
    if descr.starts_with('>') && !descr.ends_with('1') {
        return Err(DataError::NpyByteOrder {
            path: path.to_path_buf(),
            descr,
        });
    }
    if fortran_order && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(DataError::NpyFortranOrder {
            path: path.to_path_buf(),
        });
    }
    let header = NpyHeader {
        descr,
        fortran_order,
        shape,
        data_offset: end,
    };
    if header.elem_count().is_none() {
        return Err(bad(format!(
            "shape {:?} has more elements than fit in memory",
            header.shape
        )));
    }
    Ok(header)
}

enum PyVal {
    Str(String),
    Bool(bool),
    Int(i128),
    Tuple(Vec<PyVal>),
    Dict(Vec<(PyVal, PyVal)>),
    None,
}

/// Recursive descent over the Python-literal subset numpy writes.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len()
            && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r' | b'\0')
        {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "expected '{}' at byte {}, found '{}'",
                c as char,
                self.i,
                x.escape_ascii()
            )),
            None => Err(format!(
                "expected '{}' at byte {}, found the end of the header",
                c as char, self.i
            )),
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyVal, String> {
        if depth > MAX_DEPTH {
            return Err("header nests too deeply".into());
        }
        match self.peek() {
            None => Err("header ends where a value was expected".into()),
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(PyVal::Dict(entries));
                    }
                    if entries.len() >= MAX_ITEMS {
                        return Err(format!("dictionary has more than {MAX_ITEMS} entries"));
                    }
                    let k = self.value(depth + 1)?;
                    self.expect(b':')?;
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.i += 1;
                        // Lists only appear in structured dtypes, which the caller rejects.
                        return Ok(if open == b'(' {
                            PyVal::Tuple(items)
                        } else {
                            PyVal::None
                        });
                    }
                    if items.len() >= MAX_ITEMS {
                        return Err(format!("tuple or list has more than {MAX_ITEMS} items"));
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or '{}' at byte {}",
                                close as char, self.i
                            ))
                        }
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\\' {
                        return Err("escape sequences in header strings are not supported".into());
                    }
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err("unterminated string in header".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(PyVal::Str(text))
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                let start = self.i;
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| "bad integer".to_string())?;
                let n: i128 = text
                    .parse()
                    .map_err(|_| format!("bad integer {text:?} in header"))?;
                // Python 2 wrote long integers with an 'L' suffix.
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                Ok(PyVal::Int(n))
            }
            Some(_) => {
                for (word, v) in [("True", Some(true)), ("False", Some(false)), ("None", None)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v.map_or(PyVal::None, PyVal::Bool));
                    }
                }
                Err(format!(
                    "unexpected character '{}' at byte {}",
                    self.s[self.i].escape_ascii(),
                    self.i
                ))
            }
        }
    }
}

/// Element types that can be viewed in place, read from little-endian bytes, and written.
pub trait NpyElement: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn put_le(self, out: &mut Vec<u8>);
    /// The value stored little-endian in `b` (exactly `DTYPE.size()` bytes).
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! npy_element {
    ($t:ty, $dtype:expr) => {
        impl NpyElement for $t {
            const DTYPE: DType = $dtype;
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
    };
}
npy_element!(f32, DType::F32);
npy_element!(f64, DType::F64);
npy_element!(i64, DType::I64);
npy_element!(u8, DType::U8);

/// An open `.npy` file with a checked header. The data always stays in the memory map,
/// whatever its offset: a typed slice is handed out when the data is aligned (every file
/// numpy or we write), element-wise little-endian reads work at any offset. Nothing is
/// ever copied whole, so a 2 GiB file costs address space, not memory.
pub struct NpyArray {
    path: PathBuf,
    dtype: DType,
    shape: Vec<usize>,
    /// Elements in the file (the product of the shape).
    len: usize,
    map: Mmap,
    offset: usize,
}

impl std::fmt::Debug for NpyArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyArray")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl NpyArray {
    /// Opens `path`, requiring dtype `expected`; checks that it is a regular file, the
    /// header, and that the file holds all the data the header promises.
    pub fn open(path: impl AsRef<Path>, expected: DType) -> Result<NpyArray, DataError> {
        let path = path.as_ref();
        Self::open_as(path, path, expected)
    }

    /// Opens `real` (a resolved path) but names `shown` (the path the user wrote) in
    /// errors and in [`NpyArray::path`].
    pub(crate) fn open_as(
        real: &Path,
        shown: &Path,
        expected: DType,
    ) -> Result<NpyArray, DataError> {
        let path = shown;
        let (file, len) = files::open_regular(real).map_err(|e| e.renamed(real, shown))?;
        if len < 10 {
            return Err(DataError::NpyHeader {
                path: path.to_path_buf(),
                problem: format!("file has {len} bytes, too short for a .npy header"),
            });
        }
        // SAFETY: the map is read-only; like every reader of memory-mapped data we assume
        // nobody truncates the file while the dataset is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, "memory-map", e))?;
        let header = parse_header(&map, path)?;
        let dtype = DType::from_descr(&header.descr).ok_or_else(|| DataError::NpyDtype {
            path: path.to_path_buf(),
            found: header.descr.clone(),
            expected: expected.name(),
        })?;
        if dtype != expected {
            return Err(DataError::NpyDtype {
                path: path.to_path_buf(),
                found: header.descr,
                expected: expected.name(),
            });
        }
        let found = (map.len() - header.data_offset) as u64;
        let truncated = |needed: u64| DataError::NpyTruncated {
            path: path.to_path_buf(),
            shape: header.shape.clone(),
            needed,
            found,
        };
        let count = header.elem_count().unwrap_or(usize::MAX);
        let nbytes = count
            .checked_mul(dtype.size())
            .ok_or_else(|| truncated(u64::MAX))?;
        if found < nbytes as u64 {
            return Err(truncated(nbytes as u64));
        }
        Ok(NpyArray {
            path: path.to_path_buf(),
            dtype,
            shape: header.shape,
            len: count,
            offset: header.data_offset,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.len * self.dtype.size()]
    }

    /// Whether the data can be viewed in place as a typed slice: aligned for the dtype and
    /// stored in host byte order.
    pub fn is_aligned(&self) -> bool {
        cfg!(target_endian = "little")
            && (self.map.as_ptr() as usize + self.offset).is_multiple_of(self.dtype.size())
    }

    /// The data as a flat slice of `T`, zero-copy from the map; None if `T` is not this
    /// file's dtype or the data is not aligned for it (see [`NpyArray::is_aligned`]; use
    /// [`NpyArray::read_into`] or [`NpyArray::get`], which work at any offset).
    pub fn as_slice<T: NpyElement>(&self) -> Option<&[T]> {
        if T::DTYPE != self.dtype || !self.is_aligned() {
            return None;
        }
        let bytes = self.bytes();
        // SAFETY: the start is aligned for T (checked above), the length is a whole number
        // of T, the host is little-endian like the file, and every bit pattern is a valid
        // f32/f64/i64/u8.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, self.len) })
    }

    /// Every element in order, read from the map at any alignment; None if `T` is not
    /// this file's dtype.
    pub fn iter<T: NpyElement>(&self) -> Option<impl Iterator<Item = T> + '_> {
        if T::DTYPE != self.dtype {
            return None;
        }
        Some(self.bytes().chunks_exact(self.dtype.size()).map(T::from_le))
    }

    /// Element `i`, read from the map at any alignment; None if `T` is not this file's
    /// dtype or `i` is out of range.
    pub fn get<T: NpyElement>(&self, i: usize) -> Option<T> {
        if T::DTYPE != self.dtype || i >= self.len {
            return None;
        }
        let size = self.dtype.size();
        let at = self.offset + i * size;
        Some(T::from_le(&self.map[at..at + size]))
    }

    /// Appends elements `start..start + count` to `out` with one copy from the map, at any
    /// alignment. Fails on a dtype mismatch or a range outside the data.
    pub fn read_into<T: NpyElement>(
        &self,
        start: usize,
        count: usize,
        out: &mut Vec<T>,
    ) -> Result<(), DataError> {
        if T::DTYPE != self.dtype {
            return Err(DataError::InvalidArgument(format!(
                "{}: reading {} from a {} file",
                self.path.display(),
                T::DTYPE.name(),
                self.dtype.name()
            )));
        }
        let end = start.checked_add(count).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(DataError::InvalidArgument(format!(
                "{}: elements {start}..{start}+{count} are outside the {} elements of the file",
                self.path.display(),
                self.len
            )));
        };
        files::try_reserve(out, count, &self.path, "data read from the .npy file")?;
        if let Some(all) = self.as_slice::<T>() {
            out.extend_from_slice(&all[start..end]);
        } else {
            let size = self.dtype.size();
            let bytes = &self.bytes()[start * size..end * size];
            out.extend(bytes.chunks_exact(size).map(T::from_le));
        }
        Ok(())
    }

    /// All elements as a vector, allocated fallibly (an error, not an abort, when the
    /// file holds more than memory does).
    pub fn to_vec<T: NpyElement>(&self) -> Result<Vec<T>, DataError> {
        let mut out = Vec::new();
        self.read_into(0, self.len, &mut out)?;
        Ok(out)
    }
}

/// A version 1.0 header (2.0 if it does not fit) for `descr` and `shape`, padded with
/// spaces so the data starts on a 64-byte boundary, as numpy does.
pub fn encode_header(descr: &str, fortran_order: bool, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let order = if fortran_order { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {dims}, }}");
    let build = |prefix: usize, version: u8| -> Vec<u8> {
        let unpadded = prefix + dict.len() + 1;
        let total = unpadded.div_ceil(64) * 64;
        let header_len = total - prefix;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header_len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_len as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        out
    };
    if dict.len() + 1 + 10 + 63 <= u16::MAX as usize {
        build(10, 1)
    } else {
        build(12, 2)
    }
}

/// Writes `data` with `shape` as a C-order little-endian `.npy` file.
pub fn write_npy<T: NpyElement>(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[T],
) -> Result<(), DataError> {
    let path = path.as_ref();
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(data.len()) {
        return Err(DataError::InvalidArgument(format!(
            "writing {}: shape {shape:?} does not match {} values",
            path.display(),
            data.len()
        )));
    }
    let file = File::create(path).map_err(|e| DataError::io(path, "create", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write_err = |e| DataError::io(path, "write", e);
    w.write_all(&encode_header(T::DTYPE.descr(), false, shape))
        .map_err(write_err)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in data.chunks((1 << 16) / T::DTYPE.size()) {
        buf.clear();
        chunk.iter().for_each(|&x| x.put_le(&mut buf));
        w.write_all(&buf).map_err(write_err)?;
    }
    w.flush().map_err(write_err)?;
    Ok(())
}

pub fn write_npy_f32(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[f32],
) -> Result<(), DataError> {
    write_npy(path, shape, data)
}
pub fn write_npy_i64(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[i64],
) -> Result<(), DataError> {
    write_npy(path, shape, data)
}
pub fn write_npy_u8(path: impl AsRef<Path>, shape: &[usize], data: &[u8]) -> Result<(), DataError> {
    write_npy(path, shape, data)
}

/// Reads a whole float64 `.npy` file (reference values) as (shape, values).
pub fn read_npy_f64(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f64>), DataError> {
    let a = NpyArray::open(path, DType::F64)?;
    let v = a.to_vec::<f64>()?;
    Ok((a.shape.clone(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        for shape in [vec![], vec![3], vec![70000, 1, 28, 28]] {
            let h = encode_header("<f4", false, &shape);
            assert_eq!(h.len() % 64, 0);
            let p = parse_header(&h, Path::new("x.npy")).unwrap();
            assert_eq!(p.shape, shape);
            assert_eq!(p.descr, "<f4");
            assert_eq!(p.data_offset, h.len());
        }
    }

    #[test]
    fn numpy_style_variants_parse() {
        let text = b"{\"descr\":\"<i8\",\"fortran_order\":False,\"shape\":(3L,4L)}\n";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text);
        let p = parse_header(&bytes, Path::new("x.npy")).unwrap();
        assert_eq!(p.shape, vec![3, 4]);
    }

    #[test]
    fn big_endian_and_fortran_rejected() {
        let h = encode_header(">f4", false, &[2, 2]);
        assert!(matches!(
            parse_header(&h, Path::new("x")),
            Err(DataError::NpyByteOrder { .. })
        ));
        let h = encode_header("<f4", true, &[2, 2]);
        assert!(matches!(
            parse_header(&h, Path::new("x")),
            Err(DataError::NpyFortranOrder { .. })
        ));
        // A vector is the same in both orders; numpy may mark it either way.
        let h = encode_header("<f4", true, &[5]);
        assert!(parse_header(&h, Path::new("x")).is_ok());
    }
}
