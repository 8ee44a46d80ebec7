//! The registry: built from the config, changed live, and what each change does to workers.

use super::*;
use serde_json::json;

fn tenant(id: &str, worker_keys: &[&str]) -> TenantConfig {
    let digests: Vec<String> = worker_keys.iter().map(|k| hash_key(k)).collect();
    serde_json::from_value(json!({ "id": id, "worker_keys": digests })).unwrap()
}

fn refused(r: Result<Arc<Tenant>, AuthError>) -> AuthError {
    match r {
        Ok(t) => panic!("accepted for tenant {}", t.id()),
        Err(e) => e,
    }
}

#[test]
fn worker_keys_resolve_to_their_tenant() {
    let t = Tenants::from_configs(vec![tenant("a", &["ka"]), tenant("b", &["kb1", "kb2"])], "")
        .unwrap();
    assert!(t.has_worker_keys());
    assert_eq!(t.resolve_worker_key(Some("ka")).unwrap().id().as_str(), "a");
    assert_eq!(
        t.resolve_worker_key(Some("kb2")).unwrap().id().as_str(),
        "b"
    );
    let e = refused(t.resolve_worker_key(Some("kc")));
    assert_eq!(e.code, AuthCode::InvalidWorkerKey);
    assert!(!e.message.contains("kc"), "never echoed: {e}");
    assert_eq!(
        refused(t.resolve_worker_key(None)).code,
        AuthCode::MissingWorkerKey
    );
    assert_eq!(
        refused(t.resolve_worker_key(Some(""))).code,
        AuthCode::MissingWorkerKey
    );
    assert_eq!(
        t.list().iter().map(|t| t.id().as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn a_bad_tenant_fails_the_whole_registry() {
    let mut bad = tenant("b", &[]);
    bad.clients.keys = vec![
        serde_json::from_value(json!({"kid": "k", "alg": "RS256", "public_key_pem": "nope"}))
            .unwrap(),
    ];
    let e = Tenants::from_configs(vec![tenant("a", &[]), bad], "")
        .err()
        .unwrap();
    assert!(
        format!("{e:#}").contains("tenant `b`, client key `k`"),
        "{e:#}"
    );
    let e = Tenants::from_configs(vec![tenant("a", &["k"]), tenant("b", &["k"])], "")
        .err()
        .unwrap();
    assert!(
        format!("{e:#}").contains("already belongs to tenant `a`"),
        "{e:#}"
    );
}

#[test]
fn insert_replace_disable_remove_take_effect_at_once() {
    let t = Tenants::new("");
    assert!(t.is_empty() && !t.has_worker_keys());
    t.insert(tenant("a", &["k1"])).unwrap();
    assert!(
        t.insert(tenant("a", &[])).is_err(),
        "insert does not overwrite"
    );
    assert!(t.resolve_worker_key(Some("k1")).is_ok());

    // Replace: the old key stops working, the new one works, the old snapshot is returned.
    let (new, old) = t.replace(tenant("a", &["k2"])).unwrap();
    assert_eq!(old.unwrap().config.worker_keys.len(), 1);
    assert_eq!(new.config.worker_keys[0].sha256, hash_key("k2"));
    assert_eq!(
        refused(t.resolve_worker_key(Some("k1"))).code,
        AuthCode::InvalidWorkerKey
    );
    assert!(t.resolve_worker_key(Some("k2")).is_ok());

    // Disable: refused with its own code, data kept; enable again.
    let held = t.get("a").unwrap();
    t.set_enabled("a", false).unwrap();
    assert!(held.enabled(), "a snapshot never changes under its holder");
    assert_eq!(
        refused(t.resolve_worker_key(Some("k2"))).code,
        AuthCode::TenantDisabled
    );
    t.set_enabled("a", true).unwrap();
    assert!(t.resolve_worker_key(Some("k2")).is_ok());

    // Remove: the key is forgotten with the tenant, and may go to another.
    assert!(t.remove("a").is_some());
    assert!(t.remove("a").is_none());
    assert_eq!(
        refused(t.resolve_worker_key(Some("k2"))).code,
        AuthCode::InvalidWorkerKey
    );
    t.insert(tenant("b", &["k2"])).unwrap();
    assert_eq!(t.resolve_worker_key(Some("k2")).unwrap().id().as_str(), "b");
    assert!(t.set_enabled("a", true).is_err(), "no such tenant");
}

#[test]
fn a_replace_that_steals_a_key_changes_nothing() {
    let t = Tenants::from_configs(vec![tenant("a", &["ka"]), tenant("b", &["kb"])], "").unwrap();
    assert!(t.replace(tenant("b", &["ka"])).is_err());
    assert_eq!(t.resolve_worker_key(Some("ka")).unwrap().id().as_str(), "a");
    assert_eq!(t.resolve_worker_key(Some("kb")).unwrap().id().as_str(), "b");
}

#[test]
fn worker_keys_are_added_shown_once_and_revoked() {
    let t = Tenants::from_configs(vec![tenant("a", &[])], "").unwrap();
    let clear = t.add_worker_key("a", Some("ci".into())).unwrap();
    assert!(clear.starts_with(keys::KEY_PREFIX));
    let a = t.resolve_worker_key(Some(&clear)).unwrap();
    let stored = &a.config.worker_keys[0];
    assert_eq!(stored.sha256, hash_key(&clear));
    assert_eq!(stored.name.as_deref(), Some("ci"));
    let shown = serde_json::to_string(&a.config).unwrap();
    assert!(
        !shown.contains(&clear),
        "the config never holds the clear key"
    );

    let second = t.add_worker_key("a", None).unwrap();
    assert!(
        t.revoke_worker_key("a", &hash_key(&clear).to_uppercase())
            .unwrap()
    );
    assert!(
        !t.revoke_worker_key("a", &hash_key(&clear)).unwrap(),
        "already gone"
    );
    assert_eq!(
        refused(t.resolve_worker_key(Some(&clear))).code,
        AuthCode::InvalidWorkerKey
    );
    assert!(t.resolve_worker_key(Some(&second)).is_ok());
    assert!(t.add_worker_key("nobody", None).is_err());
}

#[test]
fn changes_from_many_threads_all_land() {
    let t = Arc::new(Tenants::from_configs(vec![tenant("a", &[])], "").unwrap());
    let keys: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let t = &t;
                s.spawn(move || {
                    (0..4)
                        .map(|_| t.add_worker_key("a", None).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(keys.len(), 32);
    assert_eq!(
        t.get("a").unwrap().config.worker_keys.len(),
        32,
        "no lost update"
    );
    for k in &keys {
        assert!(t.resolve_worker_key(Some(k)).is_ok());
    }
}
