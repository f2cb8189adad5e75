//! WAV files: RIFF/WAVE with a PCM `fmt ` chunk and a `data` chunk. Only what FSDD uses
//! (mono, 16-bit PCM) is accepted; anything else is rejected with the reason.

use std::path::Path;

use crate::data::error::DataError;
use crate::data::files;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wav {
    pub sample_rate: u32,
    pub samples: Vec<i16>,
}

/// Largest WAV file read: 64 MiB is 35 minutes of 16 kHz mono 16-bit audio (an FSDD
/// recording is under a second). Only regular files are read, so a recording that is a
/// link to `/dev/zero` is refused instead of read until memory runs out.
pub const MAX_WAV_BYTES: u64 = 64 << 20;

pub fn read_wav(path: &Path) -> Result<Wav, DataError> {
    let bytes = files::read_regular(path, MAX_WAV_BYTES, "WAV file")?;
    parse_wav(&bytes, path)
}

/// Parses a mono 16-bit PCM WAV file; `path` is only used in errors.
pub fn parse_wav(bytes: &[u8], path: &Path) -> Result<Wav, DataError> {
    let bad = |problem: String| DataError::Wav {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file".into()));
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(pos + 4) as usize;
        let body = pos + 8;
        let end = body
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "chunk {:?} of {size} bytes runs past the end of the file",
                    id.escape_ascii().to_string()
                ))
            })?;
        match id {
            b"fmt " => {
                if size < 16 {
                    return Err(bad(format!("fmt chunk has {size} bytes, fewer than 16")));
                }
                format = Some((
                    u16_at(body),
                    u16_at(body + 2),
                    u32_at(body + 4),
                    u16_at(body + 14),
                ));
            }
            b"data" => {
                let (tag, channels, rate, bits) =
                    format.ok_or_else(|| bad("data chunk before the fmt chunk".into()))?;
                if tag != 1 {
                    return Err(bad(format!(
                        "audio format {tag} is not PCM (1); only 16-bit PCM is supported"
                    )));
                }
                if channels != 1 {
                    return Err(bad(format!("{channels} channels; only mono is supported")));
                }
                if bits != 16 {
                    return Err(bad(format!(
                        "{bits} bits per sample; only 16-bit PCM is supported"
                    )));
                }
                if !size.is_multiple_of(2) {
                    return Err(bad(format!(
                        "data chunk of {size} bytes is not a whole number of 16-bit samples"
                    )));
                }
                let samples = bytes[body..end]
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                return Ok(Wav {
                    sample_rate: rate,
                    samples,
                });
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        pos = end + (size & 1);
    }
    Err(bad(if format.is_none() {
        "no fmt chunk"
    } else {
        "no data chunk"
    }
    .into()))
}

/// A minimal mono 16-bit PCM WAV file (for fixtures).
pub fn encode_wav(sample_rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut v = Vec::with_capacity(44 + samples.len() * 2);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&sample_rate.to_le_bytes());
    v.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    samples
        .iter()
        .for_each(|s| v.extend_from_slice(&s.to_le_bytes()));
    v
}
