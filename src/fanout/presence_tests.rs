//! The roster, frames and bounds of `presence`, without sockets (tests/presence.rs has them).

use super::*;

fn m(n: u64) -> Arc<str> {
    member(&n.to_string(), &format!("u{n}"), None)
}

fn snapshot(r: &Roster) -> Value {
    serde_json::from_str(&r.snapshot("snapshot")).unwrap()
}

fn v(m: Arc<str>) -> Value {
    serde_json::from_str(&m).unwrap()
}

#[test]
fn past_max_members_is_counted_not_listed_and_takes_a_freed_place() {
    let mut r = Roster::default();
    assert!(r.join(1, || m(1), 2).is_some());
    assert!(r.join(2, || m(2), 2).is_some(), "at the bound: listed");
    assert!(r.join(3, || m(3), 2).is_none(), "one past: not announced");
    assert!(
        r.join(3, || m(3), 2).is_none(),
        "a second join is no new member"
    );
    let listed = json!({"action": "snapshot", "members": [v(m(1)), v(m(2))], "count": 3});
    assert_eq!(snapshot(&r), listed);
    assert!(
        r.leave(3, 2).is_empty(),
        "an unlisted member leaves silently"
    );
    r.join(4, || m(4), 2);
    let changes = r.leave(1, 2);
    assert_eq!(changes, vec![("leave", m(1)), ("join", m(4))]);
    let listed = json!({"action": "snapshot", "members": [v(m(2)), v(m(4))], "count": 2});
    assert_eq!(snapshot(&r), listed);
}

#[test]
fn frames_are_group_frames_with_the_data_as_given() {
    let member = member("7", "", Some(json!({"a": "}"})));
    let frame = frame("s", "g", &change_data("join", &member));
    let frame: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(frame["id"], Value::Null);
    assert_eq!(
        (&frame["streamName"], &frame["groupId"]),
        (&json!("s"), &json!("g"))
    );
    let data =
        json!({"action": "join", "member": {"client": "7", "user": null, "info": {"a": "}"}}});
    assert_eq!(frame["event"], json!({"type": "presence", "data": data}));
}

#[test]
fn watching_follows_the_subscriptions_that_asked() {
    let mut r = Roster::default();
    r.join(1, || m(1), 10);
    r.watch(1, "a", true);
    r.watch(1, "b", true);
    r.watch(1, "a", false);
    assert_eq!(r.watchers().collect::<Vec<_>>(), vec![1]);
    r.watch(1, "b", false);
    assert_eq!(r.watchers().count(), 0);
}

#[test]
fn info_is_bounded_at_the_limit_and_one_past() {
    let rules = PresenceRules {
        streams: StreamPatterns::all(),
        ..Default::default()
    };
    // `"` + n x + `"` is n + 2 bytes.
    let at = json!("x".repeat(MAX_INFO_BYTES - 2));
    assert!(check_join(&rules, "s", true, Some(&at)).is_ok());
    let over = json!("x".repeat(MAX_INFO_BYTES - 1));
    let err = check_join(&rules, "s", true, Some(&over)).unwrap_err();
    assert_eq!(err.0, "invalid_presence_info");
    assert!(err.1.contains("1025 bytes"), "{}", err.1);
    let deep = json!({"a": {"b": {"c": {"d": 1}}}});
    assert!(check_join(&rules, "s", false, Some(&deep)).is_ok());
    let deeper = json!({"a": {"b": {"c": {"d": [1]}}}});
    assert!(check_join(&rules, "s", false, Some(&deeper)).is_err());
    let off = PresenceRules::default();
    assert_eq!(
        check_join(&off, "s", true, None).unwrap_err().0,
        NOT_ENABLED
    );
    assert!(
        check_join(&off, "s", false, None).is_ok(),
        "no presence asked"
    );
}

/// `n` watchers join one group at once; the presence frames each queue got.
fn burst(n: u64, max: usize) -> Vec<usize> {
    use crate::fanout::hub::Hub;
    use crate::fanout::outbox::Outbox;
    use crate::metrics::CloseCounters;
    let hub = Hub::default();
    hub.set_presence(PresenceRules {
        streams: StreamPatterns::all(),
        max_members: max,
    });
    let started = std::time::Instant::now();
    let mut queues = Vec::new();
    for conn in 1..=n {
        let (outbox, rx) = Outbox::new(4096, CloseCounters::default());
        hub.subscribe("s", "g", conn, &outbox, "a", None, None);
        hub.present("s", "g", conn, "a", true, |c| member(c, "", None));
        hub.release("s", "g", conn, &outbox, "sync".into());
        queues.push(rx);
    }
    eprintln!("{n} watchers, max_members {max}: {:?}", started.elapsed());
    // Less the `sync` each queue starts with.
    queues.iter().map(|rx| rx.len() - 1).collect()
}

#[test]
fn a_burst_of_joins_sends_each_watcher_its_snapshot_and_only_listed_joins_after_it() {
    // Watcher i gets its snapshot, then the joins of the listed members after it.
    let n = 1_000;
    for max in [1_000, 100] {
        let frames = burst(n, max);
        for (i, got) in frames.iter().enumerate() {
            assert_eq!(
                *got,
                1 + max.saturating_sub(i + 1),
                "watcher {i}, max {max}"
            );
        }
        // At most max_members frames per watcher (all under its queue's 4096): the burst
        // costs n x max_members frames at most, not n x n.
        assert!(frames.iter().all(|f| *f <= max));
    }
}

#[test]
fn max_members_is_bounded() {
    let ok = PresenceConfig {
        max_members: Some(MAX_MEMBERS_CAP),
        ..Default::default()
    };
    assert!(ok.validate().is_ok());
    let over = PresenceConfig {
        max_members: Some(MAX_MEMBERS_CAP + 1),
        ..Default::default()
    };
    assert!(over.validate().is_err());
    let zero = PresenceConfig {
        max_members: Some(0),
        ..Default::default()
    };
    assert!(zero.validate().is_err());
}

#[test]
fn a_join_pays_for_its_join_and_leave_to_each_watcher_and_its_snapshot() {
    assert_eq!(join_cost(false, 0, false), 0, "nobody watches");
    assert_eq!(join_cost(false, 0, true), 1, "its own snapshot");
    assert_eq!(join_cost(false, 3, false), 6);
    assert_eq!(join_cost(false, 3, true), 7);
    assert_eq!(
        join_cost(true, 3, false),
        0,
        "a member already: nothing new"
    );
    assert_eq!(join_cost(true, 3, true), 1, "a fresh snapshot");
}

#[test]
fn an_auth_user_is_a_string_of_at_most_max_user_bytes() {
    let at = "u".repeat(MAX_USER_BYTES);
    let result = json!({"context": {"user": "private"}, "user": at});
    assert_eq!(user_from_auth(&result), Ok(Some(at)));
    let over = json!({"user": "u".repeat(MAX_USER_BYTES + 1)});
    let err = user_from_auth(&over).unwrap_err();
    assert!(
        err.contains("257 bytes") && err.contains("1 to 256"),
        "{err}"
    );
    assert!(user_from_auth(&json!({"user": ""})).is_err());
    assert!(user_from_auth(&json!({"user": 7})).is_err());
    assert_eq!(user_from_auth(&json!({"user": null})), Ok(None));
    let context_only = json!({"context": {"user": "private"}});
    assert_eq!(
        user_from_auth(&context_only),
        Ok(None),
        "context is not read"
    );
    assert_eq!(user_from_auth(&Value::Null), Ok(None));
}
