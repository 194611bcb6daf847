//! `sluice-loadtest`: simulated call participants and the benchmark report.
//!
//! Not built yet: the tool is specified in the project's load-test issue. It exists as a
//! workspace member so its dependencies build and lint with the rest of the workspace.

fn main() -> std::process::ExitCode {
    eprintln!(
        "sluice-loadtest is not implemented yet; see loadtests/README.md for what it will measure"
    );
    std::process::ExitCode::from(2)
}
