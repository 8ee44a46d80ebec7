use super::*;
use crate::metrics::CloseCounters;

fn worker(id: &str) -> Arc<WorkerHandle> {
    let (outbox, _rx) = Outbox::new(8, CloseCounters::default());
    Arc::new(WorkerHandle::new(id.to_owned(), outbox))
}

#[test]
fn an_id_belongs_to_its_first_live_worker() {
    let router = Router::default();
    let (a, b) = (worker("a"), worker("b"));
    assert_eq!(router.register("stream::set(s)", &a), Ok(()));
    assert_eq!(router.register("stream::set(s)", &a), Ok(()));
    let conflict = Conflict {
        owner_worker_id: "a".into(),
    };
    assert_eq!(router.register("stream::set(s)", &b), Err(conflict));
    router.unregister("stream::set(s)", "b");
    assert_eq!(router.lookup("stream::set(s)").unwrap().id, "a");
    // Counted once, however often it was registered or refused.
    assert!(router.has_worker_streams());
    router.remove_worker("a");
    assert!(!router.has_worker_streams());
    assert_eq!(router.register("stream::set(s)", &b), Ok(()));
    assert_eq!(router.lookup("stream::set(s)").unwrap().id, "b");
    router.unregister("stream::set(s)", "b");
    assert!(!router.has_worker_streams() && !router.contains("stream::set(s)"));
}

#[test]
fn admitted_calls_hold_their_places_until_they_are_dropped() {
    let quotas = Quotas {
        pending_invocations: Some(2),
        ..Quotas::UNLIMITED
    };
    let tenant = TenantId::new("t").unwrap();
    let quotas = TenantQuotas::new(tenant, &quotas, Default::default());
    let router = Router::new(1, quotas.clone());
    let (a, b) = (worker("a"), worker("b"));
    router.register("f", &a).unwrap();
    router.register("g", &b).unwrap();
    let data = Value::Null;
    let first = a.start("f", &data, None).unwrap();
    // One may wait on `a` (the engine's cap), two in the tenant.
    let e = a.start("f", &data, None).err().unwrap();
    assert!(
        e.message.contains("max_pending_invocations_per_worker"),
        "{e}"
    );
    let second = b.start("g", &data, None).unwrap();
    assert_eq!(quotas.pending_invocations.used(), 2);
    let third = worker("c");
    router.register("h", &third).unwrap();
    let e = third.start("h", &data, None).err().unwrap();
    assert_eq!((e.code.as_str(), e.retry_after_ms), (QUOTA_EXCEEDED, None));
    // Dropped unsent, a call gives back its place on the worker and in the tenant.
    drop((first, second));
    assert_eq!((a.pending(), b.pending()), (0, 0));
    assert_eq!(quotas.pending_invocations.used(), 0);
    assert!(third.start("h", &data, None).is_ok());
}

#[test]
fn registrations_count_against_the_tenant_until_released() {
    let quotas = Quotas {
        functions: Some(2),
        ..Quotas::UNLIMITED
    };
    let tenant = TenantId::new("t").unwrap();
    let quotas = TenantQuotas::new(tenant, &quotas, Default::default());
    let router = Router::new(10, quotas.clone());
    let a = worker("a");
    for id in ["f", "f", "g", "h"] {
        router.register(id, &a).unwrap();
    }
    // `f` twice is one registration; `h` is past the quota.
    assert!(router.contains("g") && !router.contains("h"));
    assert_eq!(quotas.functions.used(), 2);
    router.unregister("f", "a");
    assert_eq!(quotas.functions.used(), 1);
    router.remove_worker("a");
    assert_eq!(quotas.functions.used(), 0);
    let long = "x".repeat(MAX_FUNCTION_ID_BYTES + 1);
    router.register(&long, &a).unwrap();
    assert!(!router.contains(&long));
    assert_eq!(quotas.functions.used(), 0);
}
