//! The plugin world's exports for every contract version this gateway loads.
//!
//! The component model compares types structurally, so a 0.3 component's hooks take and return
//! exactly the records of 0.5 — all but `open-session`, whose `identity` gained fields in 0.4
//! (0.5 changed no type: it added a host function, which older components do not import).
//! Rather than a second set of generated bindings with conversions for every type, the exports
//! are looked up by name and type-checked once per instance here, with the current types for
//! all hooks and the 0.3 session record for a 0.3 component's `open-session`.

use super::{wit, HostState};
use wasmtime::component::{
    ComponentExportIndex, ComponentType, Func, InstancePre, Lower, TypedFunc,
};
use wasmtime::Store;

/// A contract version this gateway loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `pgward:plugin@0.3`: sessions introduced without how the identity was proven.
    V0_3,
    /// `pgward:plugin@0.4`: no `cache-verdict`.
    V0_4,
    /// `pgward:plugin@0.5`, the current contract.
    V0_5,
}

impl Contract {
    /// Which version a `pgward:plugin@MAJOR.MINOR` import or export speaks.
    pub fn of(major: u64, minor: u64) -> Option<Contract> {
        match (major, minor) {
            (0, 3) => Some(Contract::V0_3),
            (0, 4) => Some(Contract::V0_4),
            (0, 5) => Some(Contract::V0_5),
            _ => None,
        }
    }
}

/// The `session` record of contract 0.3.
#[derive(ComponentType, Lower)]
#[component(record)]
struct SessionV03 {
    id: u64,
    identity: IdentityV03,
    database: String,
    #[component(name = "client-addr")]
    client_addr: String,
    #[component(name = "application-name")]
    application_name: String,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct IdentityV03 {
    user: String,
    groups: Vec<String>,
}

impl SessionV03 {
    fn from(s: &wit::Session) -> SessionV03 {
        SessionV03 {
            id: s.id,
            identity: IdentityV03 {
                user: s.identity.user.clone(),
                groups: s.identity.groups.clone(),
            },
            database: s.database.clone(),
            client_addr: s.client_addr.clone(),
            application_name: s.application_name.clone(),
        }
    }
}

const NAMES: [&str; 8] = [
    "info",
    "init",
    "open-session",
    "close-session",
    "on-connect",
    "on-query",
    "on-result-schema",
    "on-batch",
];

/// A component lacks an export the contract requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no export `{0}`")]
pub struct MissingExport(pub &'static str);

/// A component ready to instantiate, its exports found by name once.
pub struct PluginPre {
    pre: InstancePre<HostState>,
    contract: Contract,
    index: [ComponentExportIndex; 8],
}

impl PluginPre {
    /// Finds every export the contract names; the error names the first one missing.
    pub fn new(
        pre: InstancePre<HostState>,
        contract: Contract,
    ) -> Result<PluginPre, MissingExport> {
        let component = pre.component();
        let mut index = Vec::with_capacity(NAMES.len());
        for name in NAMES {
            index.push(
                component
                    .get_export_index(None, name)
                    .ok_or(MissingExport(name))?,
            );
        }
        let index = index
            .try_into()
            .map_err(|_| MissingExport("(export list)"))?;
        Ok(PluginPre {
            pre,
            contract,
            index,
        })
    }

    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// Instantiates the component and checks every export's type.
    pub async fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Exports> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let mut funcs = Vec::with_capacity(NAMES.len());
        for (name, index) in NAMES.iter().zip(&self.index) {
            funcs.push(
                instance
                    .get_func(&mut *store, index)
                    .ok_or_else(|| wasmtime::format_err!("export `{name}` is not a function"))?,
            );
        }
        let [info, init, open_session, close_session, on_connect, on_query, on_result_schema, on_batch]: [Func; 8] =
            funcs
                .try_into()
                .map_err(|_| wasmtime::format_err!("export lookup"))?;
        // Type checks, once: the calls below then use unchecked typed functions.
        info.typed::<(), (wit::PluginInfo,)>(&*store)?;
        init.typed::<(&str,), (Result<(), String>,)>(&*store)?;
        match self.contract {
            Contract::V0_4 | Contract::V0_5 => {
                open_session.typed::<(&wit::Session,), ()>(&*store)?;
            }
            Contract::V0_3 => {
                open_session.typed::<(&SessionV03,), ()>(&*store)?;
            }
        }
        close_session.typed::<(u64,), ()>(&*store)?;
        on_connect.typed::<(u64,), (wit::ConnectVerdict,)>(&*store)?;
        on_query.typed::<(u64, &wit::Query), (wit::Verdict,)>(&*store)?;
        on_result_schema.typed::<(u64, &[wit::Column]), (wit::SchemaInterest,)>(&*store)?;
        on_batch.typed::<(u64, &[u8]), (wit::BatchResult,)>(&*store)?;
        Ok(Exports {
            contract: self.contract,
            info,
            init,
            open_session,
            close_session,
            on_connect,
            on_query,
            on_result_schema,
            on_batch,
        })
    }
}

/// One instance's hooks.
pub struct Exports {
    contract: Contract,
    info: Func,
    init: Func,
    open_session: Func,
    close_session: Func,
    on_connect: Func,
    on_query: Func,
    on_result_schema: Func,
    on_batch: Func,
}

// SAFETY (every `new_unchecked` below): `PluginPre::instantiate_async` checked each function's
// type against exactly these parameter and result types when the instance was made.
#[allow(unsafe_code)]
impl Exports {
    pub async fn call_info(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<wit::PluginInfo> {
        let f = unsafe { TypedFunc::<(), (wit::PluginInfo,)>::new_unchecked(self.info) };
        Ok(f.call_async(store, ()).await?.0)
    }

    pub async fn call_init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        let f = unsafe { TypedFunc::<(&str,), (Result<(), String>,)>::new_unchecked(self.init) };
        Ok(f.call_async(store, (config,)).await?.0)
    }

    pub async fn call_open_session(
        &self,
        store: &mut Store<HostState>,
        session: &wit::Session,
    ) -> wasmtime::Result<()> {
        match self.contract {
            Contract::V0_4 | Contract::V0_5 => {
                let f =
                    unsafe { TypedFunc::<(&wit::Session,), ()>::new_unchecked(self.open_session) };
                f.call_async(store, (session,)).await
            }
            Contract::V0_3 => {
                let f =
                    unsafe { TypedFunc::<(&SessionV03,), ()>::new_unchecked(self.open_session) };
                f.call_async(store, (&SessionV03::from(session),)).await
            }
        }
    }

    pub async fn call_close_session(
        &self,
        store: &mut Store<HostState>,
        session: u64,
    ) -> wasmtime::Result<()> {
        let f = unsafe { TypedFunc::<(u64,), ()>::new_unchecked(self.close_session) };
        f.call_async(store, (session,)).await
    }

    pub async fn call_on_connect(
        &self,
        store: &mut Store<HostState>,
        session: u64,
    ) -> wasmtime::Result<wit::ConnectVerdict> {
        let f =
            unsafe { TypedFunc::<(u64,), (wit::ConnectVerdict,)>::new_unchecked(self.on_connect) };
        Ok(f.call_async(store, (session,)).await?.0)
    }

    pub async fn call_on_query(
        &self,
        store: &mut Store<HostState>,
        session: u64,
        query: &wit::Query,
    ) -> wasmtime::Result<wit::Verdict> {
        let f = unsafe {
            TypedFunc::<(u64, &wit::Query), (wit::Verdict,)>::new_unchecked(self.on_query)
        };
        Ok(f.call_async(store, (session, query)).await?.0)
    }

    pub async fn call_on_result_schema(
        &self,
        store: &mut Store<HostState>,
        session: u64,
        columns: &[wit::Column],
    ) -> wasmtime::Result<wit::SchemaInterest> {
        let f = unsafe {
            TypedFunc::<(u64, &[wit::Column]), (wit::SchemaInterest,)>::new_unchecked(
                self.on_result_schema,
            )
        };
        Ok(f.call_async(store, (session, columns)).await?.0)
    }

    pub async fn call_on_batch(
        &self,
        store: &mut Store<HostState>,
        session: u64,
        batch: &[u8],
    ) -> wasmtime::Result<wit::BatchResult> {
        let f =
            unsafe { TypedFunc::<(u64, &[u8]), (wit::BatchResult,)>::new_unchecked(self.on_batch) };
        Ok(f.call_async(store, (session, batch)).await?.0)
    }
}
