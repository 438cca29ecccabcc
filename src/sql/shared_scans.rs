//! A source that a query reads more than once (a self-join; Nexmark q7's bids joined with
//! their windows' highest bid) is read by one reader: its scans become projections of one
//! input, so both see the same rows at the same positions and one checkpoint covers them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::catalog::TableProvider;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;

use super::plan::Lowering;
use crate::runtime::plan::{Input, NodeSpec, OperatorSpec};

/// Merges the scans of each source read more than once into one input, read with the union
/// of their columns, and puts a projection per scan in front of the graph; `output` and the
/// node indices follow. Queries that read each source once are left as they are.
pub(super) fn share_scans(cx: &mut Lowering, output: &mut Input) {
    let mut input_of: HashMap<String, usize> = HashMap::new();
    let mut scans_of: Vec<Vec<usize>> = Vec::new();
    for (scan, (table, _)) in cx.inputs.iter().enumerate() {
        match input_of.get(table.name()) {
            Some(&i) => scans_of[i].push(scan),
            None => {
                input_of.insert(table.name().to_string(), scans_of.len());
                scans_of.push(vec![scan]);
            }
        }
    }
    if scans_of.iter().all(|scans| scans.len() == 1) {
        return;
    }
    let mut inputs = Vec::with_capacity(scans_of.len());
    let mut replaced_by = vec![Input::Source(0); cx.inputs.len()];
    let mut projections: Vec<NodeSpec> = Vec::new();
    for (i, scans) in scans_of.iter().enumerate() {
        let (table, first) = cx.inputs[scans[0]].clone();
        if scans.len() == 1 {
            replaced_by[scans[0]] = Input::Source(i);
            inputs.push((table, first));
            continue;
        }
        let schema = TableProvider::schema(&table);
        let columns_of = |scan: usize| -> Vec<usize> {
            cx.inputs[scan]
                .1
                .clone()
                .unwrap_or_else(|| (0..schema.fields().len()).collect())
        };
        let mut union: Vec<usize> = Vec::new();
        for &scan in scans {
            for c in columns_of(scan) {
                if !union.contains(&c) {
                    union.push(c);
                }
            }
        }
        for &scan in scans {
            let wanted = columns_of(scan);
            let exprs = wanted
                .iter()
                .map(|c| {
                    let at = union.iter().position(|u| u == c).unwrap_or_default();
                    Arc::new(Column::new(schema.field(*c).name(), at)) as Arc<dyn PhysicalExpr>
                })
                .collect();
            let fields: Vec<_> = wanted.iter().map(|c| schema.field(*c).clone()).collect();
            replaced_by[scan] = Input::Node(projections.len());
            projections.push(NodeSpec {
                id: format!("scan{}", projections.len()),
                operator: OperatorSpec::Project {
                    exprs,
                    schema: Arc::new(Schema::new(fields)),
                },
                inputs: vec![Input::Source(i)],
            });
        }
        inputs.push((table, Some(union)));
    }
    let shift = projections.len();
    let moved = |input: Input| match input {
        Input::Source(scan) => replaced_by[scan],
        Input::Node(n) => Input::Node(n + shift),
    };
    for node in &mut cx.nodes {
        for input in &mut node.inputs {
            *input = moved(*input);
        }
    }
    *output = moved(*output);
    cx.updating = cx.updating.map(|n| n + shift);
    projections.append(&mut cx.nodes);
    cx.nodes = projections;
    cx.inputs = inputs;
}
