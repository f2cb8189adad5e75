//! Log-mel spectrograms as in MLA.md: a fixed-length clip, STFT with a periodic Hann
//! window (no centering), power spectrum, an HTK mel filterbank, log. Computed in f64.

use std::f64::consts::PI;

pub const SAMPLE_RATE: u32 = 8000;
pub const CLIP_SAMPLES: usize = 8192;
pub const N_FFT: usize = 256;
pub const HOP: usize = 128;
pub const N_MELS: usize = 40;
pub const FMIN: f64 = 0.0;
pub const FMAX: f64 = 4000.0;
pub const LOG_OFFSET: f64 = 1e-6;
/// Frames of an uncentred STFT over the clip.
pub const N_FRAMES: usize = 1 + (CLIP_SAMPLES - N_FFT) / HOP;
pub const N_BINS: usize = N_FFT / 2 + 1;

/// An in-place iterative radix-2 complex FFT of a fixed power-of-two size.
pub struct Fft {
    n: usize,
    /// exp(-2 pi i k / n) for k < n/2.
    twiddles: Vec<(f64, f64)>,
    bitrev: Vec<usize>,
}

impl Fft {
    /// Panics if `n` is not a power of two (a programming error: sizes are constants).
    pub fn new(n: usize) -> Fft {
        assert!(n.is_power_of_two(), "FFT size {n} is not a power of two");
        let bits = n.trailing_zeros();
        let bitrev = (0..n)
            .map(|i| {
                if bits == 0 {
                    0
                } else {
                    i.reverse_bits() >> (usize::BITS - bits)
                }
            })
            .collect();
        let twiddles = (0..n / 2)
            .map(|k| {
                let a = -2.0 * PI * k as f64 / n as f64;
                (a.cos(), a.sin())
            })
            .collect();
        Fft {
            n,
            twiddles,
            bitrev,
        }
    }

    /// Forward transform of (re, im), in place: X_k = sum_t x_t exp(-2 pi i k t / n).
    pub fn forward(&self, re: &mut [f64], im: &mut [f64]) {
        assert!(
            re.len() == self.n && im.len() == self.n,
            "FFT buffers must have length {}",
            self.n
        );
        for i in 0..self.n {
            let j = self.bitrev[i];
            if i < j {
                re.swap(i, j);
                im.swap(i, j);
            }
        }
        let mut len = 2;
        while len <= self.n {
            let half = len / 2;
            let step = self.n / len;
            for start in (0..self.n).step_by(len) {
                for k in 0..half {
                    let (wr, wi) = self.twiddles[k * step];
                    let (a, b) = (start + k, start + k + half);
                    let tr = re[b] * wr - im[b] * wi;
                    let ti = re[b] * wi + im[b] * wr;
                    re[b] = re[a] - tr;
                    im[b] = im[a] - ti;
                    re[a] += tr;
                    im[a] += ti;
                }
            }
            len *= 2;
        }
    }
}

/// The periodic Hann window of length n: 0.5 - 0.5 cos(2 pi t / n).
pub fn hann_periodic(n: usize) -> Vec<f64> {
    (0..n)
        .map(|t| 0.5 - 0.5 * (2.0 * PI * t as f64 / n as f64).cos())
        .collect()
}

pub fn hz_to_mel_htk(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

pub fn mel_to_hz_htk(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// Triangular HTK mel filterbank, unnormalised (peak 1), `[n_mels, n_fft/2 + 1]` row-major:
/// band edges equally spaced in mel between fmin and fmax; bin k sits at k * sr / n_fft Hz.
pub fn mel_filterbank(
    n_mels: usize,
    n_fft: usize,
    sample_rate: f64,
    fmin: f64,
    fmax: f64,
) -> Vec<f64> {
    let n_bins = n_fft / 2 + 1;
    let (mlo, mhi) = (hz_to_mel_htk(fmin), hz_to_mel_htk(fmax));
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz_htk(mlo + (mhi - mlo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut fb = vec![0.0; n_mels * n_bins];
    for m in 0..n_mels {
        let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
        for k in 0..n_bins {
            let f = k as f64 * sample_rate / n_fft as f64;
            let rising = (f - lo) / (mid - lo);
            let falling = (hi - f) / (hi - mid);
            fb[m * n_bins + k] = rising.min(falling).max(0.0);
        }
    }
    fb
}

/// Reusable state for computing log-mel spectrograms of many clips.
pub struct LogMel {
    fft: Fft,
    window: Vec<f64>,
    filterbank: Vec<f64>,
    /// Per band, the bins where its triangle is non-zero (skipping exact zeros leaves
    /// every sum bit-identical).
    support: Vec<(usize, usize)>,
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogMel {
    pub fn new() -> LogMel {
        let filterbank = mel_filterbank(N_MELS, N_FFT, SAMPLE_RATE as f64, FMIN, FMAX);
        let support = filterbank
            .chunks_exact(N_BINS)
            .map(|w| {
                let lo = w.iter().position(|&x| x != 0.0).unwrap_or(0);
                let hi = w.iter().rposition(|&x| x != 0.0).map_or(lo, |i| i + 1);
                (lo, hi)
            })
            .collect();
        LogMel {
            fft: Fft::new(N_FFT),
            window: hann_periodic(N_FFT),
            filterbank,
            support,
        }
    }

    /// log(mel power + 1e-6) of the first CLIP_SAMPLES samples (zero-padded), as
    /// `[N_MELS, N_FRAMES]` row-major; samples are scaled by 1/32768.
    pub fn compute(&self, samples: &[i16]) -> Vec<f64> {
        let mut clip = vec![0.0f64; CLIP_SAMPLES];
        for (c, &s) in clip.iter_mut().zip(samples) {
            *c = s as f64 / 32768.0;
        }
        let mut power = vec![0.0f64; N_FRAMES * N_BINS];
        let (mut re, mut im) = (vec![0.0; N_FFT], vec![0.0; N_FFT]);
        for frame in 0..N_FRAMES {
            let x = &clip[frame * HOP..frame * HOP + N_FFT];
            for t in 0..N_FFT {
                re[t] = x[t] * self.window[t];
                im[t] = 0.0;
            }
            self.fft.forward(&mut re, &mut im);
            let p = &mut power[frame * N_BINS..(frame + 1) * N_BINS];
            for k in 0..N_BINS {
                p[k] = re[k] * re[k] + im[k] * im[k];
            }
        }
        let mut out = vec![0.0; N_MELS * N_FRAMES];
        for (m, &(lo, hi)) in self.support.iter().enumerate() {
            let w = &self.filterbank[m * N_BINS + lo..m * N_BINS + hi];
            for frame in 0..N_FRAMES {
                let p = &power[frame * N_BINS + lo..frame * N_BINS + hi];
                let e: f64 = w.iter().zip(p).map(|(a, b)| a * b).sum();
                out[m * N_FRAMES + frame] = (e + LOG_OFFSET).ln();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_matches_naive_dft() {
        let n = 64;
        let x: Vec<f64> = (0..n)
            .map(|t| ((t * 37 % 11) as f64 - 5.0) * 0.3 + (t as f64 * 0.7).sin())
            .collect();
        let (mut re, mut im) = (x.clone(), vec![0.0; n]);
        Fft::new(n).forward(&mut re, &mut im);
        for k in 0..n {
            let (mut sr, mut si) = (0.0, 0.0);
            for (t, &v) in x.iter().enumerate() {
                let a = -2.0 * PI * (k * t) as f64 / n as f64;
                sr += v * a.cos();
                si += v * a.sin();
            }
            assert!(
                (sr - re[k]).abs() < 1e-9 && (si - im[k]).abs() < 1e-9,
                "bin {k}"
            );
        }
    }

    #[test]
    fn frame_count() {
        assert_eq!(N_FRAMES, 63);
    }
}
