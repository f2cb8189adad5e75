//! Mini-batches over a memory-mapped dataset, assembled one batch ahead on a worker thread
//! so the training step never waits on the page cache.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::dataset::Dataset;
use super::error::DataError;
use crate::rng::Rng;

/// Stream labels keep the loader's random draws independent of every other use of the seed.
const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_4531; // "SHUFFLE1"
const SUBSET_STREAM: u64 = 0x5355_4253_4554_3031; // "SUBSET01"
/// Batches assembled ahead of the consumer.
const PREFETCH: usize = 2;

/// One modality's inputs for a batch: only the samples that have it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModalityBatch {
    /// Positions in the batch (0..batch len) having this modality, ascending.
    pub present: Vec<usize>,
    /// `present.len()` rows of the modality's row length, row-major.
    pub data: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Dataset sample ids, in batch order.
    pub samples: Vec<usize>,
    pub labels: Vec<u32>,
    /// One entry per modality, in manifest order.
    pub modalities: Vec<ModalityBatch>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Assembles the batch of `samples` (already validated to be in range).
pub fn make_batch(dataset: &Dataset, samples: &[usize]) -> Result<Batch, DataError> {
    let labels = samples.iter().map(|&s| dataset.label(s) as u32).collect();
    let mut modalities = Vec::with_capacity(dataset.modalities().len());
    for m in 0..dataset.modalities().len() {
        let row_len = dataset.row_len(m).unwrap_or(0);
        let mut present = Vec::new();
        // Row lengths are bounded by the dataset, batch sizes by the caller: their product
        // is checked, and allocated fallibly, rather than trusted.
        let mut data = Vec::new();
        let want = samples.len().checked_mul(row_len);
        if want.is_none_or(|n| data.try_reserve_exact(n).is_err()) {
            return Err(DataError::Loader(format!(
                "a batch of {} samples of {} values each (modality {m}) does not fit in memory",
                samples.len(),
                row_len
            )));
        }
        for (pos, &s) in samples.iter().enumerate() {
            if dataset.read_row_into(m, s, &mut data)? {
                present.push(pos);
            }
        }
        modalities.push(ModalityBatch { present, data });
    }
    Ok(Batch {
        samples: samples.to_vec(),
        labels,
        modalities,
    })
}

/// The order of one epoch: `samples` as given, or shuffled from (seed, epoch).
pub fn epoch_order(samples: &[usize], shuffle: Option<u64>, epoch: u64) -> Vec<usize> {
    let mut order = samples.to_vec();
    if let Some(seed) = shuffle {
        let base = Rng::derive(seed, SHUFFLE_STREAM).next_u64();
        Rng::derive(base, epoch).shuffle(&mut order);
    }
    order
}

/// A seeded random subset of `n` of `samples` (all of them if n >= len), ascending.
pub fn seeded_subset(samples: &[usize], n: usize, seed: u64) -> Vec<usize> {
    let mut chosen = samples.to_vec();
    if n < chosen.len() {
        Rng::derive(seed, SUBSET_STREAM).shuffle(&mut chosen);
        chosen.truncate(n);
    }
    chosen.sort_unstable();
    chosen
}

/// One epoch of mini-batches. The worker thread stops as soon as the loader is dropped.
pub struct Loader {
    num_batches: usize,
    rx: Option<Receiver<Result<Batch, DataError>>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Batches over `samples` (dataset sample ids); with `shuffle = Some(seed)` the order is
    /// reshuffled every epoch from (seed, epoch); the last batch may be short.
    pub fn new(
        dataset: Arc<Dataset>,
        samples: Vec<usize>,
        batch_size: usize,
        shuffle: Option<u64>,
        epoch: u64,
    ) -> Result<Loader, DataError> {
        Self::share(dataset, samples, batch_size, shuffle, epoch, 0, 1)
    }

    /// As [`Loader::new`], each batch cut to rank `rank`'s share of it in a
    /// data-parallel job of `world` ranks ([`crate::dist::share`]): every
    /// rank sees the same number of batches, a share may be empty.
    pub fn share(
        dataset: Arc<Dataset>,
        samples: Vec<usize>,
        batch_size: usize,
        shuffle: Option<u64>,
        epoch: u64,
        rank: usize,
        world: usize,
    ) -> Result<Loader, DataError> {
        if world == 0 || rank >= world {
            return Err(DataError::InvalidArgument(format!(
                "rank {rank} of a job of {world} ranks"
            )));
        }
        if batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        if let Some(&s) = samples.iter().find(|&&s| s >= dataset.len()) {
            return Err(DataError::SampleOutOfRange {
                sample: s,
                len: dataset.len(),
            });
        }
        let order = epoch_order(&samples, shuffle, epoch);
        let num_batches = order.len().div_ceil(batch_size);
        let (tx, rx) = sync_channel(PREFETCH);
        let worker = std::thread::Builder::new()
            .name("mla-loader".into())
            .spawn(move || {
                for chunk in order.chunks(batch_size) {
                    let mine = &chunk[crate::dist::share(chunk.len(), rank, world)];
                    let batch = make_batch(&dataset, mine);
                    let failed = batch.is_err();
                    // A send error means the loader was dropped: stop quietly.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::Loader(format!("cannot start the prefetch thread: {e}")))?;
        Ok(Loader {
            num_batches,
            rx: Some(rx),
            worker: Some(worker),
        })
    }

    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok();
        if item.is_none() {
            // Worker finished (or failed after sending its error): release it.
            self.rx = None;
            if let Some(w) = self.worker.take() {
                if w.join().is_err() {
                    return Some(Err(DataError::Loader(
                        "the prefetch thread panicked".into(),
                    )));
                }
            }
        }
        item
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel first unblocks a worker waiting to send.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
