//! Built-in policy: statements that need a person's approval before they run.
//!
//! Each `[[rules]]` entry names who it is for (`users`, `groups`; neither: everyone), which
//! objects (`on`) and which kinds of write (`actions`), and the group that approves
//! (`approvers`). The first rule that covers a write of a statement answers with a
//! require-approval verdict carrying the rule's name, what it covers, the rule's `reason` and
//! the approver group, how the client waits (`mode`: `hold` or `defer`) and how many distinct
//! approvers it needs (`quorum`). With the gateway's `[approvals]` configured the statement is
//! held (or deferred) until approved; without it the gateway refuses it with SQLSTATE 42501:
//!
//! ```text
//! ERROR:  approval required: rule "agents-billing-writes" covers UPDATE on billing.invoices: AI agents change billing data only with a person's approval
//! DETAIL:  denied by policy plugin "approval-rules"
//! HINT:  a member of "billing-owners" must approve this statement
//! ```
//!
//! Writes are what the gateway's analysis reports, hidden ones (CTEs, MERGE, `COPY (...) TO`,
//! `EXPLAIN ANALYZE`, `SELECT INTO`, `CREATE TABLE AS`, `PREPARE`) included, and unqualified
//! names resolve with `search_path`. A statement whose writes cannot be seen (text the gateway
//! could not analyse, `DO`, `CALL`) needs the approval of the first rule for the identity,
//! whatever its objects, since it might write anything (`hold_invisible_writes = false` turns
//! that off). Run it after guardrails, which refuses what must never run; approval-rules holds
//! what may run once someone agrees.
//!
//! See `approval_rules.toml` next to this crate for a complete configuration.
#![forbid(unsafe_code)]

use pgward_plugin_sdk::prelude::*;

/// The policy: its rules, in order.
pub struct ApprovalRules {
    config: Config,
}

/// `approval_rules.toml`.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", default, deny_unknown_fields)]
pub struct Config {
    /// Schemas an unqualified name resolves in, in order; set it to the database's.
    pub search_path: SearchPath,
    /// Whether statements whose writes cannot be seen (unanalysable text, `DO`, `CALL`) need
    /// the approval of the first rule for the identity. Turn it off only behind guardrails,
    /// which refuses unanalysable text and `DO` and lets only listed procedures be called.
    pub hold_invisible_writes: bool,
    /// The rules; the first one covering a write decides.
    pub rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            search_path: SearchPath::default(),
            hold_invisible_writes: true,
            rules: Vec::new(),
        }
    }
}

/// Writes that need approval.
#[derive(Debug, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", deny_unknown_fields)]
pub struct Rule {
    /// Shown in the verdict's reason.
    pub name: String,
    /// User names the rule is for.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups the rule is for; with `users` also empty, the rule is for everyone.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Objects whose writes need approval: `schema.table`, `schema.*`, `table`, `*`.
    #[serde(default = "everything")]
    pub on: Vec<NamePattern>,
    /// Kinds of write that need approval.
    #[serde(default = "any_write")]
    pub actions: Vec<Action>,
    /// The group whose members may approve.
    pub approvers: String,
    /// Why, for the requester and the approvers.
    #[serde(default)]
    pub reason: Option<String>,
    /// `hold` (default: the client's statement waits for the decision) or `defer` (the client
    /// is told at once and re-runs the statement once it is approved).
    #[serde(default)]
    pub mode: Mode,
    /// Distinct approvers needed (default 1).
    #[serde(default = "one")]
    pub quorum: u32,
}

fn one() -> u32 {
    1
}

/// How a held statement waits, as written in the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Hold,
    Defer,
}

fn everything() -> Vec<NamePattern> {
    vec![NamePattern::parse("*").expect("valid pattern")]
}

fn any_write() -> Vec<Action> {
    vec![Action::Write]
}

/// A kind of write a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(crate = "pgward_plugin_sdk::serde", rename_all = "kebab-case")]
pub enum Action {
    /// Any write: every action below.
    Write,
    /// CREATE, CREATE INDEX, ALTER, DROP, COMMENT, GRANT, REVOKE, `SELECT INTO`.
    Ddl,
    /// INSERT (also `INSERT ... SELECT` and INSERT arms of MERGE, which count as `merge`).
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// MERGE.
    Merge,
    /// TRUNCATE.
    Truncate,
    /// `COPY ... FROM`.
    CopyFrom,
    /// `SELECT ... INTO`.
    SelectInto,
    /// CREATE.
    Create,
    /// CREATE INDEX.
    CreateIndex,
    /// ALTER (and triggers, rules and policies on a table).
    Alter,
    /// DROP.
    Drop,
    /// COMMENT ON.
    Comment,
    /// GRANT.
    Grant,
    /// REVOKE.
    Revoke,
    /// REFRESH MATERIALIZED VIEW.
    Refresh,
    /// LOCK TABLE.
    Lock,
    /// VACUUM, ANALYZE.
    Maintain,
}

impl Action {
    /// Whether this covers a write with `action`.
    pub fn covers(self, action: WriteAction) -> bool {
        use WriteAction as A;
        match self {
            Action::Write => true,
            Action::Ddl => is_ddl(action),
            Action::Insert => action == A::Insert,
            Action::Update => action == A::Update,
            Action::Delete => action == A::Delete,
            Action::Merge => action == A::Merge,
            Action::Truncate => action == A::Truncate,
            Action::CopyFrom => action == A::CopyFrom,
            Action::SelectInto => action == A::SelectInto,
            Action::Create => action == A::Create,
            Action::CreateIndex => action == A::CreateIndex,
            Action::Alter => action == A::Alter,
            Action::Drop => action == A::Drop,
            Action::Comment => action == A::Comment,
            Action::Grant => action == A::Grant,
            Action::Revoke => action == A::Revoke,
            Action::Refresh => action == A::Refresh,
            Action::Lock => action == A::Lock,
            Action::Maintain => action == A::Maintain,
        }
    }
}

fn is_ddl(action: WriteAction) -> bool {
    use WriteAction as A;
    matches!(
        action,
        A::Create
            | A::CreateIndex
            | A::Alter
            | A::Drop
            | A::Comment
            | A::Grant
            | A::Revoke
            | A::SelectInto
    )
}

impl Plugin for ApprovalRules {
    const NAME: &'static str = "approval-rules";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_QUERY;

    fn init(text: &str) -> Result<Self, String> {
        let config: Config = config(text)?;
        for (i, rule) in config.rules.iter().enumerate() {
            let at = format!("rules[{i}] ({:?})", rule.name);
            if rule.name.trim().is_empty() {
                return Err(format!("rules[{i}]: name must not be empty"));
            }
            if config.rules[..i].iter().any(|r| r.name == rule.name) {
                return Err(format!("{at}: the name is used twice"));
            }
            if rule.approvers.trim().is_empty() {
                return Err(format!("{at}: approvers must name a group"));
            }
            if rule.on.is_empty() || rule.actions.is_empty() {
                return Err(format!("{at}: on and actions must not be empty"));
            }
        }
        log(
            Level::Info,
            format!("{} approval rules", config.rules.len()),
        );
        Ok(ApprovalRules { config })
    }

    fn on_query(&mut self, session: &Session, query: &Query) -> Verdict {
        // The verdict depends on the config, the identity and the statement's shape only.
        cache_verdict();
        let rules: Vec<&Rule> = self
            .config
            .rules
            .iter()
            .filter(|r| r.is_for(session))
            .collect();
        let Some(&first) = rules.first() else {
            return Verdict::Allow;
        };
        for s in &query.statements {
            // Nothing shows what these write, so they might write anything.
            let hidden = match s.kind {
                StatementKind::Unknown => Some(format!(
                    "{}, which the gateway could not analyse",
                    s.command_or("a statement")
                )),
                StatementKind::Call => Some(format!(
                    "{}, whose writes are not visible",
                    s.command_or("CALL")
                )),
                _ => None,
            };
            if let (Some(what), true) = (hidden, self.config.hold_invisible_writes) {
                return self.hold(session, first, what);
            }
            for w in &s.writes {
                let candidates = self.candidates(&w.relation, w.object);
                if let Some(rule) = rules.iter().find(|r| r.covers(w, &candidates)) {
                    let shown = candidates
                        .iter()
                        .find(|c| rule.on.iter().any(|p| p.matches(c)))
                        .unwrap_or(&w.relation);
                    return self.hold(session, rule, w.describe(s, shown));
                }
            }
            // DDL whose target the analysis does not name (ALTER DEFAULT PRIVILEGES, CREATE
            // OPERATOR...) may be in any rule's objects.
            let untargeted_ddl = s.writes.is_empty()
                && matches!(
                    s.kind,
                    StatementKind::Ddl | StatementKind::Grant | StatementKind::Revoke
                );
            let ddl_rule = rules.iter().find(|r| {
                r.actions
                    .iter()
                    .any(|a| matches!(a, Action::Write | Action::Ddl))
            });
            if let (true, Some(rule)) = (untargeted_ddl, ddl_rule) {
                return self.hold(session, rule, s.command.clone());
            }
        }
        Verdict::Allow
    }
}

impl Rule {
    /// Whether the rule is for this session's user or one of its groups.
    fn is_for(&self, session: &Session) -> bool {
        (self.users.is_empty() && self.groups.is_empty())
            || self.users.iter().any(|u| u == session.user())
            || session.in_any_group(&self.groups)
    }

    /// Whether the rule covers write `w`, whose relation may be any of `candidates`.
    fn covers(&self, w: &Write, candidates: &[Relation]) -> bool {
        if !self.actions.iter().any(|a| a.covers(w.action)) {
            return false;
        }
        match w.object {
            // CREATE, ALTER or DROP SCHEMA reaches everything in it.
            ObjectKind::Schema => self.on.iter().any(|p| p.touches_schema(&w.relation.name)),
            ObjectKind::Database
            | ObjectKind::Role
            | ObjectKind::Extension
            | ObjectKind::Server => self.on.iter().any(NamePattern::is_everything),
            _ => candidates
                .iter()
                .any(|c| self.on.iter().any(|p| p.matches(c))),
        }
    }
}

impl ApprovalRules {
    /// Where a relation may point: itself when schema-qualified or not in a schema, otherwise
    /// the name in each schema of the search path.
    fn candidates(&self, relation: &Relation, object: ObjectKind) -> Vec<Relation> {
        match object {
            ObjectKind::Schema
            | ObjectKind::Database
            | ObjectKind::Role
            | ObjectKind::Extension
            | ObjectKind::Server => vec![relation.clone()],
            _ => self.config.search_path.candidates(relation),
        }
    }

    fn hold(&self, session: &Session, rule: &Rule, what: String) -> Verdict {
        log(
            Level::Info,
            format!(
                "rule {} requires approval by {} for a statement of {}",
                rule.name,
                rule.approvers,
                session.user()
            ),
        );
        let reason = match &rule.reason {
            Some(why) => format!("rule \"{}\" covers {what}: {why}", rule.name),
            None => format!("rule \"{}\" covers {what}", rule.name),
        };
        let mode = match rule.mode {
            Mode::Hold => ApprovalMode::Hold,
            Mode::Defer => ApprovalMode::Defer,
        };
        Approval::new(reason, rule.approvers.clone())
            .rule(rule.name.clone())
            .mode(mode)
            .quorum(rule.quorum.max(1))
            .into()
    }
}

export_plugin!(ApprovalRules);

#[cfg(test)]
mod tests;
