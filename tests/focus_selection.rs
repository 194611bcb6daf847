#![recursion_limit = "256"]
//! Focus selection (`oldest_membership`) against a real Synapse: a member cannot make
//! itself the oldest member of a call by back-dating `created_ts`.

mod support;

use serde_json::json;
use std::time::Duration;
use support::matrix::*;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_dated_membership_does_not_take_the_call_elsewhere() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let alice = Participant::new(0, &sluice, true).await;
    let mallory = Participant::new(1, &sluice, true).await;
    let bob = Participant::new(2, &sluice, true).await;
    let room = call_room(&alice, &[&mallory, &bob], &sluice).await;
    let room_id = room.room_id().to_owned();

    // Alice starts the call on this Sluice.
    alice
        .write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    alice.invite().await;
    alice
        .wait_for("alice's answer", LONG, |p| {
            !p.received("m.call.answer").is_empty()
        })
        .await;

    // Mallory joins later, claims to have been in the call since 1970 and names another
    // focus: by `created_ts` alone she is the oldest member and her focus serves the call.
    let r = room_of(&mallory, &room_id).await;
    let content = json!({"application": "m.call", "call_id": "", "scope": "m.room",
        "device_id": mallory.device_id, "expires": now_ms() + 3_600_000, "created_ts": 1,
        "focus_active": {"type": "sluice", "focus_selection": "oldest_membership"},
        "foci_preferred": [{"type": "sluice", "user_id": sluice.user_id, "device_id": "ELSEWHERE"}]});
    mallory.write_membership_content(&r, content).await;

    // Bob joins after her (his state event is after hers, so Sluice has read hers by the
    // time his invite arrives): Sluice still serves the call, Alice's membership is older.
    let r = room_of(&bob, &room_id).await;
    bob.write_membership(&r, sluice.transport(), 3_600_000)
        .await;
    bob.invite().await;
    bob.wait_for("bob's answer or hangup", LONG, |p| {
        !p.received("m.call.answer").is_empty() || p.hangup_reason().is_some()
    })
    .await;
    let hangups = bob.received("m.call.hangup");
    assert!(
        hangups.is_empty(),
        "bob was refused: {}",
        hangups[0].content["error"]
    );
    assert_eq!(sluice.signaling().session_count(), 2);
    assert!(alice.hangup_reason().is_none());

    for p in [&alice, &mallory, &bob] {
        p.close().await;
    }
}
