//! A stream joined with a table looked up by key as each batch arrives (a `postgres` source):
//! the batch's distinct keys are asked for at once, what is found is cached per key for the
//! source's `lookup_cache_ttl`, and DataFusion's planned join joins the batch with those rows.
//! Nothing is checkpointed: the table is upstream, and each row joins it as it is when looked up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use tributary_connectors::Lookup;

use super::lookup_cache::KeyCache;
use super::parallel::Keying;
use super::{block_on_io, run_plan_inputs, Operator};
use crate::error::{Error, Result};
use crate::runtime::source_table::SourceTable;

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct LookupJoinSpec {
    /// DataFusion's join over a placeholder for the stream and the looked-up side (which may
    /// filter and project the table's rows), left first.
    pub join: Arc<dyn ExecutionPlan>,
    /// Which side of the join (0, left; 1, right) is the looked-up table.
    pub lookup_port: usize,
    /// The join's key expressions over the stream's rows.
    pub stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The stream's columns.
    pub stream_schema: SchemaRef,
    /// The looked-up source.
    pub table: SourceTable,
    /// The source's columns the keys are looked up in, one per stream key.
    pub key_columns: Vec<String>,
    /// The source's columns the join reads (all when `None`).
    pub projection: Option<Vec<usize>>,
    /// Those columns: the looked-up side's placeholder.
    pub table_schema: SchemaRef,
}

/// A stream joined with a table looked up by key.
pub struct LookupJoin {
    spec: LookupJoinSpec,
    lookup: Box<dyn Lookup>,
    /// The key columns' types in the table: the stream's keys are cast to them.
    key_types: Vec<DataType>,
    /// Positions of the key columns in the table's schema.
    key_columns: Vec<usize>,
    keys: RowConverter,
    rows: RowConverter,
    cache: KeyCache,
    task: Arc<TaskContext>,
}

impl LookupJoin {
    /// The operator for a planned join, with the lookup its source gives.
    pub fn new(spec: LookupJoinSpec) -> Result<Self> {
        let lookup = spec.table.lookup(&spec.key_columns)?;
        Self::with_lookup(spec, lookup)
    }

    /// The same over `lookup`.
    pub fn with_lookup(spec: LookupJoinSpec, lookup: Box<dyn Lookup>) -> Result<Self> {
        let schema = datafusion::catalog::TableProvider::schema(&spec.table);
        let key_columns = spec
            .key_columns
            .iter()
            .map(|k| Ok(schema.index_of(k)?))
            .collect::<Result<Vec<_>>>()?;
        if key_columns.len() != spec.stream_keys.len() {
            return Err(Error::Internal(
                "a lookup join with unlike numbers of keys".into(),
            ));
        }
        let key_types: Vec<DataType> = key_columns
            .iter()
            .map(|&i| schema.field(i).data_type().clone())
            .collect();
        let keys = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let rows = RowConverter::new(
            spec.table_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let cache = KeyCache::new(lookup.cache());
        Ok(LookupJoin {
            spec,
            lookup,
            key_types,
            key_columns,
            keys,
            rows,
            cache,
            task: Arc::new(TaskContext::default()),
        })
    }

    /// The stream's keys as the table's key columns hold them (a value that cannot be one is
    /// NULL, and finds nothing).
    fn stream_keys(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let n = batch.num_rows();
        self.spec
            .stream_keys
            .iter()
            .zip(&self.key_types)
            .map(|(e, t)| {
                let v = e.evaluate(batch)?.into_array(n)?;
                Ok(if v.data_type() == t { v } else { cast(&v, t)? })
            })
            .collect()
    }

    /// The table's rows for the keys of `batch`: from the cache, and looked up for the rest.
    fn candidates(&mut self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let keys = self.stream_keys(batch)?;
        let key_rows = self.keys.convert_columns(&keys)?;
        let now = Instant::now();
        let mut seen = HashSet::new();
        let mut cached = Vec::new();
        let mut missing: Vec<u32> = Vec::new();
        for i in 0..batch.num_rows() {
            if keys.iter().any(|k| k.is_null(i)) {
                continue;
            }
            let key = key_rows.row(i);
            if !seen.insert(key) {
                continue;
            }
            match self
                .cache
                .enabled()
                .then(|| self.cache.get(key.as_ref(), now))
                .flatten()
            {
                Some(rows) => cached.extend(rows.iter().cloned()),
                None => missing.push(i as u32),
            }
        }
        let mut out = Vec::new();
        if !cached.is_empty() {
            let parser = self.rows.parser();
            let columns = self
                .rows
                .convert_rows(cached.iter().map(|r| parser.parse(r)))?;
            out.push(RecordBatch::try_new(
                self.spec.table_schema.clone(),
                columns,
            )?);
        }
        for chunk in missing.chunks(self.cache.policy.batch_keys.max(1)) {
            let at = UInt32Array::from(chunk.to_vec());
            let asked = keys
                .iter()
                .map(|k| Ok(take(k, &at, None)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            let found = block_on_io(self.lookup.get(&asked))?;
            let projected = match &self.spec.projection {
                Some(p) => found.project(p)?,
                None => found.clone(),
            };
            let projected =
                RecordBatch::try_new(self.spec.table_schema.clone(), projected.columns().to_vec())?;
            if self.cache.enabled() {
                self.remember(&asked, &found, &projected, now)?;
            }
            out.push(projected);
        }
        Ok(out)
    }

    /// Caches the rows found for the keys `asked`: a key found with no row is cached too.
    fn remember(
        &mut self,
        asked: &[ArrayRef],
        found: &RecordBatch,
        projected: &RecordBatch,
        now: Instant,
    ) -> Result<()> {
        let asked = self.keys.convert_columns(asked)?;
        let found_keys: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| found.column(i).clone())
            .collect();
        let found_keys = self.keys.convert_columns(&found_keys)?;
        let rows = self.rows.convert_columns(projected.columns())?;
        let mut by_key: HashMap<Box<[u8]>, Vec<Box<[u8]>>> = asked
            .iter()
            .map(|k| (Box::from(k.as_ref()), Vec::new()))
            .collect();
        for r in 0..found.num_rows() {
            by_key
                .entry(found_keys.row(r).as_ref().into())
                .or_default()
                .push(rows.row(r).as_ref().into());
        }
        // In the order asked, which is the order of use.
        for key in asked.iter() {
            if let Some((key, rows)) = by_key.remove_entry(key.as_ref()) {
                self.cache.insert(key, rows, now);
            }
        }
        for (key, rows) in by_key {
            self.cache.insert(key, rows, now);
        }
        Ok(())
    }
}

impl Operator for LookupJoin {
    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "lookup_join"
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let candidates = self.candidates(&batch)?;
        let stream =
            RecordBatch::try_new(self.spec.stream_schema.clone(), batch.columns().to_vec())?;
        let table = (self.spec.table_schema.clone(), candidates);
        let stream = (self.spec.stream_schema.clone(), vec![stream]);
        let sides = match self.spec.lookup_port {
            0 => vec![table, stream],
            _ => vec![stream, table],
        };
        run_plan_inputs(&self.spec.join, sides, &self.task)
    }

    /// The rows cached (a key found with none counts one).
    fn state_rows(&self) -> usize {
        self.cache.rows
    }

    fn state_bytes(&self) -> usize {
        self.cache.bytes
    }

    /// Instances split the stream's keys, each looking its own up (and caching them) at once.
    /// Nothing is checkpointed, so no state is keyed.
    fn keying(&self) -> Option<Keying> {
        Some(Keying {
            inputs: vec![self.spec.stream_keys.clone()],
            state: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{AsArray, BooleanArray, Int32Array, StringArray};
    use arrow::datatypes::Int32Type;
    use arrow::util::display::array_value_to_string;
    use async_trait::async_trait;
    use datafusion::datasource::MemTable;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::prelude::SessionContext;
    use parking_lot::Mutex;
    use tributary_connectors::{LookupCache, SourceSpec};

    use super::*;
    use crate::runtime::operator::tests::{customers, join_plan, orders};

    fn customer_batch(rows: &[(i32, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            customers(),
            vec![
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn order_batch(rows: &[(i32, Option<i32>)]) -> RecordBatch {
        RecordBatch::try_new(
            orders(),
            vec![
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// A table in memory that counts what it is asked for.
    #[derive(Clone)]
    struct Table {
        rows: Arc<Mutex<RecordBatch>>,
        asked: Arc<Mutex<Vec<Vec<i32>>>>,
        cache: LookupCache,
    }

    #[async_trait]
    impl Lookup for Table {
        async fn get(&mut self, keys: &[ArrayRef]) -> tributary_connectors::Result<RecordBatch> {
            let wanted: Vec<i32> = keys[0].as_primitive::<Int32Type>().values().to_vec();
            let rows = self.rows.lock().clone();
            let ids = rows.column(0).as_primitive::<Int32Type>();
            let mask: BooleanArray = ids
                .iter()
                .map(|id| id.map(|id| wanted.contains(&id)))
                .collect();
            self.asked.lock().push(wanted);
            Ok(arrow::compute::filter_record_batch(&rows, &mask)?)
        }

        fn cache(&self) -> LookupCache {
            self.cache
        }
    }

    const SQL: &str = "SELECT order_id, name FROM orders LEFT JOIN customers ON customer = id";

    /// `orders LEFT JOIN customers ON customer = id`, planned as the SQL front end plans it.
    async fn operator(table: &Table) -> LookupJoin {
        let join = join_plan(&[("orders", orders()), ("customers", customers())], SQL).await;
        let source = SourceTable::new(
            SourceSpec {
                name: "customers".into(),
                schema: None,
                options: BTreeMap::new(),
            },
            customers(),
            Arc::new(tributary_connectors::file::FileSourceConnector),
        );
        let spec = LookupJoinSpec {
            join,
            lookup_port: 1,
            stream_keys: vec![Arc::new(Column::new("customer", 1))],
            stream_schema: orders(),
            table: source,
            key_columns: vec!["id".into()],
            projection: None,
            table_schema: customers(),
        };
        LookupJoin::with_lookup(spec, Box::new(table.clone())).unwrap()
    }

    fn table(rows: &[(i32, &str)], cache: LookupCache) -> Table {
        Table {
            rows: Arc::new(Mutex::new(customer_batch(rows))),
            asked: Arc::default(),
            cache,
        }
    }

    const HOUR: LookupCache = LookupCache {
        rows: 100,
        ttl: Some(std::time::Duration::from_secs(3600)),
        batch_keys: 2,
    };

    /// (order, name) of joined rows (the order's columns, then the customer's), sorted.
    fn joined(batches: &[RecordBatch]) -> Vec<String> {
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(|i| {
                    let value = |c: usize| array_value_to_string(b.column(c), i).unwrap();
                    format!("{} {}", value(0), value(b.num_columns() - 1))
                })
            })
            .collect();
        out.sort();
        out
    }

    /// DataFusion's batch join of the same rows.
    async fn batch_join(orders_rows: RecordBatch, customer_rows: RecordBatch) -> Vec<String> {
        let ctx = SessionContext::new();
        for (name, batch) in [("orders", orders_rows), ("customers", customer_rows)] {
            let t = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
            ctx.register_table(name, Arc::new(t)).unwrap();
        }
        joined(&ctx.sql(SQL).await.unwrap().collect().await.unwrap())
    }

    #[tokio::test]
    async fn each_batch_asks_for_its_distinct_keys_and_joins_as_a_batch_join_does() {
        let rows = [(1, "ann"), (2, "bob"), (3, "cy")];
        let t = table(&rows, HOUR);
        let mut op = operator(&t).await;
        let orders = order_batch(&[
            (10, Some(1)),
            (11, Some(2)),
            (12, Some(9)),
            (13, Some(1)),
            (14, None),
            (15, Some(3)),
        ]);
        let out = op.process(0, orders.clone()).unwrap();
        assert_eq!(
            joined(&out),
            batch_join(orders, customer_batch(&rows)).await
        );
        assert_eq!(
            joined(&out),
            ["10 ann", "11 bob", "12 ", "13 ann", "14 ", "15 cy"]
        );
        // Each key once, no NULL, at most two per request.
        assert_eq!(*t.asked.lock(), [vec![1, 2], vec![9, 3]]);
        // Four keys cached, 9 as found without a row.
        assert_eq!(op.state_rows(), 4);
    }

    #[tokio::test]
    async fn a_cached_key_is_not_asked_again_within_its_ttl() {
        let t = table(&[(1, "ann"), (2, "bob")], HOUR);
        let mut op = operator(&t).await;
        op.process(0, order_batch(&[(10, Some(1)), (11, Some(7))]))
            .unwrap();
        *t.rows.lock() = customer_batch(&[(1, "ANN"), (2, "bob"), (7, "new")]);
        let out = op
            .process(
                0,
                order_batch(&[(12, Some(1)), (13, Some(7)), (14, Some(2))]),
            )
            .unwrap();
        // 1 and 7 (missing then) come from the cache; only 2 is asked for.
        assert_eq!(joined(&out), ["12 ann", "13 ", "14 bob"]);
        assert_eq!(*t.asked.lock(), [vec![1, 7], vec![2]]);
        // Past the time to live, the table is asked again.
        let expiring = table(
            &[(1, "ann")],
            LookupCache {
                ttl: Some(std::time::Duration::ZERO),
                ..HOUR
            },
        );
        let mut op = operator(&expiring).await;
        op.process(0, order_batch(&[(10, Some(1))])).unwrap();
        *expiring.rows.lock() = customer_batch(&[(1, "ANN")]);
        let out = op.process(0, order_batch(&[(11, Some(1))])).unwrap();
        assert_eq!(joined(&out), ["11 ANN"]);
        assert_eq!(expiring.asked.lock().len(), 2);
    }

    #[tokio::test]
    async fn without_a_cache_every_batch_sees_the_table_as_it_is() {
        let none = LookupCache {
            rows: 0,
            ttl: None,
            batch_keys: 5000,
        };
        let t = table(&[(1, "ann")], none);
        let mut op = operator(&t).await;
        let first = op.process(0, order_batch(&[(10, Some(1))])).unwrap();
        *t.rows.lock() = customer_batch(&[(1, "ANN")]);
        let second = op.process(0, order_batch(&[(11, Some(1))])).unwrap();
        assert_eq!(joined(&[first, second].concat()), ["10 ann", "11 ANN"]);
        assert_eq!(t.asked.lock().len(), 2);
        assert_eq!(op.state_rows(), 0);
    }

    #[tokio::test]
    async fn the_least_recently_used_keys_leave_a_full_cache() {
        let rows: Vec<(i32, String)> = (1..=30).map(|i| (i, format!("c{i}"))).collect();
        let rows: Vec<(i32, &str)> = rows.iter().map(|(i, n)| (*i, n.as_str())).collect();
        let t = table(
            &rows,
            LookupCache {
                rows: 10,
                batch_keys: 100,
                ..HOUR
            },
        );
        let mut op = operator(&t).await;
        op.process(
            0,
            order_batch(&(1..=10).map(|i| (i, Some(i))).collect::<Vec<_>>()),
        )
        .unwrap();
        // Key 1 is used again, then new keys push the cache past its rows.
        op.process(0, order_batch(&[(100, Some(1))])).unwrap();
        op.process(0, order_batch(&[(101, Some(11)), (102, Some(12))]))
            .unwrap();
        assert!(op.state_rows() <= 10, "{}", op.state_rows());
        let asked = t.asked.lock().len();
        // Key 1 stayed; key 2, the least recently used, left.
        op.process(0, order_batch(&[(103, Some(1))])).unwrap();
        assert_eq!(t.asked.lock().len(), asked);
        op.process(0, order_batch(&[(104, Some(2))])).unwrap();
        assert_eq!(t.asked.lock().len(), asked + 1);
    }
}
