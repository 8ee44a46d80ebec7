use super::*;

fn counters() -> TenantCounters {
    crate::metrics::TenantFamilies::default().tenant("t")
}

#[test]
fn a_rate_reads_as_a_number_or_with_its_burst() {
    let q: Quotas = serde_yaml_ng::from_str(
        "{ writes_per_second: 50, connects_per_second: { per_second: 5, burst: 20 }, stored_bytes: null }",
    )
    .unwrap();
    assert_eq!(q.writes_per_second, Some(Rate::new(50, 50)));
    assert_eq!(q.connects_per_second, Some(Rate::new(5, 20)));
    assert_eq!(q.stored_bytes, None);
    // What is not named keeps its safe default.
    assert_eq!(q.connections, Quotas::default().connections);
    let err = serde_yaml_ng::from_str::<Quotas>("{ writes_per_secnd: 5 }").unwrap_err();
    assert!(err.to_string().contains("writes_per_secnd"), "{err}");
    let zero: Quotas = serde_yaml_ng::from_str("{ writes_per_second: 0 }").unwrap();
    let err = zero.validate().unwrap_err().to_string();
    assert!(
        err.contains("writes_per_second") && err.contains("null"),
        "{err}"
    );
}

#[test]
fn slots_admit_up_to_the_maximum_and_give_back_on_drop() {
    let slots = Slots::new("connections", Some(2));
    let a = slots.take(1).unwrap();
    let _b = slots.take(1).unwrap();
    let err = slots.take(1).unwrap_err();
    assert_eq!(err.quota, "connections");
    assert!(err.message.contains("2 of 2 in use"), "{}", err.message);
    drop(a);
    assert_eq!(slots.used(), 1);
    slots.take(1).unwrap();
    // All or none: two at once do not fit beside the one held.
    assert!(slots.take(2).is_err());
    assert_eq!(slots.used(), 1);
}

#[test]
fn racing_takers_never_pass_the_maximum() {
    let slots = Slots::new("pending_invocations", Some(100));
    let held: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..100)
                        .filter_map(|_| slots.take(1).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(held.len(), 100);
    assert_eq!(slots.used(), 100);
}

#[test]
fn a_bucket_admits_its_burst_then_says_when_to_retry() {
    let bucket = Bucket::new("writes_per_second", Some(Rate::new(10, 5)));
    for _ in 0..5 {
        bucket.take(1).unwrap();
    }
    let err = bucket.take(1).unwrap_err();
    let wait = err.retry_after.unwrap();
    // One token comes back every 100 ms.
    assert!(
        wait <= Duration::from_millis(100) && !wait.is_zero(),
        "{wait:?}"
    );
    assert!(err.message.contains("retry in"), "{}", err.message);
    // More than the burst at once can never fit, and says so.
    let err = bucket.take(6).unwrap_err();
    assert_eq!(err.retry_after, None);
    assert!(err.message.contains("burst of 5"), "{}", err.message);
    // No limit: anything goes.
    let open = Bucket::new("writes_per_second", None);
    assert!((0..10_000).all(|_| open.take(1).is_ok()));
}

#[test]
fn quotas_change_live_and_keep_what_is_held() {
    let q = TenantQuotas::new(
        TenantId::new("t").unwrap(),
        &Quotas {
            connections: Some(1),
            ..Quotas::UNLIMITED
        },
        counters(),
    );
    let held = q.connections.take(1).unwrap();
    assert!(q.connections.take(1).is_err());
    q.set(&Quotas {
        connections: Some(2),
        writes_per_second: Some(Rate::new(1, 1)),
        ..Quotas::UNLIMITED
    });
    let _second = q.connections.take(1).unwrap();
    q.writes.take(1).unwrap();
    assert!(q.writes.take(1).is_err());
    drop(held);
    assert_eq!(q.connections.used(), 1);
}

#[test]
fn a_refusal_becomes_quota_exceeded_with_when_to_retry() {
    let bucket = Bucket::new("writes_per_second", Some(Rate::new(1, 1)));
    bucket.take(1).unwrap();
    let err: FnError = bucket.take(1).unwrap_err().into();
    assert_eq!(err.code, QUOTA_EXCEEDED);
    assert!(
        err.retry_after_ms
            .is_some_and(|ms| (1..=1000).contains(&ms))
    );
    let wire = serde_json::to_value(&err).unwrap();
    assert!(wire["retry_after_ms"].is_u64(), "{wire}");
}

#[test]
fn every_quota_is_named_in_the_metrics() {
    let q = TenantQuotas::new(TenantId::new("t").unwrap(), &Quotas::default(), counters());
    let names = [
        q.connections.quota,
        q.connects.quota,
        q.writes.quota,
        q.deliveries.quota,
        q.stored_bytes.quota,
        q.functions.quota,
        q.pending_invocations.quota,
        "subscriptions_per_connection",
        "item_bytes",
    ];
    for name in names {
        assert!(crate::metrics::QUOTA_NAMES.contains(&name), "{name}");
    }
}
