//! The README's scripts, run as a new user runs them (against the test Synapse that
//! scripts/test starts).

use std::process::Command;

fn synapse_dir() -> String {
    std::env::var("SLUICE_TEST_SYNAPSE_DIR").expect(
        "SLUICE_TEST_SYNAPSE_DIR is not set: run the suite through scripts/test, which starts the test Synapse",
    )
}

fn register(user: &str) -> std::process::Output {
    Command::new("scripts/synapse")
        .args(["register", &synapse_dir(), user, "a-password-1"])
        .output()
        .expect("scripts/synapse runs")
}

/// scripts/run registers its demo users at every start, with the homeserver of the last
/// start kept: registering a user that exists must succeed (it failed under `pipefail`,
/// so the second `scripts/run` died with "cannot register sfu").
#[test]
fn registering_an_existing_user_again_succeeds() {
    let user = format!("twice{}", std::process::id());
    for attempt in ["first", "second"] {
        let out = register(&user);
        assert!(
            out.status.success(),
            "{attempt} registration of {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real failure still fails, and says why.
#[test]
fn a_registration_that_cannot_work_names_the_user_and_the_reason() {
    let out = Command::new("scripts/synapse")
        .args(["register", "/nonexistent-synapse-dir", "nobody", "pw"])
        .output()
        .expect("scripts/synapse runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nobody") || err.contains("homeserver.yaml"),
        "{err}"
    );
}
