//! A worker's namespace must agree with its key.
//!
//! iii's SDKs name a namespace (their `namespace` option, else `III_NAMESPACE`) in the
//! worker's metadata (`engine::workers::register`), in `registertrigger` (`namespace`, where
//! the target function lives; `trigger_namespace`, where the trigger type's provider lives)
//! and in `invokefunction` (`namespace`, where to route the call). On streamhost a namespace
//! *is* a tenant, and the tenant is decided by the worker's key at the upgrade, so a frame
//! may only name that tenant, or nothing (absent or blank: the connection's own). Anything
//! else is a worker set up with one tenant's key and another's namespace: acting on it in
//! the key's tenant would serve the worker from somewhere it did not ask for, so that one
//! registration or call is refused with `NAMESPACE_NOT_ALLOWED` and a message that says how
//! to fix it, and the socket stays open (iii refuses a bad namespace per message, too).
//!
//! `default` is also accepted where, in iii, it names the engine's own things: a trigger
//! type's provider, and a call of a function no worker of the tenant serves (the SDKs name
//! `default` for `engine::*` calls from any namespace). Those are the engine's in every
//! tenant, so naming `default` for them reaches what the worker meant.

use crate::tenants::error::shown;

/// The code of every namespace refusal (`registrationrejected`, `triggerregistrationresult`
/// and `invocationresult` errors).
pub const NAMESPACE_NOT_ALLOWED: &str = "NAMESPACE_NOT_ALLOWED";

/// The namespace in iii that holds the engine's own functions and trigger types.
const ENGINE_NAMESPACE: &str = "default";

/// Longest namespace or worker name echoed back in a frame; the rest is cut.
const MAX_ECHOED_CHARS: usize = 64;

/// Whether a worker of `tenant` may name `declared`; `engine_default` is true where `default`
/// names something of the engine's (see the module comment). Err says what to fix.
pub fn check(tenant: &str, declared: Option<&str>, engine_default: bool) -> Result<(), String> {
    let Some(declared) = declared.filter(|ns| !ns.trim().is_empty()) else {
        return Ok(());
    };
    if declared == tenant || (engine_default && declared == ENGINE_NAMESPACE) {
        return Ok(());
    }
    Err(format!(
        "namespace {} is not this worker's: its key admits it to tenant `{tenant}`, and on streamhost a namespace is a tenant. \
         Name `{tenant}` or no namespace (III_NAMESPACE, or the SDK's `namespace` option), \
         or connect with the worker key of the tenant you meant (III_TOKEN)",
        shown(declared)
    ))
}

/// Untrusted text as echoed in a frame: at most 64 characters, then `…`.
pub fn echoed(untrusted: &str) -> std::borrow::Cow<'_, str> {
    match untrusted.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((cut, _)) => format!("{}…", &untrusted[..cut]).into(),
        None => untrusted.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_blank_and_the_tenant_itself_are_accepted() {
        for declared in [None, Some(""), Some("  "), Some("alpha")] {
            assert_eq!(check("alpha", declared, false), Ok(()), "{declared:?}");
        }
        assert_eq!(check("default", Some("default"), false), Ok(()));
    }

    #[test]
    fn another_tenant_or_an_unknown_namespace_is_refused_with_the_fix() {
        for declared in ["beta", "Alpha", "alpha ", "default", "myproject"] {
            let why = check("alpha", Some(declared), false).unwrap_err();
            assert!(why.contains(&format!("{declared:?}")), "{why}");
            assert!(
                why.contains("tenant `alpha`") && why.contains("III_NAMESPACE"),
                "{why}"
            );
        }
        // The default tenant's workers may not name a tenant either.
        assert!(check("default", Some("alpha"), false).is_err());
    }

    #[test]
    fn default_names_the_engine_only_where_asked() {
        assert_eq!(check("alpha", Some("default"), true), Ok(()));
        assert!(check("alpha", Some("beta"), true).is_err());
    }

    #[test]
    fn long_untrusted_text_is_cut() {
        let long = "é".repeat(100);
        let why = check("alpha", Some(&long), false).unwrap_err();
        assert!(why.len() < 600, "{} bytes", why.len());
        assert_eq!(echoed("beta"), "beta");
        assert_eq!(echoed(&long), format!("{}…", "é".repeat(64)));
    }
}
