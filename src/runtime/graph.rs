//! A running pipeline's operators, connected as a graph: pushes each source batch through them
//! to the sink, all or nothing, and collects their state and statistics for checkpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::memory::StateMemory;
use super::operator::parallel::InstanceStats;
use super::operator::spill::StateChunk;
use super::operator::Operator;
use super::plan::Input;
use crate::error::{Error, Result};

/// One operator in the graph.
struct Node {
    id: String,
    operator: Box<dyn Operator>,
    /// Where its output goes: (node, input of that node).
    consumers: Vec<(usize, usize)>,
    stats: OperatorStats,
    /// Rows in and out of batches not yet committed.
    pending: (u64, u64),
    /// Per input port, the pipeline inputs it reads (a bit each), and whether they all ended.
    port_inputs: Vec<(u128, bool)>,
}

/// Figures of one operator for `tributary.operators`.
#[derive(Debug, Clone, Default)]
pub struct OperatorStats {
    /// Operator id.
    pub id: String,
    /// Its kind (filter, project, distinct...).
    pub kind: String,
    /// Rows received (of committed batches).
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// Rows of state held.
    pub state_rows: u64,
    /// Bytes of state held in memory.
    pub state_bytes: u64,
    /// Bytes of state spilled to disk.
    pub spilled_bytes: u64,
    /// Time spent processing.
    pub busy: Duration,
    /// The last watermark it was given (UTC microseconds).
    pub watermark: Option<i64>,
    /// Figures of each parallel instance (empty when it runs as one).
    pub instances: Vec<InstanceStats>,
    /// What it reads, in input order: `source:<name>` or an operator's id.
    pub inputs: Vec<String>,
}

/// The operators of one run.
pub struct OperatorGraph {
    nodes: Vec<Node>,
    /// The inputs that ended in this run (a bit each).
    ended: u128,
    /// Consumers of each input's batches.
    source_consumers: Vec<Vec<(usize, usize)>>,
    output: Input,
    output_schema: SchemaRef,
    memory: Arc<StateMemory>,
}

impl OperatorGraph {
    /// Connects `operators` (id, operator, inputs; each after the nodes it reads), whose result
    /// is `output`, handed on as `output_schema`.
    pub fn new(
        operators: Vec<(String, Box<dyn Operator>, Vec<Input>)>,
        output: Input,
        output_schema: SchemaRef,
        memory: Arc<StateMemory>,
    ) -> Result<Self> {
        let mut nodes: Vec<Node> = Vec::with_capacity(operators.len());
        let mut source_consumers: Vec<Vec<(usize, usize)>> = Vec::new();
        for (index, (id, operator, inputs)) in operators.into_iter().enumerate() {
            let port_inputs = inputs
                .iter()
                .map(|input| {
                    let mask = match *input {
                        Input::Source(i) => 1u128.checked_shl(i as u32).unwrap_or(0),
                        // A node that may emit later (on a watermark) never says its rows
                        // are all out: 0 never closes.
                        Input::Node(n) => nodes
                            .get(n)
                            .filter(|node: &&Node| {
                                node.operator.emits_only_when_processing()
                                    && node.port_inputs.iter().all(|p| p.0 != 0)
                            })
                            .map_or(0, |node| node.port_inputs.iter().fold(0, |m, p| m | p.0)),
                    };
                    (mask, false)
                })
                .collect();
            for (port, input) in inputs.iter().enumerate() {
                match *input {
                    Input::Source(i) => {
                        if source_consumers.len() <= i {
                            source_consumers.resize(i + 1, Vec::new());
                        }
                        source_consumers[i].push((index, port));
                    }
                    Input::Node(n) if n < index => nodes[n].consumers.push((index, port)),
                    Input::Node(n) => {
                        return Err(Error::Internal(format!(
                            "operator {id} reads node {n}, which does not come before it"
                        )))
                    }
                }
            }
            nodes.push(Node {
                stats: OperatorStats {
                    id: id.clone(),
                    kind: operator.kind().to_string(),
                    ..Default::default()
                },
                id,
                operator,
                consumers: Vec::new(),
                pending: (0, 0),
                port_inputs,
            });
        }
        if let Input::Node(n) = output {
            if n >= nodes.len() {
                return Err(Error::Internal(format!(
                    "the output node {n} does not exist"
                )));
            }
        }
        Ok(OperatorGraph {
            nodes,
            ended: 0,
            source_consumers,
            output,
            output_schema,
            memory,
        })
    }

    /// Pushes one batch of input `input` through the graph and returns what reaches the sink.
    /// All or nothing: when an operator fails, no operator keeps a state change from this batch.
    pub fn process(&mut self, input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let result = self.push_all(Input::Source(input), batch, &mut out);
        self.settle(result.is_ok());
        result?;
        self.fit_memory()?;
        self.to_output(out)
    }

    /// Delivers `batch`, the output of `from` (an input or a node), to its consumers.
    fn push_all(
        &mut self,
        from: Input,
        batch: RecordBatch,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if from == self.output {
            out.push(batch.clone());
        }
        let consumers = match from {
            Input::Source(i) => self.source_consumers.get(i).cloned().unwrap_or_default(),
            Input::Node(n) => self.nodes[n].consumers.clone(),
        };
        for (node, port) in consumers {
            let started = Instant::now();
            let n = &mut self.nodes[node];
            n.pending.0 += batch.num_rows() as u64;
            let emitted = n.operator.process(port, batch.clone())?;
            n.pending.1 += emitted.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            n.stats.busy += started.elapsed();
            for e in emitted {
                self.push_all(Input::Node(node), e, out)?;
            }
        }
        Ok(())
    }

    /// The non-empty batches with the sink's schema (same columns; names and nullability as planned).
    fn to_output(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                Ok(RecordBatch::try_new(
                    self.output_schema.clone(),
                    b.columns().to_vec(),
                )?)
            })
            .collect()
    }

    /// The run's state memory: its disk manager holds spilled and restored state files.
    pub fn memory(&self) -> &Arc<StateMemory> {
        &self.memory
    }

    /// Ids of the stateful operators, with their state schemas.
    pub fn stateful(&self) -> Vec<(String, SchemaRef)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.id.clone(), n.operator.state_schema()?)))
            .collect()
    }

    /// The state of operator `id`: everything when `full`, else the changes since its last snapshot.
    pub fn snapshot(&mut self, id: &str, full: bool) -> Result<Vec<StateChunk>> {
        self.node_mut(id)?.operator.snapshot(full)
    }

    /// Whether some operator's state changed in a way only a full snapshot records (groups past
    /// their TTL): the epoch needs a checkpoint even when it read nothing.
    pub fn state_changed_without_input(&self) -> bool {
        self.nodes.iter().any(|n| n.operator.wants_full_snapshot())
    }

    /// Whether operator `id`'s next snapshot must be full.
    pub fn wants_full_snapshot(&self, id: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.id == id && n.operator.wants_full_snapshot())
    }

    /// Restores operator `id` from its snapshots, taken at a checkpoint with `watermark`.
    pub fn restore(
        &mut self,
        id: &str,
        state: Vec<StateChunk>,
        watermark: Option<i64>,
    ) -> Result<()> {
        self.node_mut(id)?.operator.restore(state, watermark)
    }

    /// Brings every operator's state in memory within its budget (spilling), or fails with
    /// [`Error::StateMemoryExhausted`]: the batches it holds are committed, so the pipeline
    /// must stop rather than take that for a bad batch.
    fn fit_memory(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.operator.fit_memory().map_err(|e| {
                if e.is_resource_error() {
                    e
                } else {
                    Error::StateMemoryExhausted(format!(
                        "moving the state of operator {} to disk failed: {e}",
                        node.id
                    ))
                }
            })?;
        }
        Ok(())
    }

    /// Advances every operator's watermark, in graph order, and returns what reaches the sink.
    /// What an operator emits goes through the operators after it before they see the watermark.
    pub fn on_watermark(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        self.signal(|node| {
            node.stats.watermark = Some(watermark);
            node.operator.on_watermark(watermark)
        })
    }

    /// Input `input` ended: tells each operator, in graph order, of its input ports whose
    /// inputs have now all ended, and returns what reaches the sink.
    pub fn on_input_end(&mut self, input: usize) -> Result<Vec<RecordBatch>> {
        self.ended |= 1u128.checked_shl(input as u32).unwrap_or(0);
        let ended = self.ended;
        self.signal(|node| {
            let mut out = Vec::new();
            for port in 0..node.port_inputs.len() {
                let (mask, done) = node.port_inputs[port];
                if !done && mask != 0 && mask & ended == mask {
                    node.port_inputs[port].1 = true;
                    out.extend(node.operator.on_input_end(port)?);
                }
            }
            Ok(out)
        })
    }

    /// Tells every operator, in graph order, that a checkpoint is about to be taken, and returns
    /// what reaches the sink.
    pub fn on_checkpoint(&mut self) -> Result<Vec<RecordBatch>> {
        self.signal(|node| node.operator.on_checkpoint())
    }

    /// Calls `signal` on every operator in graph order, pushing what each emits through the
    /// operators after it before they get the signal.
    fn signal(
        &mut self,
        mut signal: impl FnMut(&mut Node) -> Result<Vec<RecordBatch>>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for node in 0..self.nodes.len() {
            let started = Instant::now();
            let emitted = signal(&mut self.nodes[node])?;
            self.nodes[node].stats.busy += started.elapsed();
            let mut result = Ok(());
            for batch in emitted {
                self.nodes[node].pending.1 += batch.num_rows() as u64;
                result = self.push_all(Input::Node(node), batch, &mut out);
                if result.is_err() {
                    break;
                }
            }
            self.settle(result.is_ok());
            result?;
        }
        self.fit_memory()?;
        self.to_output(out)
    }

    /// Commits (or aborts) what the operators did since the last settle, and its counts.
    fn settle(&mut self, ok: bool) {
        for node in &mut self.nodes {
            if ok {
                node.operator.commit_batch();
                node.stats.rows_in += node.pending.0;
                node.stats.rows_out += node.pending.1;
            } else {
                node.operator.abort_batch();
            }
            node.pending = (0, 0);
        }
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::Internal(format!("no operator {id} in the pipeline")))
    }

    /// Names what each operator reads (a list per operator, in graph order), for
    /// [`OperatorStats::inputs`].
    pub fn name_inputs(&mut self, names: Vec<Vec<String>>) {
        for (node, names) in self.nodes.iter_mut().zip(names) {
            node.stats.inputs = names;
        }
    }

    /// Every operator's figures now.
    pub fn stats(&self) -> Vec<OperatorStats> {
        self.nodes
            .iter()
            .map(|n| OperatorStats {
                state_rows: n.operator.state_rows() as u64,
                state_bytes: n.operator.state_bytes() as u64,
                spilled_bytes: n.operator.spilled_bytes(),
                instances: n.operator.instances(),
                ..n.stats.clone()
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{binary, col, lit};

    use super::*;
    use crate::runtime::operator::spill::load;
    use crate::runtime::plan::{NodeSpec, OperatorSpec, PipelinePlan, PlanInput, RunOptions};

    /// `SELECT 100 / a AS x FROM (SELECT DISTINCT a FROM s)`: a distinct, then a projection
    /// that fails on `a = 0`.
    pub fn distinct_then_divide() -> PipelinePlan {
        let input = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let out = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let divide = binary(
            lit(100i64),
            BinaryOp::Divide,
            col("a", &input).unwrap(),
            &input,
        )
        .unwrap();
        PipelinePlan {
            inputs: vec![PlanInput {
                source: "s".into(),
                scan_projection: None,
                event_time: None,
            }],
            output_key: None,
            nodes: vec![
                NodeSpec {
                    id: "dedup0".into(),
                    operator: OperatorSpec::Distinct { schema: input },
                    inputs: vec![Input::Source(0)],
                },
                NodeSpec {
                    id: "project1".into(),
                    operator: OperatorSpec::Project {
                        exprs: vec![divide],
                        schema: out.clone(),
                    },
                    inputs: vec![Input::Node(0)],
                },
            ],
            output: Input::Node(1),
            output_schema: out,
            display: String::new(),
        }
    }

    pub fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    pub fn xs(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_failed_batch_marks_no_key_as_seen() {
        for parallelism in [1, 2, 3] {
            let mut graph = distinct_then_divide()
                .instantiate(RunOptions {
                    parallelism,
                    ..Default::default()
                })
                .unwrap();
            assert!(graph.process(0, batch(&[1, 2, 0, 2, 5])).is_err());
            // Nothing was recorded: the same rows without the bad one all come out, duplicates
            // once.
            assert_eq!(
                sorted(&graph.process(0, batch(&[1, 2, 2, 5])).unwrap()),
                vec![20, 50, 100]
            );
            assert!(graph.process(0, batch(&[0])).is_err());
            // Seen keys stay seen; new ones pass.
            assert_eq!(
                xs(&graph.process(0, batch(&[5, 1, 4, 4])).unwrap()),
                vec![25]
            );
            let stats = graph.stats();
            assert_eq!(
                stats
                    .iter()
                    .map(|s| (
                        s.id.as_str(),
                        s.kind.as_str(),
                        s.rows_in,
                        s.rows_out,
                        s.state_rows
                    ))
                    .collect::<Vec<_>>(),
                // Failed batches count nowhere.
                vec![
                    ("dedup0", "distinct", 8, 4, 4),
                    ("project1", "project", 4, 4, 0)
                ]
            );
            let instances = &stats[0].instances;
            if parallelism == 1 {
                assert!(instances.is_empty());
            } else {
                assert_eq!(instances.len(), parallelism);
                assert_eq!(instances.iter().map(|i| i.rows_in).sum::<u64>(), 8);
                assert_eq!(instances.iter().map(|i| i.state_rows).sum::<u64>(), 4);
            }
        }
    }

    /// `SELECT DISTINCT a FROM (SELECT a FROM s UNION ALL SELECT b FROM t)`: two inputs.
    fn union_then_distinct() -> PipelinePlan {
        let a = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let input = |source: &str| PlanInput {
            source: source.into(),
            scan_projection: None,
            event_time: None,
        };
        PipelinePlan {
            inputs: vec![input("s"), input("t")],
            output_key: None,
            nodes: vec![
                NodeSpec {
                    id: "union0".into(),
                    operator: OperatorSpec::Union { schema: a.clone() },
                    inputs: vec![Input::Source(0), Input::Source(1)],
                },
                NodeSpec {
                    id: "dedup1".into(),
                    operator: OperatorSpec::Distinct { schema: a.clone() },
                    inputs: vec![Input::Node(0)],
                },
            ],
            output: Input::Node(1),
            output_schema: a,
            display: String::new(),
        }
    }

    #[test]
    fn batches_of_every_input_reach_the_operators_reading_it() {
        let mut graph = union_then_distinct()
            .instantiate(RunOptions::default())
            .unwrap();
        // Input 1's column is named b: the union relabels it.
        let t = |values: &[i64]| {
            let schema = Arc::new(Schema::new(vec![Field::new("b", DataType::Int64, true)]));
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
        };
        assert_eq!(
            xs(&graph.process(0, batch(&[1, 2, 2])).unwrap()),
            vec![1, 2]
        );
        let out = graph.process(1, t(&[2, 3, 1, 4])).unwrap();
        assert_eq!(xs(&out), vec![3, 4]);
        assert_eq!(out[0].schema().field(0).name(), "a");
        assert!(graph.process(0, batch(&[4, 3])).unwrap().is_empty());
        let stats = graph.stats();
        assert_eq!((stats[0].rows_in, stats[0].rows_out), (9, 9));
        assert_eq!(stats[1].state_rows, 4);
    }

    #[test]
    fn snapshots_are_the_changes_and_restore_rebuilds_the_state() {
        // State taken with one number of instances restores into any other.
        for (before, after) in [(1, 1), (2, 1), (1, 3), (3, 2)] {
            let mut graph = distinct_then_divide()
                .instantiate(RunOptions {
                    parallelism: before,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(graph.stateful().len(), 1);
            graph.process(0, batch(&[1, 2, 2])).unwrap();
            let first = graph.snapshot("dedup0", false).unwrap();
            assert_eq!(sorted(&load(&first).unwrap()), vec![1, 2]);
            graph.process(0, batch(&[2, 3])).unwrap();
            let second = graph.snapshot("dedup0", false).unwrap();
            assert_eq!(sorted(&load(&second).unwrap()), vec![3]);
            assert!(graph.snapshot("dedup0", false).unwrap().is_empty());
            assert_eq!(
                sorted(&load(&graph.snapshot("dedup0", true).unwrap()).unwrap()),
                vec![1, 2, 3]
            );

            let mut restored = distinct_then_divide()
                .instantiate(RunOptions {
                    parallelism: after,
                    ..Default::default()
                })
                .unwrap();
            restored
                .restore("dedup0", [first, second].concat(), None)
                .unwrap();
            assert_eq!(
                sorted(&restored.process(0, batch(&[3, 4, 1, 5])).unwrap()),
                vec![20, 25]
            );
        }
    }

    fn sorted(batches: &[RecordBatch]) -> Vec<i64> {
        let mut v = xs(batches);
        v.sort_unstable();
        v
    }

    /// Passes rows on and notes the ports whose inputs ended; `later`: it may emit on a
    /// watermark, as a window does.
    struct Ends {
        ended: Arc<parking_lot::Mutex<Vec<(usize, usize)>>>,
        node: usize,
        later: bool,
    }

    impl Operator for Ends {
        fn kind(&self) -> &'static str {
            "ends"
        }
        fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
            Ok(vec![batch])
        }
        fn emits_only_when_processing(&self) -> bool {
            !self.later
        }
        fn on_input_end(&mut self, port: usize) -> Result<Vec<RecordBatch>> {
            self.ended.lock().push((self.node, port));
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_port_closes_when_its_sources_end_unless_something_before_it_may_emit_later() {
        let ended = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let ends = |node: usize, later: bool| -> Box<dyn Operator> {
            Box::new(Ends {
                ended: ended.clone(),
                node,
                later,
            })
        };
        // 0 (a window, say) reads input 0, 1 reads input 1, and 2 joins them.
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let mut graph = OperatorGraph::new(
            vec![
                ("w".into(), ends(0, true), vec![Input::Source(0)]),
                ("f".into(), ends(1, false), vec![Input::Source(1)]),
                (
                    "j".into(),
                    ends(2, false),
                    vec![Input::Node(0), Input::Node(1)],
                ),
            ],
            Input::Node(2),
            schema,
            StateMemory::new(None).unwrap(),
        )
        .unwrap();
        graph.on_input_end(1).unwrap();
        assert_eq!(*ended.lock(), [(1, 0), (2, 1)]);
        // The window may still emit: the join's port 0 does not close.
        graph.on_input_end(0).unwrap();
        assert_eq!(*ended.lock(), [(1, 0), (2, 1), (0, 0)]);
    }
}
