//! Compiles a pipeline's SELECT into a [`PipelinePlan`]: DataFusion plans and optimises the query,
//! then the optimised plan is lowered into a graph of operator specs the runtime runs per batch.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Filter, LogicalPlan, Projection, SubqueryAlias, TableScan};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;

pub(super) use super::placeholders::{
    join_over, placeholder_with, plan_aggregate, plan_over_placeholder, plan_physical,
};
use super::places::Places;
use super::session_window::{Session, SessionWindowEnd, SESSION_NAMES};
use super::updates::{output_key, retract_having};
use super::windows::{event_time, WINDOW_END, WINDOW_START};
use crate::error::{Error, Result};
use crate::runtime::operator::stateless::OP;
pub use crate::runtime::plan::PipelinePlan;
use crate::runtime::plan::{Input, NodeSpec, OperatorSpec, PlanInput};
use crate::runtime::source_table::SourceTable;

/// What a pipeline's plan depends on besides its query.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target {
    /// The sink applies rows by key.
    pub applies_by_key: bool,
    /// Groups of a GROUP BY leave the state when they stop changing (`state_ttl`).
    pub groups_expire: bool,
}

/// Plans `query` (the SELECT of `CREATE PIPELINE ... AS INSERT INTO sink SELECT ...`). When the
/// sink applies rows by key, a change stream read by the query is a table: a WHERE keeps the
/// table's rows that pass it (see [`super::changes`]).
pub async fn compile(
    state: &SessionState,
    query: &ast::Query,
    target: Target,
) -> Result<PipelinePlan> {
    let applies_by_key = target.applies_by_key;
    // A pipeline reads the clock per batch: DataFusion's now() would be folded into the time
    // the pipeline was planned.
    let mut state = state.clone();
    let timezone = state.config_options().execution.time_zone.clone();
    for f in super::clock::per_batch_clock_functions(timezone.as_deref()) {
        state.register_udf(f)?;
    }
    // Sessions are merged by the pipeline's aggregate as rows arrive.
    let session = state
        .table_functions()
        .get(SESSION_NAMES[0])
        .and_then(|f| (f.function().as_ref() as &dyn std::any::Any).downcast_ref::<Session>())
        .map(|s| Arc::new(s.streaming()));
    if let Some(session) = session {
        for name in SESSION_NAMES {
            state.register_udtf(name, session.clone());
        }
    }
    // Tables read FOR SYSTEM_TIME AS OF are marked in their joins' ON (DataFusion reads no
    // table versions).
    let mut query = query.clone();
    let versioned = super::as_of::versioned_tables(&query)?;
    if !versioned.is_empty() {
        let mut columns = std::collections::HashMap::new();
        for name in versioned {
            let column = versioned_table_column(&state, &name).await?;
            columns.insert(name.to_string(), column);
        }
        super::as_of::move_versions_into_joins(&mut query, &mut |name| {
            Ok(columns[&name.to_string()].clone())
        })?;
        state.register_udf(Arc::new(super::as_of::AsOfMarker::udf()))?;
    }
    let logical = state
        .statement_to_plan(DFStatement::Statement(Box::new(ast::Statement::Query(
            Box::new(query.clone()),
        ))))
        .await?;
    // An inner join whose one side's columns go unused may become a semi join in batch
    // (eliminate_join); a join of two streams joins as written.
    let rules = state
        .optimizers()
        .iter()
        .filter(|r| r.name() != "eliminate_join")
        .cloned()
        .collect();
    let optimizing = datafusion::execution::SessionStateBuilder::new_from_existing(state.clone())
        .with_optimizer_rules(rules)
        .build();
    let optimized = optimizing.optimize(&logical)?;
    let display = optimized.display_indent().to_string();
    let places = Places::of(&query);
    let mut cx = Lowering {
        places,
        state: &state,
        nodes: Vec::new(),
        scanned: None,
        inputs: Vec::new(),
        windowed: false,
        updating: None,
        applies_by_key,
        carry: None,
        carry_from_group_by: false,
        row_number_limit: None,
        stream_joined: false,
        split_distinct: !target.groups_expire,
    };
    let mut output = lower(&optimized, &mut cx)?;
    super::shared_scans::share_scans(&mut cx, &mut output);
    let mut inputs = Vec::with_capacity(cx.inputs.len());
    for (table, scan_projection) in &cx.inputs {
        let event_time = match table.watermark() {
            Some((column, expression)) => {
                let schema = datafusion::catalog::TableProvider::schema(table);
                Some(event_time(&state, &schema, column, expression)?)
            }
            None => None,
        };
        if cx.windowed && event_time.is_none() {
            let source = table.name();
            return Err(Error::Plan(format!(
                "a window closes when the watermark passes its end, and source \"{source}\" has no watermark: declare one, as in CREATE SOURCE {source} (..., WATERMARK FOR <time column> AS <time column> - INTERVAL '5' SECOND)"
            ))
            .at_place(places.window_function));
        }
        inputs.push(PlanInput {
            source: table.name().to_string(),
            scan_projection: scan_projection.clone(),
            event_time,
        });
    }
    let (having, output_key) = match cx.updating {
        Some(at) => (
            retract_having(&mut cx.nodes, at)?,
            output_key(&cx.nodes, at)?,
        ),
        None => (false, None),
    };
    let nodes = cx.nodes;
    // Name checks: sinks need real column names.
    let schema = optimized.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let name = f.name();
        let simple = name.chars().all(|c| c.is_alphanumeric() || c == '_') && !name.is_empty();
        if !simple {
            return Err(Error::Plan(format!(
                "column {} of the pipeline's SELECT ({name}) needs a name a sink can store: add AS <name>",
                i + 1
            )));
        }
        if fields.iter().any(|g: &Field| g.name() == name) {
            return Err(Error::Plan(format!(
                "the pipeline's SELECT yields two columns named \"{name}\"; rename one with AS"
            )));
        }
        fields.push(f.as_ref().clone().with_nullable(true));
    }
    if having {
        fields.push(Field::new(OP, DataType::Utf8, true));
    }
    Ok(PipelinePlan {
        inputs,
        output_key,
        nodes,
        output,
        output_schema: Arc::new(Schema::new(fields)),
        display,
    })
}

/// A column of table `name`, read FOR SYSTEM_TIME AS OF, for the join's marker to name: `_op`
/// of a change stream; none for a table looked up by key, which is read as it is when looked
/// up (Flink's lookup joins say `FOR SYSTEM_TIME AS OF o.proc_time`).
async fn versioned_table_column(
    state: &SessionState,
    name: &ast::ObjectName,
) -> Result<Option<String>> {
    let reference = datafusion::sql::planner::object_name_to_table_reference(name.clone(), true)?;
    let table = state
        .schema_for_ref(reference.clone())?
        .table(reference.table())
        .await?;
    let source = table.as_ref().and_then(|t| t.downcast_ref::<SourceTable>());
    let Some(source) = source else {
        return Err(Error::Plan(format!(
            "FOR SYSTEM_TIME AS OF reads a source's versions: \"{name}\" is not a source"
        )));
    };
    if source.looks_up() {
        return Ok(None);
    }
    if super::changes::is_change_stream(source) {
        return Ok(Some(OP.to_string()));
    }
    Err(Error::Unsupported(format!(
        "FOR SYSTEM_TIME AS OF reads the versions of a change stream (a postgres-cdc source, or a source with {OP} and a primary key), or looks up a table by key: source \"{name}\" is neither"
    )))
}

/// What a lowered subplan reads and where its rows come out.
pub(super) type Lowered = Input;

/// What lowering has found so far.
pub(super) struct Lowering<'a> {
    /// Where errors point in the query's text.
    pub places: Places,
    /// Plans aggregates.
    pub state: &'a SessionState,
    pub nodes: Vec<NodeSpec>,
    /// The source read last.
    pub scanned: Option<SourceTable>,
    /// The sources read, with the columns read of each: the plan's inputs.
    pub inputs: Vec<(SourceTable, Option<Vec<usize>>)>,
    /// Whether some operator needs the watermark.
    pub windowed: bool,
    /// The node of a GROUP BY without a window, whose output is updates.
    pub updating: Option<usize>,
    /// Whether the sink applies rows by key.
    pub applies_by_key: bool,
    /// Columns of a change stream carried after each node's own, up to the GROUP BY over it:
    /// the primary key, then `_op`.
    pub carry: Option<Vec<Field>>,
    /// Whether the carried columns start at a GROUP BY (whose updates another one reads) rather
    /// than at a change stream's scan.
    pub carry_from_group_by: bool,
    /// The first rows a WHERE keeps of the ROW_NUMBER() under it, for its window to take.
    pub row_number_limit: Option<usize>,
    /// Whether a join of two streams was lowered: its rows come behind the watermark.
    pub stream_joined: bool,
    /// Whether DISTINCT aggregates of a GROUP BY without a window count marked rows (see
    /// [`super::split_distinct`]): not when groups expire, as the marks would outlive them.
    pub split_distinct: bool,
}

/// Appends a node reading `input` and returns it as the new output.
pub(super) fn push(cx: &mut Lowering, operator: OperatorSpec, input: Input) -> Input {
    push_n(cx, operator, vec![input])
}

/// Appends a node reading `inputs` (in port order) and returns it as the new output.
pub(super) fn push_n(cx: &mut Lowering, operator: OperatorSpec, inputs: Vec<Input>) -> Input {
    let nodes = &mut cx.nodes;
    let index = nodes.len();
    // Ids are stable for a given query: checkpointed state is found by them.
    let id = match operator {
        OperatorSpec::Distinct { .. } => format!("dedup{index}"),
        OperatorSpec::DistinctMarks(_) => format!("distinct_marks{index}"),
        OperatorSpec::Filter(_) => format!("filter{index}"),
        OperatorSpec::ChangeFilter { .. } => format!("change_filter{index}"),
        OperatorSpec::ChangeAggregate { .. } => format!("change_aggregate{index}"),
        OperatorSpec::ChangePartials { .. } => format!("change_partials{index}"),
        OperatorSpec::Having { .. } => format!("having{index}"),
        OperatorSpec::Project { .. } => format!("project{index}"),
        OperatorSpec::WindowAggregate {
            session_start: None,
            ..
        } => format!("window{index}"),
        OperatorSpec::WindowAggregate { .. } => format!("session{index}"),
        OperatorSpec::Unnest(_) => format!("unnest{index}"),
        OperatorSpec::UpdatingAggregate { .. } => format!("aggregate{index}"),
        OperatorSpec::Union { .. } => format!("union{index}"),
        OperatorSpec::TemporalJoin(_) => format!("join{index}"),
        OperatorSpec::VersionedJoin(_) => format!("versioned_join{index}"),
        OperatorSpec::ChangeJoin(_) => format!("change_join{index}"),
        OperatorSpec::LookupJoin(_) => format!("lookup{index}"),
        OperatorSpec::StreamJoin(_) => format!("stream_join{index}"),
        OperatorSpec::TopN { .. } => format!("top_n{index}"),
        OperatorSpec::ChangeTopN { .. } => format!("change_top_n{index}"),
    };
    nodes.push(NodeSpec {
        id,
        operator,
        inputs,
    });
    Input::Node(index)
}

/// Lowers an optimised logical plan into operator nodes, inputs first.
pub(super) fn lower(plan: &LogicalPlan, cx: &mut Lowering) -> Result<Lowered> {
    if cx.carry.is_some() && cx.carry_from_group_by {
        if let LogicalPlan::Aggregate(agg) = plan {
            return super::changes::lower_carried_aggregate(agg, plan, cx);
        }
    }
    if cx.carry.is_some() && !cx.carry_from_group_by {
        if let LogicalPlan::Join(join) = plan {
            if let Some((_, tables)) = super::change_join::change_join_under(plan) {
                return super::change_join::lower_change_join(join, tables, cx);
            }
        }
    }
    if cx.carry.is_some()
        && !matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::TableScan(_)
        )
    {
        return Err(Error::Unsupported(format!(
            "a GROUP BY over a change stream aggregates its table's current rows, and may read them through WHERE and expressions only, not {}",
            plan.display()
        ))
        .at_place(cx.places.group_by));
    }
    let props = ExecutionProps::new();
    let compile_expr = |e: &datafusion::logical_expr::Expr,
                        input: &LogicalPlan|
     -> Result<Arc<dyn PhysicalExpr>> {
        Ok(create_physical_expr(
            e,
            input.schema(),
            &props,
            &Default::default(),
        )?)
    };
    match plan {
        LogicalPlan::Projection(Projection {
            expr,
            input,
            schema,
            ..
        }) => {
            let from = lower(input, cx)?;
            let mut exprs = expr
                .iter()
                .map(|e| compile_expr(e, input))
                .collect::<Result<Vec<_>>>()?;
            let mut schema = Arc::new(schema.as_arrow().clone());
            if let Some(carried) = &cx.carry {
                (exprs, schema) = super::changes::carry_through(exprs, &schema, input, carried);
            }
            Ok(push(cx, OperatorSpec::Project { exprs, schema }, from))
        }
        LogicalPlan::Filter(filter) if super::top_n::filters_a_window(filter) => {
            super::top_n::lower_ranked_filter(filter, cx)
        }
        LogicalPlan::Filter(Filter { predicate, .. }) if super::as_of::is_marked(predicate) => {
            Err(Error::Unsupported(
                "FOR SYSTEM_TIME AS OF takes the event time of the stream joined (the column its source declares WATERMARK FOR)".into(),
            ))
        }
        LogicalPlan::Filter(Filter {
            predicate, input, ..
        }) => {
            let from = lower(input, cx)?;
            let op = super::changes::table_filter_op(predicate, input, cx)?;
            let predicate = compile_expr(predicate, input)?;
            let filter = match op {
                Some(op) => OperatorSpec::ChangeFilter { predicate, op },
                None => OperatorSpec::Filter(predicate),
            };
            Ok(push(cx, filter, from))
        }
        LogicalPlan::SubqueryAlias(SubqueryAlias { input, .. }) => lower(input, cx),
        LogicalPlan::TableScan(TableScan {
            table_name,
            source,
            projection,
            filters,
            fetch,
            ..
        }) => {
            let provider = datafusion::datasource::source_as_provider(source)?;
            let Some(table) = provider.downcast_ref::<SourceTable>() else {
                return Err(Error::Plan(format!(
                    "a pipeline reads from a source; \"{table_name}\" is not one (sinks and system tables cannot be read by pipelines)"
                )));
            };
            if !filters.is_empty() || fetch.is_some() {
                return Err(Error::Unsupported(
                    "LIMIT in a pipeline is not supported".into(),
                ));
            }
            cx.scanned = Some(table.clone());
            let projection = match &cx.carry {
                Some(carried) => Some(super::changes::carry_from_scan(
                    table,
                    projection.as_deref(),
                    carried,
                )?),
                None => projection.clone(),
            };
            cx.inputs.push((table.clone(), projection));
            Ok(Input::Source(cx.inputs.len() - 1))
        }
        LogicalPlan::Limit(_) => Err(Error::Unsupported(
            "LIMIT in a pipeline is not supported".into(),
        )),
        // SELECT DISTINCT arrives as a grouping without aggregates: emit each row's first occurrence.
        LogicalPlan::Aggregate(agg) if agg.aggr_expr.is_empty() => {
            let from = lower(&agg.input, cx)?;
            let exprs = agg
                .group_expr
                .iter()
                .map(|e| compile_expr(e, &agg.input))
                .collect::<Result<Vec<_>>>()?;
            let schema = Arc::new(agg.schema.as_arrow().clone());
            let keys = push(
                cx,
                OperatorSpec::Project {
                    exprs,
                    schema: schema.clone(),
                },
                from,
            );
            Ok(push(cx, OperatorSpec::Distinct { schema }, keys))
        }
        LogicalPlan::Aggregate(agg) => {
            let group_names = group_names(agg);
            let Some(window_end) = window_end_key(agg) else {
                if group_names.iter().any(|n| n == WINDOW_START) {
                    return Err(Error::Plan(format!(
                        "a window's rows are emitted when it ends: GROUP BY {WINDOW_START}, {WINDOW_END}, ..."
                    ))
                    .at_place(cx.places.group_by.or(cx.places.select)));
                }
                return lower_updating_aggregate(agg, cx);
            };
            if let Some(session) = find_session(&agg.input)? {
                return lower_session_aggregate(agg, &group_names, session, cx);
            }
            lower_window_aggregate(agg, window_end, None, cx)
        }
        LogicalPlan::Unnest(unnest) => {
            let from = lower(&unnest.input, cx)?;
            let plan = plan_over_placeholder(plan, cx.state)?;
            Ok(push(cx, OperatorSpec::Unnest(plan), from))
        }
        LogicalPlan::Distinct(_) => Err(Error::Unsupported(
            "this form of DISTINCT is not supported in pipelines (SELECT DISTINCT is)".into(),
        )),
        LogicalPlan::Join(join) => super::joins::lower_join(join, cx),
        LogicalPlan::Window(window) if cx.row_number_limit.is_some() => {
            let limit = cx.row_number_limit.take().unwrap_or(1);
            super::top_n::lower_top_n(window, limit, cx)
        }
        LogicalPlan::Window(_) => Err(Error::Unsupported(
            "a window function in a pipeline must be kept to its first rows: ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) AS rn, then WHERE rn <= N in the query around it".into(),
        )
        .at_place(cx.places.select)),
        LogicalPlan::Sort(_) => Err(Error::Unsupported(
            "ORDER BY in a pipeline is not supported (a stream has no end to sort at)".into(),
        )),
        LogicalPlan::Union(union) => {
            let updating = cx.updating;
            let inputs = union
                .inputs
                .iter()
                .map(|i| lower(i, cx))
                .collect::<Result<Vec<_>>>()?;
            if cx.updating != updating {
                return Err(Error::Unsupported(
                    "a UNION of a GROUP BY's updates with other rows is not supported yet".into(),
                )
                .at_place(cx.places.group_by));
            }
            let fields: Vec<Field> = union
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            let schema = Arc::new(Schema::new(fields));
            Ok(push_n(cx, OperatorSpec::Union { schema }, inputs))
        }
        other => Err(Error::Unsupported(format!(
            "this query shape is not supported in pipelines yet: {}",
            other.display()
        ))),
    }
}

/// The names of a GROUP BY's keys (empty for expressions).
fn group_names(agg: &datafusion::logical_expr::Aggregate) -> Vec<String> {
    agg.group_expr
        .iter()
        .map(|e| match e {
            datafusion::logical_expr::Expr::Column(c) => c.name.clone(),
            _ => String::new(),
        })
        .collect()
}

/// Which of a GROUP BY's keys is a window's end, or the end of windows already aggregated
/// (grouped again by it, under any name): the watermark closes its groups.
pub(super) fn window_end_key(agg: &datafusion::logical_expr::Aggregate) -> Option<usize> {
    group_names(agg)
        .iter()
        .position(|n| n == WINDOW_END)
        .or_else(|| {
            agg.group_expr.iter().position(|e| {
                matches!(e, datafusion::logical_expr::Expr::Column(c)
                if super::lineage::is_window_end(&agg.input, &c.name))
            })
        })
}

/// The marker of a SESSION window among the expressions of `plan` and its inputs.
fn find_session(plan: &LogicalPlan) -> Result<Option<SessionWindowEnd>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr;

    let mut found = None;
    plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            e.apply(|x| {
                if let Expr::ScalarFunction(f) = x {
                    if let Some(marker) = f.func.inner().downcast_ref::<SessionWindowEnd>() {
                        found = Some(marker.clone());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// A GROUP BY over SESSION(...): sessions per key (the GROUP BY's other columns), merged as
/// rows arrive and emitted when the watermark passes their end.
fn lower_session_aggregate(
    agg: &datafusion::logical_expr::Aggregate,
    group_names: &[String],
    session: SessionWindowEnd,
    cx: &mut Lowering,
) -> Result<Lowered> {
    // Sessions form over all of the source's rows, as a query over SESSION(...) computes them:
    // an operator between the source and the aggregate would form them over fewer.
    let mut node = agg.input.as_ref();
    loop {
        match node {
            LogicalPlan::Projection(p) => node = &p.input,
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            LogicalPlan::TableScan(_) => break,
            other => {
                return Err(Error::Unsupported(format!(
                    "a SESSION window's rows must go straight to its GROUP BY, and here they pass through {}: sessions form over all of the source's rows, so filter in the aggregates (count(*) FILTER (WHERE ...)) or after them (HAVING)",
                    other.display()
                ))
                .at_place(cx.places.window_function))
            }
        }
    }
    let position = |name: &str| group_names.iter().position(|n| n == name);
    let (Some(window_start), Some(window_end)) = (position(WINDOW_START), position(WINDOW_END))
    else {
        return Err(Error::Plan(format!(
            "a session's rows are emitted when it ends: GROUP BY {WINDOW_START}, {WINDOW_END}, <keys>"
        ))
        .at_place(cx.places.group_by.or(cx.places.select)));
    };
    if !session.keys.is_empty() {
        let mut named = session.keys.clone();
        named.sort();
        let mut grouped: Vec<String> = group_names
            .iter()
            .filter(|n| *n != WINDOW_START && *n != WINDOW_END)
            .cloned()
            .collect();
        grouped.sort();
        if named != grouped {
            return Err(Error::Plan(format!(
                "SESSION is keyed by {} but the GROUP BY by {}: sessions are per GROUP BY key, so they must be the same columns",
                named.join(", "),
                if grouped.is_empty() { "no column".to_string() } else { grouped.join(", ") }
            )));
        }
    }
    lower_window_aggregate(agg, window_end, Some(window_start), cx)
}

/// A GROUP BY whose rows the watermark closes: windows, or sessions starting at `session_start`.
fn lower_window_aggregate(
    agg: &datafusion::logical_expr::Aggregate,
    window_end: usize,
    session_start: Option<usize>,
    cx: &mut Lowering,
) -> Result<Lowered> {
    let from = lower(&agg.input, cx)?;
    let watermark_delay = if cx.stream_joined {
        // A joined pair comes out when its later row arrives: behind the watermark by as much
        // as the join lets the two sides' times differ.
        joined_window_lateness(agg, window_end)
            .map_err(|e| e.at_place(cx.places.window_function.or(cx.places.group_by)))?
    } else {
        0
    };
    let aggregate = plan_aggregate(agg, cx.state)?;
    cx.windowed = true;
    let operator = OperatorSpec::WindowAggregate {
        aggregate,
        window_end,
        session_start,
        watermark_delay,
    };
    Ok(push(cx, operator, from))
}

/// How far behind the watermark the window ends of a GROUP BY over a join of two streams can
/// be (microseconds), by group column `window_end` of `agg`.
fn joined_window_lateness(
    agg: &datafusion::logical_expr::Aggregate,
    window_end: usize,
) -> Result<i64> {
    let refused = || {
        Error::Unsupported(
            "a window over the rows of a join of two streams must group by the window_end of a window over one of its sides".into(),
        )
    };
    let datafusion::logical_expr::Expr::Column(column) = &agg.group_expr[window_end] else {
        return Err(refused());
    };
    let (join, side, column) =
        super::lineage::join_side_column(&agg.input, column).ok_or_else(refused)?;
    super::stream_join::output_lateness(join, side, &column)
}

/// A GROUP BY without a window: one state per group, the changed groups emitted at each
/// checkpoint as upserts keyed by the GROUP BY columns.
fn lower_updating_aggregate(
    agg: &datafusion::logical_expr::Aggregate,
    cx: &mut Lowering,
) -> Result<Lowered> {
    if agg.group_expr.is_empty() {
        return Err(Error::Unsupported(
            "an aggregate over the whole stream has no key to update by: GROUP BY a column, or a window (FROM TUMBLE(...) ... GROUP BY window_start, window_end)".into(),
        )
        .at_place(cx.places.select));
    }
    if let Some(inner) = super::changes::updating_aggregate_under(&agg.input) {
        return super::changes::lower_aggregate_over_updates(agg, inner, cx);
    }
    if let Some(table) = super::changes::change_stream_under(&agg.input) {
        return super::changes::lower_change_aggregate(agg, &table, cx);
    }
    if let Some((_, tables)) = super::change_join::change_join_under(&agg.input) {
        return super::change_join::lower_aggregate_over_join(agg, &tables, cx);
    }
    let updating = cx.updating;
    let from = lower(&agg.input, cx)?;
    if cx.updating != updating {
        return Err(Error::Unsupported(
            "a GROUP BY over a join's updates (a join of two change streams, or an outer join of two streams into a sink that applies rows by key) is not supported yet".into(),
        )
        .at_place(cx.places.group_by));
    }
    let (from, agg) = if cx.split_distinct {
        super::split_distinct::split_distinct(agg, from, cx)?
    } else {
        (from, agg.clone())
    };
    let aggregate = plan_aggregate(&agg, cx.state)?;
    let keys = agg.group_expr.len();
    let node = push(
        cx,
        OperatorSpec::UpdatingAggregate { aggregate, keys },
        from,
    );
    if let Input::Node(n) = node {
        cx.updating = Some(n);
    }
    Ok(node)
}
