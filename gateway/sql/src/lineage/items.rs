//! A query's output items while the statement is analysed, and how `*` expands.

use super::*;

/// One item of a query's output while the statement is analysed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Item {
    /// One column; `name` is what PostgreSQL calls it, `None` when we cannot tell.
    Column {
        name: Option<String>,
        sources: Vec<SourceColumn>,
    },
    /// Any number of columns. With `by_name`, every whole-row source is a table expanded by `*`,
    /// so its column `c` is `{table, c}`; without, a column of it may derive from any source.
    Wildcard {
        sources: Vec<SourceColumn>,
        by_name: bool,
    },
}

impl Item {
    pub(super) fn sources(&self) -> &[SourceColumn] {
        match self {
            Item::Column { sources, .. } | Item::Wildcard { sources, .. } => sources,
        }
    }

    pub(super) fn is_wildcard(&self) -> bool {
        matches!(self, Item::Wildcard { .. })
    }

    pub(super) fn column(name: Option<String>, mut sources: Vec<SourceColumn>) -> Self {
        tidy(&mut sources);
        Item::Column { name, sources }
    }

    pub(super) fn wildcard(mut sources: Vec<SourceColumn>, by_name: bool) -> Self {
        tidy(&mut sources);
        Item::Wildcard { sources, by_name }
    }
}

/// How sure a lookup of a column by name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Match {
    /// The column is not there.
    None,
    /// It may be there (a table's columns are unknown without the catalog).
    Maybe,
    /// It is there by name.
    Certain,
}

impl Match {
    pub(super) fn or(self, other: Match) -> Match {
        match (self, other) {
            (Match::Certain, _) | (_, Match::Certain) => Match::Certain,
            (Match::Maybe, _) | (_, Match::Maybe) => Match::Maybe,
            _ => Match::None,
        }
    }
}

/// The output of a query, subquery or CTE.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct QueryOutput {
    pub(super) items: Vec<Item>,
}

impl QueryOutput {
    pub(super) fn into_lineage(self) -> OutputLineage {
        let items = self
            .items
            .into_iter()
            .map(|item| match item {
                Item::Column { sources, .. } => OutputItem::Column(sources),
                Item::Wildcard { sources, .. } => OutputItem::Wildcard(sources),
            })
            .collect();
        OutputLineage { items }
    }

    pub(super) fn all_sources(&self, out: &mut Vec<SourceColumn>) {
        for item in &self.items {
            out.extend_from_slice(item.sources());
        }
    }

    /// The sources of the output column called `col`.
    pub(super) fn column(&self, col: &str, out: &mut Vec<SourceColumn>) -> Match {
        let mut found = Match::None;
        for item in &self.items {
            if let Item::Column {
                name: Some(name),
                sources,
            } = item
            {
                if name == col {
                    out.extend_from_slice(sources);
                    found = Match::Certain;
                }
            }
        }
        if found == Match::Certain {
            return found;
        }
        for item in &self.items {
            match item {
                Item::Column { name: Some(_), .. } => {}
                Item::Column {
                    name: None,
                    sources,
                }
                | Item::Wildcard {
                    sources,
                    by_name: false,
                } => {
                    out.extend_from_slice(sources);
                    found = Match::Maybe;
                }
                Item::Wildcard {
                    sources,
                    by_name: true,
                } => {
                    out.extend(sources.iter().map(|s| match s.is_whole_row() {
                        true => SourceColumn {
                            relation: s.relation.clone(),
                            column: col.to_owned(),
                        },
                        false => s.clone(),
                    }));
                    found = Match::Maybe;
                }
            }
        }
        found
    }

    /// Applies a column alias list such as `AS t(a, b)`, which renames by position.
    pub(super) fn renamed(mut self, names: Vec<String>) -> Self {
        let mut names = names.into_iter();
        let mut positional = true;
        for item in &mut self.items {
            match item {
                Item::Column { name, .. } if positional => match names.next() {
                    Some(alias) => *name = Some(alias),
                    None => break,
                },
                // Past a wildcard we cannot tell which columns the remaining aliases rename.
                Item::Column { name, .. } => *name = None,
                Item::Wildcard { by_name, .. } => {
                    if names.len() == 0 && positional {
                        break;
                    }
                    positional = false;
                    *by_name = false;
                }
            }
        }
        self
    }

    /// Sources for each of `n` columns, with names where the item is a column.
    pub(super) fn fit(&self, n: usize) -> Option<Vec<(Option<String>, Vec<SourceColumn>)>> {
        let wildcards: Vec<bool> = self.items.iter().map(Item::is_wildcard).collect();
        let map = spread(&wildcards, n)?;
        Some(
            map.into_iter()
                .map(|i| match &self.items[i] {
                    Item::Column { name, sources } => (name.clone(), sources.clone()),
                    Item::Wildcard { sources, .. } => (None, sources.clone()),
                })
                .collect(),
        )
    }

    /// UNION, INTERSECT or EXCEPT: column i derives from column i of either side.
    pub(super) fn set_operation(self, right: QueryOutput) -> QueryOutput {
        let shape = |q: &QueryOutput| q.items.iter().map(Item::is_wildcard).collect::<Vec<_>>();
        let (left_shape, right_shape) = (shape(&self), shape(&right));
        let pairwise =
            left_shape == right_shape || !left_shape.iter().chain(&right_shape).any(|w| *w);
        if pairwise {
            let mut right = right.items.into_iter();
            let mut items: Vec<Item> = self
                .items
                .into_iter()
                .map(|item| {
                    let more = right.next();
                    let more = more.as_ref().map_or(&[][..], Item::sources);
                    match item {
                        Item::Column { name, mut sources } => {
                            sources.extend_from_slice(more);
                            Item::column(name, sources)
                        }
                        Item::Wildcard { mut sources, .. } => {
                            sources.extend_from_slice(more);
                            Item::wildcard(sources, false)
                        }
                    }
                })
                .collect();
            items.extend(right.map(|item| match item {
                Item::Column { sources, .. } => Item::column(None, sources),
                Item::Wildcard { sources, .. } => Item::wildcard(sources, false),
            }));
            return QueryOutput { items };
        }
        let zip = |named: Vec<(Option<String>, Vec<SourceColumn>)>, other: &[Item]| QueryOutput {
            items: named
                .into_iter()
                .zip(other)
                .map(|((name, mut sources), item)| {
                    sources.extend_from_slice(item.sources());
                    Item::column(name, sources)
                })
                .collect(),
        };
        if !right_shape.contains(&true) {
            if let Some(left) = self.fit(right.items.len()) {
                return zip(left, &right.items);
            }
        }
        if !left_shape.contains(&true) {
            if let Some(fitted) = right.fit(self.items.len()) {
                let names = self.items.iter().map(|i| match i {
                    Item::Column { name, .. } => name.clone(),
                    Item::Wildcard { .. } => None,
                });
                let right_items: Vec<Item> = fitted
                    .into_iter()
                    .map(|(_, sources)| Item::Column {
                        name: None,
                        sources,
                    })
                    .collect();
                let left: Vec<_> = names
                    .zip(self.items.iter().map(|i| i.sources().to_vec()))
                    .collect();
                return zip(left, &right_items);
            }
        }
        let mut sources = Vec::new();
        self.all_sources(&mut sources);
        right.all_sources(&mut sources);
        QueryOutput {
            items: vec![Item::wildcard(sources, false)],
        }
    }
}

/// Joins the columns one `*` or `t.*` expands to. Adjacent wildcards merge; if wildcards are
/// still apart, the whole expansion becomes one wildcard, so that the other items of the select
/// list can still be placed by [`OutputLineage::columns`].
pub(super) fn expansion(items: Vec<Item>) -> Vec<Item> {
    let mut merged: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        match (merged.last_mut(), item) {
            (
                Some(Item::Wildcard { sources, by_name }),
                Item::Wildcard {
                    sources: more,
                    by_name: more_by_name,
                },
            ) => {
                sources.extend(more);
                *by_name &= more_by_name;
            }
            (_, item) => merged.push(item),
        }
    }
    if merged.iter().filter(|i| i.is_wildcard()).count() > 1 {
        // Named columns fold in unchanged, but a whole-row one would read as a table's `*`.
        let by_name = merged.iter().all(|i| match i {
            Item::Wildcard { by_name, .. } => *by_name,
            Item::Column { sources, .. } => !sources.iter().any(SourceColumn::is_whole_row),
        });
        let sources = merged
            .iter()
            .flat_map(|i| i.sources().iter().cloned())
            .collect();
        return vec![Item::wildcard(sources, by_name)];
    }
    for item in &mut merged {
        if let Item::Wildcard { sources, .. } = item {
            tidy(sources);
        }
    }
    merged
}
