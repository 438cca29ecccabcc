//! What follows an operator whose rows are updates: a HAVING after it turns failing rows into
//! deletes and carries `_op` through the projections after it, and the output columns that key
//! the rows for the sink.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};
use crate::runtime::operator::stateless::OP;
use crate::runtime::plan::{NodeSpec, OperatorSpec};

/// Turns the filters after an updating aggregate (its HAVING) into HAVING operators, whose failing
/// groups become deletes, and carries their `_op` column through the projections after them.
/// Returns whether there was one.
pub(super) fn retract_having(nodes: &mut [NodeSpec], at: usize) -> Result<bool> {
    use datafusion::physical_expr::expressions::Column;

    let (mut schema, mut having) = match &nodes[at].operator {
        OperatorSpec::UpdatingAggregate { aggregate, .. } => (aggregate.schema(), false),
        OperatorSpec::TopN { spec, .. } => (spec.output.clone(), false),
        // Its rows carry `_op` already: a row number a partition no longer reaches is a delete.
        OperatorSpec::ChangeTopN { spec, .. } => {
            let mut fields: Vec<Field> = spec
                .output
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            fields.push(Field::new(OP, DataType::Utf8, true));
            (Arc::new(Schema::new(fields)), true)
        }
        // Its rows carry `_op` already: a joined row either table's change removed is a delete.
        OperatorSpec::ChangeJoin(spec) => (spec.output.clone(), true),
        // Its rows carry `_op` already: a group left without rows is a delete.
        OperatorSpec::ChangeAggregate { aggregate, .. } => {
            let mut fields: Vec<Field> = aggregate
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            fields.push(Field::new(OP, DataType::Utf8, true));
            (Arc::new(Schema::new(fields)), true)
        }
        _ => {
            return Err(Error::Internal(
                "no updating aggregate where expected".into(),
            ))
        }
    };
    for node in &mut nodes[at + 1..] {
        match &mut node.operator {
            OperatorSpec::Filter(predicate) => {
                let mut fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .filter(|f| f.name() != OP)
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect();
                fields.push(Field::new(OP, DataType::Utf8, true));
                schema = Arc::new(Schema::new(fields));
                node.operator = OperatorSpec::Having {
                    predicate: predicate.clone(),
                    schema: schema.clone(),
                };
                having = true;
            }
            OperatorSpec::Project {
                exprs,
                schema: output,
            } => {
                if having {
                    exprs.push(Arc::new(Column::new(OP, schema.fields().len() - 1)));
                    // A deleted group's aggregates are NULL.
                    let mut fields: Vec<Field> = output
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_nullable(true))
                        .collect();
                    fields.push(Field::new(OP, DataType::Utf8, true));
                    *output = Arc::new(Schema::new(fields));
                }
                schema = output.clone();
            }
            // output_key says what may not follow.
            _ => {}
        }
    }
    Ok(having)
}

/// The output columns that key an updating aggregate's rows: its group columns, followed
/// through the projections after it (only projections may follow it), which must keep each.
/// A join of change streams has none: the sink's key names its rows.
pub(super) fn output_key(nodes: &[NodeSpec], at: usize) -> Result<Option<Vec<String>>> {
    if let OperatorSpec::ChangeJoin(_) = &nodes[at].operator {
        for node in &nodes[at + 1..] {
            if !matches!(
                node.operator,
                OperatorSpec::Project { .. } | OperatorSpec::Having { .. }
            ) {
                return Err(Error::Unsupported(
                    "after a join of two change streams only WHERE and a projection may follow for now".into(),
                ));
            }
        }
        return Ok(None);
    }
    use datafusion::physical_expr::expressions::Column;

    let (mut positions, schema, what): (Vec<usize>, _, _) = match &nodes[at].operator {
        OperatorSpec::UpdatingAggregate { keys, aggregate }
        | OperatorSpec::ChangeAggregate {
            keys, aggregate, ..
        } => ((0..*keys).collect(), aggregate.schema(), "GROUP BY key"),
        // One row per partition when only the first is kept; else one per row number.
        OperatorSpec::TopN { spec, limit } | OperatorSpec::ChangeTopN { spec, limit, .. } => {
            let schema = spec.output.clone();
            let mut keys = spec.partition.clone();
            if *limit > 1 {
                keys.push(schema.fields().len() - 1);
            }
            (keys, schema, "key (PARTITION BY column or row number)")
        }
        _ => {
            return Err(Error::Internal(
                "no updating operator where expected".into(),
            ))
        }
    };
    let mut names: Vec<String> = positions
        .iter()
        .map(|&p| schema.field(p).name().clone())
        .collect();
    for node in &nodes[at + 1..] {
        let (exprs, schema) = match &node.operator {
            OperatorSpec::Project { exprs, schema } => (exprs, schema),
            OperatorSpec::Having { .. } => continue,
            _ => {
                return Err(Error::Unsupported(
                    "after a GROUP BY without a window only HAVING and a projection may follow for now (DISTINCT or a join over its updates are not supported yet)".into(),
                ))
            }
        };
        let mut kept = Vec::with_capacity(positions.len());
        for (p, name) in positions.iter().zip(&names) {
            let found = exprs
                .iter()
                .position(|e| e.downcast_ref::<Column>().is_some_and(|c| c.index() == *p));
            let Some(j) = found else {
                return Err(Error::Plan(format!(
                    "the {what} {name} must be in the SELECT list as it is: it is the key the sink updates rows by"
                )));
            };
            kept.push((j, schema.field(j).name().clone()));
        }
        positions = kept.iter().map(|k| k.0).collect();
        names = kept.into_iter().map(|k| k.1).collect();
    }
    Ok(Some(names))
}
