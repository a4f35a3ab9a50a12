//! A plugin built against the frozen 0.4 contract (`wit-compat/0.4.0`) with wit-bindgen
//! directly, as a plugin compiled before 0.5 was. The gateway must still load it (0.5 only
//! added host functions): it denies any statement mentioning `v04_probe` with a message naming
//! the user, groups and proofs it was introduced with.
// wit-bindgen's generated glue is unsafe code; this crate has nothing else.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;
    use std::collections::HashMap;

    wit_bindgen::generate!({
        path: "../../../wit-compat/0.4.0",
        world: "plugin",
    });

    use pgward::plugin::types::{Deny, Hooks, Proofs};

    thread_local! {
        static SESSIONS: RefCell<HashMap<u64, (String, Vec<String>, bool)>> = RefCell::new(HashMap::new());
    }

    struct Old;

    impl Guest for Old {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "contract-0-4".into(),
                version: "0.4.0".into(),
                hooks: Hooks::ON_QUERY,
            }
        }
        fn init(_config: String) -> Result<(), String> {
            Ok(())
        }
        fn open_session(session: Session) {
            SESSIONS.with_borrow_mut(|s| {
                s.insert(
                    session.id,
                    (
                        session.identity.user,
                        session.identity.groups,
                        session.identity.proven_by.contains(Proofs::PASSWORD),
                    ),
                )
            });
        }
        fn close_session(session: u64) {
            SESSIONS.with_borrow_mut(|s| s.remove(&session));
        }
        fn on_connect(_session: u64) -> ConnectVerdict {
            ConnectVerdict::Allow
        }
        fn on_query(session: u64, query: Query) -> Verdict {
            if !query.sql.contains("v04_probe") {
                return Verdict::Allow;
            }
            let (user, groups, password) =
                SESSIONS.with_borrow(|s| s.get(&session).cloned().unwrap_or_default());
            Verdict::Deny(Deny {
                sqlstate: "42501".into(),
                message: format!(
                    "contract 0.4 plugin saw user={user} groups={} password={password}",
                    groups.join(",")
                ),
                hint: None,
            })
        }
        fn on_result_schema(_session: u64, _columns: Vec<Column>) -> SchemaInterest {
            SchemaInterest {
                read: Vec::new(),
                modify: Vec::new(),
            }
        }
        fn on_batch(_session: u64, _batch: Vec<u8>) -> BatchResult {
            BatchResult::Unchanged
        }
    }

    export!(Old);
}
