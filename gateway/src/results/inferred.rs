//! Placeholder until pgward-sql's output lineage lands: no inferred lineage.
use pgward_sql::{RelationName, StatementAnalysis};

pub struct SourceColumn {
    pub relation: RelationName,
    pub column: String,
}

pub struct OutputLineage;

impl OutputLineage {
    pub fn columns(&self, n: usize) -> Vec<Vec<SourceColumn>> {
        (0..n).map(|_| Vec::new()).collect()
    }
}

pub fn infer_output_lineage(_sql: &str) -> Option<OutputLineage> {
    None
}

pub fn output_of(_s: &StatementAnalysis) -> Option<&OutputLineage> {
    None
}
