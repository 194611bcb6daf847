//! The fuzzing loop: seeds in, mutants run one at a time with panics caught, inputs that
//! reach new coverage kept, findings collected.

use crate::Target;
use crate::coverage::{self, Seen};
use crate::mutate::{Dictionary, Rng, mutate};
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Largest pool of inputs mutated from (seeds plus kept mutants).
const MAX_POOL: usize = 10_000;
/// Distinct findings kept per run.
const MAX_FINDINGS: usize = 16;

/// A target's seed corpus, in the repository.
pub fn corpus_dir(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name)
}

/// A target's kept findings, in the repository: each is replayed by the tests.
pub fn regressions_dir(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target.name)
}

/// Every file in `dir` (none when it does not exist), by name.
pub fn load_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect();
    out.sort();
    out
}

/// A stable file name for an input (FNV-1a of its bytes).
pub fn name_of(input: &[u8]) -> String {
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs (once) a panic hook that, on a thread running a target, records the panic
/// instead of printing it; other panics print as before.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|m| *m.borrow_mut() = info.to_string());
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `target` on `input`: whether the parser accepted it, or the panic message.
pub fn run_one(target: &Target, input: &[u8]) -> Result<bool, String> {
    install_hook();
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    QUIET.with(|q| q.set(false));
    r.map_err(|_| LAST_PANIC.with(|m| std::mem::take(&mut *m.borrow_mut())))
}

/// How long and how a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the mutation generator (runs repeat for a seed, without coverage).
    pub seed: u64,
    /// Stop after this many mutants.
    pub runs: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Where inputs that reached new coverage are written (none: kept in memory only).
    pub keep: Option<PathBuf>,
    /// Called about every 10 s with the report so far.
    pub progress: Option<fn(&Target, &Report)>,
}

/// A target's input that panicked or failed a check.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message (with its location).
    pub message: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs run (seeds and mutants).
    pub runs: u64,
    /// Of those, inputs the parser accepted.
    pub accepted: u64,
    /// Seeds the parser accepted.
    pub seeds_accepted: usize,
    /// Inputs in the pool at the end.
    pub pool: usize,
    /// Edges reached (0 without instrumentation).
    pub edges: usize,
    /// The slowest single input.
    pub slowest: Duration,
    /// Distinct findings (by message), at most 16.
    pub findings: Vec<Finding>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Runs `target` over `seeds` and then over mutants of them until `opts` says stop.
pub fn fuzz(target: &Target, seeds: Vec<Vec<u8>>, opts: &Options) -> Report {
    let started = Instant::now();
    let guided = coverage::available();
    let mut seen = Seen::default();
    let mut rng = Rng::new(opts.seed);
    let mut dict = Dictionary::default();
    let mut pool = if seeds.is_empty() {
        vec![Vec::new()]
    } else {
        seeds
    };
    for s in &pool {
        dict.learn(target.shape, s);
    }
    let mut report = Report::default();
    let mut last_progress = Instant::now();
    // Whether the input reached new coverage, and whether it was accepted.
    let record = |input: &[u8], report: &mut Report, seen: &mut Seen| -> (bool, bool) {
        seen.reset();
        let t = Instant::now();
        let r = run_one(target, input);
        report.slowest = report.slowest.max(t.elapsed());
        report.runs += 1;
        let new = seen.merge();
        if r == Ok(true) {
            report.accepted += 1;
        }
        if let Err(message) = r {
            let key = message.lines().next().unwrap_or("").to_owned();
            if report.findings.len() < MAX_FINDINGS
                && !report.findings.iter().any(|f| f.message.starts_with(&key))
            {
                report.findings.push(Finding {
                    input: input.to_vec(),
                    message,
                });
            }
            return (false, false);
        }
        (new, r == Ok(true))
    };
    for s in pool.clone() {
        let before = report.accepted;
        record(&s, &mut report, &mut seen);
        report.seeds_accepted += (report.accepted > before) as usize;
    }
    let mut mutants = 0u64;
    loop {
        if opts.runs.is_some_and(|n| mutants >= n)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let base = &pool[rng.below(pool.len())];
        let other = &pool[rng.below(pool.len())];
        let mut m = mutate(target.shape, base, other, &mut rng, &dict);
        m.truncate(target.max_len);
        mutants += 1;
        let (new, accepted) = record(&m, &mut report, &mut seen);
        // Blind (uninstrumented), some accepted mutants are kept anyway, so runs walk
        // further from the seeds than one round of mutations without drifting into inputs
        // the first check refuses.
        let walk = !guided && accepted && pool.len() < 512 && rng.one_in(8);
        if pool.len() < MAX_POOL && (new || walk) {
            if new && let Some(dir) = &opts.keep {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join(name_of(&m)), &m);
            }
            pool.push(m);
        }
        if let Some(p) = opts.progress
            && last_progress.elapsed() >= Duration::from_secs(10)
        {
            last_progress = Instant::now();
            report.pool = pool.len();
            report.edges = seen.edges();
            report.elapsed = started.elapsed();
            p(target, &report);
        }
    }
    report.pool = pool.len();
    report.edges = seen.edges();
    report.elapsed = started.elapsed();
    report
}
