//! `sluice-fuzz`: runs the fuzz targets for as long as asked (docs/fuzzing.md).
//!
//! ```text
//! sluice-fuzz list
//! sluice-fuzz run <target|all> [--seconds N] [--runs N] [--seed N] [--keep DIR]
//! sluice-fuzz replay <target> <file>...
//! ```

use sluice_fuzz::engine::{self, Options, Report};
use sluice_fuzz::{TARGETS, Target, coverage, target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!(
        "usage: sluice-fuzz list\n       sluice-fuzz run <target|all> [--seconds N] [--runs N] [--seed N] [--keep DIR]\n       sluice-fuzz replay <target> <file>..."
    );
    ExitCode::from(2)
}

fn progress(t: &Target, r: &Report) {
    eprintln!(
        "{}: {} runs ({:.0}/s), {} edges, pool {}, {} findings",
        t.name,
        r.runs,
        r.runs as f64 / r.elapsed.as_secs_f64().max(1e-9),
        r.edges,
        r.pool,
        r.findings.len()
    );
}

fn number(args: &[String], flag: &str) -> Result<Option<u64>, String> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{flag} needs a whole number")),
    }
}

fn run(which: &str, args: &[String]) -> Result<bool, String> {
    let targets: Vec<&Target> = match which {
        "all" => TARGETS.iter().collect(),
        name => vec![target(name).ok_or_else(|| format!("no target `{name}` (sluice-fuzz list)"))?],
    };
    let seconds = number(args, "--seconds")?;
    let runs = number(args, "--runs")?;
    let seed = number(args, "--seed")?.unwrap_or(1);
    let keep_root = match args.iter().position(|a| a == "--keep") {
        Some(i) => PathBuf::from(args.get(i + 1).ok_or("--keep needs a directory")?),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/sluice-fuzz"),
    };
    eprintln!(
        "coverage: {}",
        if coverage::available() {
            "on (instrumented build)"
        } else {
            "off (plain build: blind mutation; scripts/fuzz builds with coverage)"
        }
    );
    let mut clean = true;
    for t in targets {
        let keep = keep_root.join(t.name);
        let mut seeds: Vec<Vec<u8>> = engine::load_dir(&engine::corpus_dir(t))
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        seeds.extend(
            engine::load_dir(&engine::regressions_dir(t))
                .into_iter()
                .map(|(_, d)| d),
        );
        seeds.extend(engine::load_dir(&keep).into_iter().map(|(_, d)| d));
        let opts = Options {
            seed,
            runs: runs.or(if seconds.is_none() {
                Some(100_000)
            } else {
                None
            }),
            duration: seconds.map(Duration::from_secs),
            keep: Some(keep),
            progress: Some(progress),
        };
        let r = engine::fuzz(t, seeds, &opts);
        println!(
            "{}: {} runs in {:.1} s ({:.0}/s), {:.0} % accepted, {} edges, pool {}, slowest input {:.1} ms, {} findings",
            t.name,
            r.runs,
            r.elapsed.as_secs_f64(),
            r.runs as f64 / r.elapsed.as_secs_f64().max(1e-9),
            100.0 * r.accepted as f64 / r.runs.max(1) as f64,
            r.edges,
            r.pool,
            r.slowest.as_secs_f64() * 1e3,
            r.findings.len()
        );
        for f in &r.findings {
            clean = false;
            let dir = engine::regressions_dir(t);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = dir.join(format!("crash-{}", engine::name_of(&f.input)));
            std::fs::write(&path, &f.input).map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "  finding kept as {}:\n    {}",
                path.display(),
                f.message.replace('\n', "\n    ")
            );
        }
    }
    Ok(clean)
}

fn replay(which: &str, files: &[String]) -> Result<bool, String> {
    let t = target(which).ok_or_else(|| format!("no target `{which}` (sluice-fuzz list)"))?;
    let mut clean = true;
    for f in files {
        let input = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
        match engine::run_one(t, &input) {
            Ok(accepted) => println!(
                "{f}: ok ({})",
                if accepted { "accepted" } else { "refused" }
            ),
            Err(m) => {
                clean = false;
                println!("{f}: {m}");
            }
        }
    }
    Ok(clean)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("list") => {
            for t in TARGETS {
                println!("{} ({:?} input)", t.name, t.shape);
            }
            Ok(true)
        }
        Some("run") if args.len() >= 2 => run(&args[1], &args[2..]),
        Some("replay") if args.len() >= 3 => replay(&args[1], &args[2..]),
        _ => return usage(),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sluice-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}
