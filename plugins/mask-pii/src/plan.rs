//! What to do with each column of a result: decided from its lineage in `on_result_schema`,
//! remembered per session, applied to every batch in `on_batch`.

use crate::config::{Config, OnUncertain};
use crate::detect::{Detector, Detectors};
use pgward_plugin_sdk::{Column, ColumnLineage, Session};
use std::collections::{HashMap, VecDeque};

/// The classes a session is not exempt from, as a bit per class (config order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Active(pub u64);

impl Active {
    /// The classes `session` sees masked.
    pub fn of(config: &Config, session: &Session) -> Active {
        if config.exempt.covers(session) {
            return Active(0);
        }
        Active(
            config
                .classes
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.exempt.covers(session))
                .fold(0, |m, (i, _)| m | 1 << i),
        )
    }

    /// Whether class `i` is masked for this session.
    pub fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    /// Whether nothing is masked for this session.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The classes in the set, in config order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&i| self.has(i))
    }

    /// The detectors of the active classes.
    pub fn detectors(self, config: &Config) -> Detectors {
        config.detectors.only(Detectors::mask_of(
            self.iter()
                .flat_map(|i| config.classes[i].detectors.iter().copied()),
        ))
    }
}

/// What happens to one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The whole value is masked with class `class`'s strategy. `direct` for a table column
    /// itself (an integer column may then be hashed); a derived value that is not text is
    /// always NULL.
    Mask { class: usize, direct: bool },
    /// Detected substrings are masked; the rest of the value stays.
    Detect,
    /// The column mixes a class that no detector recognises with other data: masking it
    /// cannot be guaranteed, so the result stops if the column holds a value.
    Refuse { classes: Vec<usize> },
}

/// One column of a planned result, as the batch will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// [`Column::index`].
    pub index: u32,
    /// The name the client sees.
    pub name: String,
    /// PostgreSQL type oid.
    pub type_oid: u32,
    /// What to do.
    pub action: Action,
}

/// The columns of a result this plugin reads and replaces, in result order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Active classes of the session when the plan was made.
    pub active: Active,
    /// The planned columns.
    pub columns: Vec<ColumnPlan>,
}

/// Type oids whose values are never text: their columns are not scanned by the detectors.
fn never_text(oid: u32) -> bool {
    matches!(
        oid,
        16 | 20 | 21 | 23 | 26 | 28 | 29 | 700 | 701 | 1082 | 1083 | 1114 | 1184 | 1186 | 1266
            | 2950 | 3220 | 5069
            // Arrays of those.
            | 1000 | 1005 | 1007 | 1016 | 1028 | 1011 | 1012 | 1021 | 1022 | 1182 | 1183 | 1115
            | 1185 | 1187 | 1270 | 2951
    )
}

/// How one lineage entry relates to the active classes.
enum Source {
    /// A column of (the first matching) class `usize`.
    Class(usize),
    /// A column no active class claims.
    Unclassified,
    /// A whole row: every active class whose patterns name its table, plus columns no class
    /// claims.
    WholeRow(u64),
}

fn source(config: &Config, active: Active, l: &ColumnLineage) -> Source {
    if l.column == "*" {
        let classes = active
            .iter()
            .filter(|&i| {
                config.classes[i]
                    .lineage
                    .iter()
                    .any(|p| p.matches_table(&l.schema, &l.table))
            })
            .fold(0, |m, i| m | 1 << i);
        return Source::WholeRow(classes);
    }
    match active.iter().find(|&i| {
        config.classes[i]
            .lineage
            .iter()
            .any(|p| p.matches_column(&l.schema, &l.table, &l.column))
    }) {
        Some(i) => Source::Class(i),
        None => Source::Unclassified,
    }
}

/// Decides what to do with `column` for a session with `active` classes; `None` when the
/// column is left alone.
pub fn plan_column(
    config: &Config,
    active: Active,
    detectors: &Detectors,
    column: &Column,
) -> Option<Action> {
    let text_like = !never_text(column.type_oid);
    let scan = (text_like && !detectors.is_empty()).then_some(Action::Detect);
    if column.lineage.is_empty() {
        // A constant, a parameter, or nothing is known (a FETCH of an expression): detectors.
        return scan;
    }
    let mut classes = 0u64;
    let mut first_class = None;
    let mut unclassified = false;
    let mut single = true;
    for l in &column.lineage {
        match source(config, active, l) {
            Source::Class(i) => {
                classes |= 1 << i;
                match first_class {
                    None => first_class = Some(i),
                    Some(f) if f != i => single = false,
                    Some(_) => {}
                }
            }
            Source::Unclassified => unclassified = true,
            Source::WholeRow(set) => {
                classes |= set;
                unclassified = true;
                single = false;
            }
        }
    }
    if classes == 0 {
        let plain = column.lineage.len() == 1 && !column.lineage[0].inferred;
        return if plain && !config.scan_unclassified {
            None
        } else {
            scan
        };
    }
    let direct = column.lineage.len() == 1 && !column.lineage[0].inferred && single;
    if !unclassified && single {
        // Everything in the value comes from one class: masking it whole is as safe as
        // masking the column itself (`lower(email)`, a view's `email`, `substr(ssn, 1, 3)`).
        let class = first_class.expect("a class matched");
        return Some(Action::Mask { class, direct });
    }
    if !unclassified || !text_like {
        // Several classes and nothing else (`email || phone`), or a value that is not text
        // (`count(c)`, `length(email) + id`: no detector could look inside it): mask whole,
        // with the least revealing strategy (for a value that is not text: NULL).
        let class = Active(classes)
            .iter()
            .max_by_key(|&i| {
                (
                    config.classes[i].strategy.strictness(),
                    std::cmp::Reverse(i),
                )
            })
            .expect("a class matched");
        return Some(Action::Mask {
            class,
            direct: false,
        });
    }
    // Classified data mixed with other data (`row_to_json(c)`, `email || note`): only the
    // detectors can mask it without hiding the rest, and only classes they recognise.
    let blind: Vec<usize> = Active(classes)
        .iter()
        .filter(|&i| config.classes[i].detectors.is_empty())
        .collect();
    if blind.is_empty() || config.on_uncertain == OnUncertain::Detect {
        return Some(Action::Detect);
    }
    Some(Action::Refuse { classes: blind })
}

/// The plan for a result, `None` when no column needs this plugin (the fast path).
pub fn plan_result(config: &Config, session: &Session, columns: &[Column]) -> Option<Plan> {
    let active = Active::of(config, session);
    if active.is_empty() {
        return None;
    }
    let detectors = active.detectors(config);
    let planned: Vec<ColumnPlan> = columns
        .iter()
        .filter_map(|c| {
            plan_column(config, active, &detectors, c).map(|action| ColumnPlan {
                index: c.index,
                name: c.name.clone(),
                type_oid: c.type_oid,
                action,
            })
        })
        .collect();
    (!planned.is_empty()).then_some(Plan {
        active,
        columns: planned,
    })
}

/// The columns of a batch as `on_batch` sees them: (result index, name, type oid) each.
pub type Signature = Vec<(u32, String, u32)>;

impl Plan {
    /// The columns this plan expects in a batch.
    pub fn signature(&self) -> Signature {
        self.columns
            .iter()
            .map(|c| (c.index, c.name.clone(), c.type_oid))
            .collect()
    }

    /// Combines `other`, a plan for a batch of the same columns, into `self` so that the
    /// result is safe for both: per column the most masking action wins (refuse, then mask
    /// whole with the least revealing strategy, then detect).
    pub fn merge(&mut self, other: &Plan, config: &Config) {
        self.active = Active(self.active.0 | other.active.0);
        for (mine, theirs) in self.columns.iter_mut().zip(&other.columns) {
            mine.action = merge_actions(&mine.action, &theirs.action, config);
        }
    }
}

fn merge_actions(a: &Action, b: &Action, config: &Config) -> Action {
    use Action::*;
    match (a, b) {
        _ if a == b => a.clone(),
        (Refuse { classes: x }, Refuse { classes: y }) => {
            let mut classes: Vec<usize> = x.iter().chain(y).copied().collect();
            classes.sort_unstable();
            classes.dedup();
            Refuse { classes }
        }
        (Refuse { .. }, _) => a.clone(),
        (_, Refuse { .. }) => b.clone(),
        (
            Mask {
                class: x,
                direct: dx,
            },
            Mask {
                class: y,
                direct: dy,
            },
        ) => {
            let strict = |i: usize| {
                (
                    config.classes[i].strategy.strictness(),
                    std::cmp::Reverse(i),
                )
            };
            Mask {
                class: if strict(*x) >= strict(*y) { *x } else { *y },
                direct: *dx && *dy && x == y,
            }
        }
        (Mask { class, .. }, Detect) | (Detect, Mask { class, .. }) => Mask {
            class: *class,
            direct: false,
        },
        (Detect, Detect) => Detect,
    }
}

/// Result plans per session and batch signature, for `on_batch`, which gets the batch but not
/// the lineage.
///
/// The gateway runs one instance of the plugin per worker thread, a session's calls in order
/// on its thread, and calls `on_result_schema` once per result shape and statement shape in a
/// session (later results of that shape reuse the answer). So a batch finds its plan under
/// its session and its columns. Two results of one session whose batches look the same
/// (same names, types and positions) but whose lineage differs share one plan, merged to be
/// safe for both ([`Plan::merge`]). A batch that finds no plan (the instance was replaced,
/// or the plan was evicted) is stopped rather than guessed at.
#[derive(Debug, Default)]
pub struct Plans {
    /// By session and a hash of the signature: the signature itself, the plan, and the
    /// sequence number it was last used under.
    by_key: HashMap<(u64, u64), (Signature, Plan, u64)>,
    /// Keys in the order they were used; stale entries (used again since) are skipped when
    /// they come up for eviction.
    order: VecDeque<((u64, u64), u64)>,
    /// Columns over all kept plans, to bound memory by size as well as by count.
    columns: usize,
    next: u64,
}

/// Plans kept per instance (the gateway remembers 64 result shapes per session); the least
/// recently used is forgotten first.
pub const MAX_PLANS: usize = 32_768;
/// Columns kept over all plans.
pub const MAX_COLUMNS: usize = 131_072;

fn fingerprint(signature: &Signature) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    signature.hash(&mut h);
    h.finish()
}

impl Plans {
    /// Records `plan` for `session`, merged with the plan already recorded for batches of the
    /// same columns.
    pub fn record(&mut self, session: u64, plan: Plan, config: &Config) {
        let signature = plan.signature();
        let key = (session, fingerprint(&signature));
        self.next += 1;
        let seq = self.next;
        match self.by_key.get_mut(&key) {
            Some((existing_signature, existing, used)) if *existing_signature == signature => {
                existing.merge(&plan, config);
                *used = seq;
            }
            _ => {
                self.columns += plan.columns.len();
                if let Some((_, old, _)) = self.by_key.insert(key, (signature, plan, seq)) {
                    self.columns -= old.columns.len();
                }
            }
        }
        self.order.push_back((key, seq));
        self.trim();
    }

    /// The plan for a batch of `signature` in `session`, marked as just used.
    pub fn find(&mut self, session: u64, signature: Signature) -> Option<&Plan> {
        let key = (session, fingerprint(&signature));
        self.next += 1;
        let seq = self.next;
        match self.by_key.get_mut(&key) {
            Some((s, _, used)) if *s == signature => *used = seq,
            _ => return None,
        }
        self.order.push_back((key, seq));
        self.trim();
        self.by_key.get(&key).map(|(_, p, _)| p)
    }

    fn trim(&mut self) {
        while self.by_key.len() > MAX_PLANS
            || self.columns > MAX_COLUMNS
            || self.order.len() > 2 * MAX_PLANS
        {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.by_key.get(&key).is_some_and(|(_, _, s)| *s == seq) {
                if let Some((_, old, _)) = self.by_key.remove(&key) {
                    self.columns -= old.columns.len();
                }
            }
        }
    }

    /// Forgets every plan of `session` (it ended).
    pub fn forget_session(&mut self, session: u64) {
        let mut freed = 0;
        self.by_key.retain(|(s, _), (_, plan, _)| {
            let keep = *s != session;
            if !keep {
                freed += plan.columns.len();
            }
            keep
        });
        self.columns -= freed;
        // Their entries in `order` are stale now and are skipped when they come up.
    }

    /// How many plans are kept.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no plan is kept.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Names of the detectors, for messages.
pub fn detector_names(ds: &[Detector]) -> String {
    ds.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("[[class]]\nname = \"email\"\nlineage = [\"email\"]\nstrategy = \"redact\"\n")
            .unwrap()
    }

    fn plan(columns: usize, action: Action) -> Plan {
        Plan {
            active: Active(1),
            columns: (0..columns)
                .map(|i| ColumnPlan {
                    index: i as u32,
                    name: format!("c{i}"),
                    type_oid: 25,
                    action: action.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn plans_are_bounded_by_count_and_size_and_used_ones_stay() {
        let config = config();
        let mut plans = Plans::default();
        plans.record(0, plan(1, Action::Detect), &config);
        for session in 1..(MAX_PLANS as u64 + 100) {
            plans.record(session, plan(1, Action::Detect), &config);
            if session % 1000 == 0 {
                // A long result keeps being used.
                assert!(plans.find(0, plan(1, Action::Detect).signature()).is_some());
            }
        }
        assert!(plans.len() <= MAX_PLANS);
        assert!(plans.find(0, plan(1, Action::Detect).signature()).is_some());
        assert!(
            plans.find(1, plan(1, Action::Detect).signature()).is_none(),
            "the oldest unused one went"
        );

        let mut plans = Plans::default();
        for session in 0..2000 {
            plans.record(session, plan(100, Action::Detect), &config);
        }
        assert!(plans.columns <= MAX_COLUMNS);
        assert!(plans
            .find(1999, plan(100, Action::Detect).signature())
            .is_some());
    }

    #[test]
    fn merged_plans_take_the_most_masking_action_per_column() {
        let config = config();
        let mut plans = Plans::default();
        plans.record(7, plan(1, Action::Detect), &config);
        plans.record(
            7,
            plan(
                1,
                Action::Mask {
                    class: 0,
                    direct: true,
                },
            ),
            &config,
        );
        let merged = plans.find(7, plan(1, Action::Detect).signature()).unwrap();
        assert_eq!(
            merged.columns[0].action,
            Action::Mask {
                class: 0,
                direct: false
            }
        );
        plans.record(7, plan(1, Action::Refuse { classes: vec![0] }), &config);
        let merged = plans.find(7, plan(1, Action::Detect).signature()).unwrap();
        assert_eq!(
            merged.columns[0].action,
            Action::Refuse { classes: vec![0] }
        );
        assert_eq!(plans.len(), 1);
    }
}
