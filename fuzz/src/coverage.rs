//! Edge coverage from LLVM's SanitizerCoverage inline 8-bit counters, when the binary was
//! built with them (`scripts/fuzz` does: `-Cpasses=sancov-module` and
//! `-Cllvm-args=-sanitizer-coverage-inline-8bit-counters`, options of stable rustc). Each
//! instrumented module registers its counter array through
//! [`__sanitizer_cov_8bit_counters_init`] before `main`; an input is interesting when it
//! moves some counter into a hit-count bucket no earlier input reached. In a plain build
//! nothing registers and the engine runs without feedback.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Most counter arrays kept (one per instrumented module; the linker usually merges them
/// into one section, so all modules pass the same range).
const MAX_REGIONS: usize = 64;

static STARTS: [AtomicPtr<u8>; MAX_REGIONS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_REGIONS];
static LENS: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static REGIONS: AtomicUsize = AtomicUsize::new(0);

/// Called by each instrumented module's constructor with the bounds of its counters.
///
/// # Safety
/// Called by the SanitizerCoverage runtime contract: `start..stop` is a counter array that
/// lives as long as the program.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let len = (stop as usize).saturating_sub(start as usize);
    let n = REGIONS.load(Ordering::Relaxed);
    if STARTS[..n.min(MAX_REGIONS)]
        .iter()
        .any(|s| s.load(Ordering::Relaxed) == start)
    {
        return;
    }
    if n < MAX_REGIONS && len > 0 {
        STARTS[n].store(start, Ordering::Relaxed);
        LENS[n].store(len, Ordering::Relaxed);
        REGIONS.store(n + 1, Ordering::Relaxed);
    }
}

fn regions() -> impl Iterator<Item = &'static mut [u8]> {
    (0..REGIONS.load(Ordering::Relaxed).min(MAX_REGIONS)).map(|i| {
        let p = STARTS[i].load(Ordering::Relaxed);
        let n = LENS[i].load(Ordering::Relaxed);
        // SAFETY: registered by the instrumentation as a static array of `n` counters; only
        // the single fuzzing thread reads and clears it between runs.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    })
}

/// Whether this binary is instrumented.
pub fn available() -> bool {
    regions().any(|r| !r.is_empty())
}

/// The hit-count bucket of a counter (AFL's: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+).
fn bucket(c: u8) -> u8 {
    match c {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        _ => 128,
    }
}

/// The buckets every counter reached so far, over all runs.
#[derive(Default)]
pub struct Seen {
    buckets: Vec<u8>,
    edges: usize,
}

impl Seen {
    /// Clears the counters before a run.
    pub fn reset(&self) {
        for r in regions() {
            r.fill(0);
        }
    }

    /// After a run: folds its counters in; true when it reached something new.
    pub fn merge(&mut self) -> bool {
        let mut new = false;
        let mut i = 0;
        for r in regions() {
            if self.buckets.len() < i + r.len() {
                self.buckets.resize(i + r.len(), 0);
            }
            for (c, seen) in r.iter().zip(&mut self.buckets[i..]) {
                let b = bucket(*c);
                if b & !*seen != 0 {
                    if *seen == 0 {
                        self.edges += 1;
                    }
                    *seen |= b;
                    new = true;
                }
            }
            i += r.len();
        }
        new
    }

    /// Edges (counters) ever hit.
    pub fn edges(&self) -> usize {
        self.edges
    }
}
