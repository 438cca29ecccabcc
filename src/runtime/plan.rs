//! A compiled pipeline as the data plane receives it: the sources it reads and the graph of
//! operator specs between them and the sink, which each run instantiates afresh.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::event_time::EventTime;
use super::graph::OperatorGraph;
use super::memory::StateMemory;
use super::operator::change_aggregate::{ChangeAggregate, ChangePartials};
use super::operator::change_join::{ChangeJoin, ChangeJoinSpec};
use super::operator::change_top_n::ChangeTopN;
use super::operator::distinct::Distinct;
use super::operator::distinct_marks::{DistinctMarks, DistinctMarksSpec};
use super::operator::lookup_join::{LookupJoin, LookupJoinSpec};
use super::operator::parallel::Parallel;
use super::operator::stateless::{ChangeFilter, Filter, Having, Project, Union};
use super::operator::stream_join::{StreamJoin, StreamJoinSpec};
use super::operator::temporal_join::{TemporalJoin, TemporalJoinSpec};
use super::operator::top_n::{TopN, TopNSpec};
use super::operator::unnest::Unnest;
use super::operator::updating_aggregate::UpdatingAggregate;
use super::operator::versioned_join::{VersionedJoin, VersionedJoinSpec};
use super::operator::window_aggregate::WindowAggregate;
use super::operator::Operator;
use crate::error::Result;

/// What one operator does; everything it evaluates is a DataFusion physical expression.
#[derive(Debug, Clone)]
pub enum OperatorSpec {
    /// Keep rows where the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// WHERE over a change stream seen as a table: failing changes become deletes.
    ChangeFilter {
        /// The condition.
        predicate: Arc<dyn PhysicalExpr>,
        /// Which column is `_op`.
        op: usize,
    },
    /// Compute the output columns.
    Project {
        /// One expression per output column.
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        /// Output schema.
        schema: SchemaRef,
    },
    /// UNION ALL: the rows of every input, as the union's columns.
    Union {
        /// Output schema.
        schema: SchemaRef,
    },
    /// Marks the first row of each GROUP BY group and DISTINCT value passing each filter, for
    /// the updating aggregate after it to count (`count(x) FILTER (WHERE mark)`).
    DistinctMarks(DistinctMarksSpec),
    /// Keep the first occurrence of each row (streaming `SELECT DISTINCT`); the rows seen are state.
    Distinct {
        /// Schema of the rows (all of them form the key).
        schema: SchemaRef,
    },
    /// UNNEST of list columns: DataFusion's UnnestExec over a placeholder input.
    Unnest(Arc<dyn ExecutionPlan>),
    /// HAVING over an updating aggregate's rows: those that fail it become deletes (`_op`).
    Having {
        /// The HAVING condition.
        predicate: Arc<dyn PhysicalExpr>,
        /// Output schema: the input's columns, then `_op`.
        schema: SchemaRef,
    },
    /// GROUP BY without a window: partial states per group, the changed groups emitted at
    /// each checkpoint as upserts.
    UpdatingAggregate {
        /// DataFusion's AggregateExec in Final mode over its Partial one.
        aggregate: Arc<dyn ExecutionPlan>,
        /// How many group columns lead its output.
        keys: usize,
    },
    /// GROUP BY without a window over a change stream, first stage: the table's current rows
    /// by primary key, each changed group aggregated again at each checkpoint into partial
    /// states per group and key group (upsert or delete, `_op`).
    ChangePartials {
        /// DataFusion's AggregateExec in Final mode over its Partial one.
        aggregate: Arc<dyn ExecutionPlan>,
        /// Its input rows: the aggregate's input columns, the primary key, `_op`.
        schema: SchemaRef,
    },
    /// Its second stage: those partial states by group, each changed group's merged at each
    /// checkpoint into its row (upsert or delete, `_op`).
    ChangeAggregate {
        /// DataFusion's AggregateExec in Final mode over its Partial one.
        aggregate: Arc<dyn ExecutionPlan>,
        /// How many group columns lead its output.
        keys: usize,
    },
    /// A stream joined with the current rows of a table kept by its change stream.
    TemporalJoin(TemporalJoinSpec),
    /// A stream joined with the version of a table valid at each row's event time (`FOR
    /// SYSTEM_TIME AS OF`), the table kept as versions by its change stream.
    VersionedJoin(VersionedJoinSpec),
    /// Two tables kept by their change streams joined, the joined rows their changes add,
    /// change or remove emitted at each checkpoint (upserts and deletes, `_op`).
    ChangeJoin(ChangeJoinSpec),
    /// A stream joined with a table looked up by key as each batch arrives.
    LookupJoin(LookupJoinSpec),
    /// Two streams joined within bounds on their event times.
    StreamJoin(StreamJoinSpec),
    /// The first `limit` rows of each partition by an order (ROW_NUMBER() kept to `<= limit`),
    /// emitted as updates keyed by the partition and the row number.
    TopN { spec: TopNSpec, limit: usize },
    /// The same over a table kept by its changes (rows: the window's input columns, the
    /// table's key, `_op`): emits upserts and deletes.
    ChangeTopN {
        spec: TopNSpec,
        limit: usize,
        schema: SchemaRef,
    },
    /// GROUP BY a window: partial aggregate states per batch, rows emitted once the watermark
    /// passes the window's end. Session windows merge a key's overlapping states first.
    WindowAggregate {
        /// DataFusion's AggregateExec in Final mode over its Partial one.
        aggregate: Arc<dyn ExecutionPlan>,
        /// Which group column is `window_end`.
        window_end: usize,
        /// For session windows, which group column is `window_start` (sessions are per the
        /// other group columns).
        session_start: Option<usize>,
        /// Microseconds the watermark is held back by before it closes windows: how late its
        /// input's rows can be (a join of two streams' pairs).
        watermark_delay: i64,
    },
}

/// Where an operator's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Input `i` of the pipeline (an index into [`PipelinePlan::inputs`]), after its scan
    /// projection.
    Source(usize),
    /// The output of node `n` (an index into [`PipelinePlan::nodes`], always an earlier one).
    Node(usize),
}

/// One node of the graph: an operator and its inputs, in input order.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Stable id: state in checkpoints is stored under it.
    pub id: String,
    /// What it does.
    pub operator: OperatorSpec,
    /// Its inputs.
    pub inputs: Vec<Input>,
}

/// One source a pipeline reads, with a reader of its own.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The source.
    pub source: String,
    /// Columns of the source the query uses, in the order the graph expects.
    pub scan_projection: Option<Vec<usize>>,
    /// The source's event time and watermark, when it declares one and the plan uses it.
    pub event_time: Option<EventTime>,
}

/// A compiled pipeline query.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The sources read, each once.
    pub inputs: Vec<PlanInput>,
    /// The operators, each after the nodes it reads from.
    pub nodes: Vec<NodeSpec>,
    /// What the sink receives: an input itself or a node's output.
    pub output: Input,
    /// For a query that emits updates (GROUP BY without a window): the output columns that key
    /// them, which the sink upserts by.
    pub output_key: Option<Vec<String>>,
    /// Schema of the rows handed to the sink (every column nullable).
    pub output_schema: SchemaRef,
    /// The optimised logical plan, for EXPLAIN and messages.
    pub display: String,
}

/// How one run instantiates the operators.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Instances of each keyed operator.
    pub parallelism: usize,
    /// How long an updating aggregate keeps a group that does not change (and a ROW_NUMBER a
    /// partition no row reaches; a join of streams, rows without a bound on event time).
    pub state_ttl: Option<std::time::Duration>,
    /// Bytes of operator state held in memory before it spills (the default when `None`).
    pub state_memory: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallelism: 1,
            state_ttl: None,
            state_memory: None,
        }
    }
}

impl OperatorSpec {
    /// The operator, as several instances when it is keyed.
    fn instantiate(
        &self,
        options: RunOptions,
        memory: &Arc<StateMemory>,
    ) -> Result<Box<dyn Operator>> {
        let first = self.instance(0, options, memory)?;
        match first.keying() {
            Some(keying) if options.parallelism > 1 => {
                let mut instances = vec![first];
                for index in 1..options.parallelism {
                    instances.push(self.instance(index, options, memory)?);
                }
                Ok(Box::new(
                    Parallel::new(instances, keying)?.with_memory(memory),
                ))
            }
            _ => Ok(first),
        }
    }

    /// Instance `index` of its operator.
    fn instance(
        &self,
        index: usize,
        options: RunOptions,
        memory: &Arc<StateMemory>,
    ) -> Result<Box<dyn Operator>> {
        Ok(match self {
            OperatorSpec::Filter(predicate) => Box::new(Filter::new(predicate.clone())),
            OperatorSpec::Union { schema } => Box::new(Union::new(schema.clone())),
            OperatorSpec::TemporalJoin(spec) => {
                Box::new(TemporalJoin::new(spec.clone())?.with_memory(memory))
            }
            OperatorSpec::VersionedJoin(spec) => {
                Box::new(VersionedJoin::new(spec.clone())?.with_memory(memory))
            }
            OperatorSpec::ChangeJoin(spec) => Box::new(
                ChangeJoin::new(spec.clone())?
                    .with_memory(memory)
                    .with_ttl(options.state_ttl),
            ),
            OperatorSpec::LookupJoin(spec) => Box::new(LookupJoin::new(spec.clone())?),
            OperatorSpec::StreamJoin(spec) => Box::new(
                StreamJoin::new(spec.clone())?
                    .with_memory(memory)
                    .with_ttl(options.state_ttl),
            ),
            OperatorSpec::ChangeTopN {
                spec,
                limit,
                schema,
            } => {
                Box::new(ChangeTopN::new(spec.clone(), *limit, schema.clone())?.with_memory(memory))
            }
            OperatorSpec::TopN { spec, limit } => Box::new(
                TopN::new(spec.clone())?
                    .first_only(*limit == 1)?
                    .with_memory(memory)
                    .with_ttl(options.state_ttl),
            ),
            OperatorSpec::ChangeFilter { predicate, op } => {
                Box::new(ChangeFilter::new(predicate.clone(), *op))
            }
            OperatorSpec::ChangePartials { aggregate, schema } => Box::new(
                ChangePartials::new(aggregate.clone(), schema.clone(), index)?.with_memory(memory),
            ),
            OperatorSpec::ChangeAggregate { aggregate, .. } => {
                Box::new(ChangeAggregate::new(aggregate.clone())?.with_memory(memory))
            }
            OperatorSpec::Having { predicate, schema } => {
                Box::new(Having::new(predicate.clone(), schema.clone()))
            }
            OperatorSpec::Project { exprs, schema } => {
                Box::new(Project::new(exprs.clone(), schema.clone()))
            }
            OperatorSpec::DistinctMarks(spec) => {
                Box::new(DistinctMarks::new(spec.clone())?.with_memory(memory))
            }
            OperatorSpec::Distinct { schema } => {
                Box::new(Distinct::new(schema.clone())?.with_memory(memory))
            }
            OperatorSpec::Unnest(plan) => Box::new(Unnest::new(plan.clone())?),
            OperatorSpec::UpdatingAggregate { aggregate, keys } => Box::new(
                UpdatingAggregate::new(aggregate.clone(), *keys, options.state_ttl)?
                    .with_memory(memory),
            ),
            OperatorSpec::WindowAggregate {
                aggregate,
                window_end,
                session_start,
                watermark_delay,
            } => {
                let windows = match session_start {
                    None => WindowAggregate::new(aggregate.clone(), *window_end)?,
                    Some(start) => {
                        WindowAggregate::sessions(aggregate.clone(), *start, *window_end)?
                    }
                };
                Box::new(
                    windows
                        .with_watermark_delay(*watermark_delay)
                        .with_memory(memory),
                )
            }
        })
    }
}

impl PipelinePlan {
    /// Whether it writes a join of two tables kept by their change streams (its rows name no
    /// key: the sink's does).
    pub fn joins_changes(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(&n.operator, OperatorSpec::ChangeJoin(spec) if !spec.names_out))
    }

    /// The inputs read as the tables of joins (kept by their change streams).
    pub fn table_inputs(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let table_port = match &node.operator {
                OperatorSpec::TemporalJoin(spec) => spec.table_port,
                OperatorSpec::VersionedJoin(spec) => spec.base.table_port,
                _ => continue,
            };
            self.sources_of(node.inputs[table_port], &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// For each join of streams that keeps each side's rows until the other side ends (no bound
    /// on event time expires them: a regular join), the inputs each side reads.
    pub fn regular_join_sides(&self) -> Vec<[Vec<usize>; 2]> {
        let mut out = Vec::new();
        for node in &self.nodes {
            match &node.operator {
                OperatorSpec::StreamJoin(spec) if spec.expiry.iter().all(Vec::is_empty) => {}
                _ => continue,
            }
            let mut sides = [Vec::new(), Vec::new()];
            for (side, input) in sides.iter_mut().zip(&node.inputs) {
                self.sources_of(*input, side);
                side.sort_unstable();
                side.dedup();
            }
            out.push(sides);
        }
        out
    }

    /// The inputs `input` reads, through the nodes before it.
    fn sources_of(&self, input: Input, out: &mut Vec<usize>) {
        match input {
            Input::Source(i) => out.push(i),
            Input::Node(n) => {
                for i in &self.nodes[n].inputs {
                    self.sources_of(*i, out);
                }
            }
        }
    }

    /// Whether its updates are the first rows of a ROW_NUMBER() (rather than a GROUP BY's).
    pub fn ranks(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(
                n.operator,
                OperatorSpec::TopN { .. } | OperatorSpec::ChangeTopN { .. }
            )
        })
    }

    /// The names of the sources read, in input order.
    pub fn sources(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.source.clone()).collect()
    }

    /// Whether a join keeps rows of a side whose rows no bound on event time expires: they
    /// stay until `state_ttl`, or for ever.
    pub fn keeps_unbounded_rows(&self) -> bool {
        self.nodes.iter().any(|n| match &n.operator {
            OperatorSpec::StreamJoin(spec) => spec.expiry.iter().any(Vec::is_empty),
            OperatorSpec::ChangeJoin(spec) => spec.appends.iter().any(|a| *a),
            _ => false,
        })
    }

    /// The names of the sources looked up by key (not read as inputs).
    pub fn lookups(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.operator {
                OperatorSpec::LookupJoin(spec) => Some(spec.table.name().to_string()),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A fresh graph of operators for one run, with empty state.
    pub fn instantiate(&self, options: RunOptions) -> Result<OperatorGraph> {
        let memory = StateMemory::new(options.state_memory)?;
        let operators = self
            .nodes
            .iter()
            .map(|n| {
                Ok((
                    n.id.clone(),
                    n.operator.instantiate(options, &memory)?,
                    n.inputs.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut graph =
            OperatorGraph::new(operators, self.output, self.output_schema.clone(), memory)?;
        graph.name_inputs(
            self.nodes
                .iter()
                .map(|n| {
                    n.inputs
                        .iter()
                        .map(|input| match *input {
                            Input::Source(i) => self.inputs.get(i).map_or_else(
                                || format!("source:{i}"),
                                |p| format!("source:{}", p.source),
                            ),
                            Input::Node(j) => self
                                .nodes
                                .get(j)
                                .map_or_else(|| format!("node {j}"), |n| n.id.clone()),
                        })
                        .collect()
                })
                .collect(),
        );
        Ok(graph)
    }
}
