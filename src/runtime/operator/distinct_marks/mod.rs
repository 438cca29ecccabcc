//! The stage in front of a GROUP BY's DISTINCT aggregates (`count(DISTINCT x) FILTER (WHERE f)`):
//! it marks each row that is the first of its group with its value of `x` passing `f`, so the
//! aggregate counts marked rows (`count(x) FILTER (WHERE mark)`) and keeps a number per group
//! instead of every distinct value. The pairs counted are its state, 12 or 16 bytes each, as Flink
//! keeps split-distinct aggregates in keyed map state; past the state memory they spill to disk
//! as sorted runs (the groups and values they name stay interned in memory).

mod pairs;
mod spilled;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    make_array, new_null_array, Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder,
    Int64Array, UInt32Array, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type, UInt64Type};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::parallel::Keying;
use super::spill::{SnapshotWriter, SpillWriter, StateChunk};
use super::Operator;
use crate::error::{Error, Result};
use crate::runtime::memory::{Budget, StateMemory};
pub use pairs::MAX_FILTERS;
use pairs::{Interner, PairRow, Pairs};
use spilled::OnDisk;

/// Rows of a state batch.
const STATE_ROWS: usize = 65_536;

/// One DISTINCT argument and the filters of the aggregates over it.
#[derive(Debug, Clone)]
pub struct MarkedValue {
    /// The argument, over the input rows.
    pub value: Arc<dyn PhysicalExpr>,
    /// One mark column per filter, in order: `None` for an aggregate without FILTER.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

/// What the operator is built from, as the SQL front end plans it.
#[derive(Debug, Clone)]
pub struct DistinctMarksSpec {
    /// The GROUP BY expressions, over the input rows.
    pub groups: Vec<Arc<dyn PhysicalExpr>>,
    /// The DISTINCT arguments.
    pub values: Vec<MarkedValue>,
    /// The input rows' schema.
    pub input: SchemaRef,
    /// The output: the input columns, then a Boolean mark per argument and filter, in order.
    pub output: SchemaRef,
}

/// How a value becomes a pair's 64 bits.
enum Encoding {
    /// An integer, or a type stored as one (dates, times, timestamps, durations): its bits,
    /// read as the integer type `carrier`.
    Integer { carrier: DataType },
    /// Any other: the id of its row in Arrow's row format, interned.
    Interned {
        converter: RowConverter,
        values: Interner,
    },
}

/// The integer type whose bits a value of type `t` is stored as.
fn carrier(t: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match t {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => t.clone(),
        Date32 | Time32(_) => Int32,
        Date64 | Time64(_) | Timestamp(_, _) | Duration(_) => Int64,
        _ => return None,
    })
}

/// `array` with its buffers read as type `t` (of the same width).
fn retyped(array: &dyn Array, t: &DataType) -> Result<ArrayRef> {
    let data = array
        .to_data()
        .into_builder()
        .data_type(t.clone())
        .build()?;
    Ok(make_array(data))
}

/// The 64-bit integer type values of integer type `carrier` widen to losslessly.
fn widest(carrier: &DataType) -> DataType {
    if carrier.is_unsigned_integer() {
        DataType::UInt64
    } else {
        DataType::Int64
    }
}

/// Each value's bits (whatever for NULLs), for an array of `carrier`'s width.
fn integer_bits(array: &dyn Array, carrier: &DataType) -> Result<Vec<u64>> {
    let wide = cast(&retyped(array, carrier)?, &widest(carrier))?;
    Ok(match wide.data_type() {
        DataType::UInt64 => wide.as_primitive::<UInt64Type>().values().to_vec(),
        _ => wide
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|v| *v as u64)
            .collect(),
    })
}

/// Values of type `t` from their bits as `carrier`.
fn from_integer_bits(bits: &[u64], carrier: &DataType, t: &DataType) -> Result<ArrayRef> {
    let wide: ArrayRef = match widest(carrier) {
        DataType::UInt64 => Arc::new(UInt64Array::from_iter_values(bits.iter().copied())),
        _ => Arc::new(Int64Array::from_iter_values(bits.iter().map(|b| *b as i64))),
    };
    retyped(&cast(&wide, carrier)?, t)
}

impl Encoding {
    fn for_type(t: &DataType) -> Result<Self> {
        Ok(match carrier(t) {
            Some(carrier) => Encoding::Integer { carrier },
            None => Encoding::Interned {
                converter: RowConverter::new(vec![SortField::new(t.clone())])?,
                values: Interner::default(),
            },
        })
    }

    /// Each value's 64 bits (whatever for NULLs), and for interned values their rows.
    fn encode(&mut self, values: &ArrayRef) -> Result<(Vec<u64>, Option<Rows>)> {
        match self {
            Encoding::Integer { carrier } => Ok((integer_bits(values.as_ref(), carrier)?, None)),
            Encoding::Interned {
                converter,
                values: interned,
            } => {
                let rows = converter.convert_columns(std::slice::from_ref(values))?;
                let bits = rows
                    .iter()
                    .map(|r| Ok(u64::from(interned.intern(r.as_ref())?)))
                    .collect::<Result<_>>()?;
                Ok((bits, Some(rows)))
            }
        }
    }

    /// Values of type `t` from their bits.
    fn decode(&self, bits: &[u64], t: &DataType) -> Result<ArrayRef> {
        match self {
            Encoding::Integer { carrier } => from_integer_bits(bits, carrier, t),
            Encoding::Interned { converter, values } => {
                let parser = converter.parser();
                let rows = bits.iter().map(|b| parser.parse(values.row(*b as u32)));
                Ok(converter.convert_rows(rows)?.remove(0))
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Encoding::Integer { .. } => 0,
            Encoding::Interned { values, .. } => values.bytes(),
        }
    }
}

/// One DISTINCT argument's pairs and their changes.
struct Counted {
    spec: MarkedValue,
    data_type: DataType,
    encoding: Encoding,
    pairs: Pairs,
    /// Pairs spilled to disk.
    on_disk: OnDisk,
    /// Filters first passed by batches not yet committed, per pair.
    pending: HashMap<(u32, u64), u32, ahash::RandomState>,
}

/// Marks the first row of each group and DISTINCT value passing each filter.
pub struct DistinctMarks {
    groups: Vec<Arc<dyn PhysicalExpr>>,
    group_converter: RowConverter,
    /// The groups seen, by id.
    group_ids: Interner,
    values: Vec<Counted>,
    /// State files of the pairs changed since the last snapshot that were spilled.
    spilled_changes: Vec<StateChunk>,
    /// Rows of the last batch: about how many pairs the next may bring.
    batch_rows: usize,
    output: SchemaRef,
    state_schema: SchemaRef,
    budget: Option<Budget>,
}

impl DistinctMarks {
    /// The operator `spec` describes, with nothing counted.
    pub fn new(spec: DistinctMarksSpec) -> Result<Self> {
        let mut fields = Vec::new();
        let mut sort_fields = Vec::new();
        for (i, g) in spec.groups.iter().enumerate() {
            let t = g.data_type(&spec.input)?;
            sort_fields.push(SortField::new(t.clone()));
            fields.push(Field::new(format!("group_{i}"), t, true));
        }
        let mut values = Vec::new();
        for (i, v) in spec.values.iter().enumerate() {
            if v.filters.len() > MAX_FILTERS {
                return Err(Error::Internal(format!(
                    "more than {MAX_FILTERS} filters of one DISTINCT argument"
                )));
            }
            let t = v.value.data_type(&spec.input)?;
            fields.push(Field::new(format!("value_{i}"), t.clone(), true));
            fields.push(Field::new(format!("filters_{i}"), DataType::UInt32, true));
            values.push(Counted {
                spec: v.clone(),
                encoding: Encoding::for_type(&t)?,
                data_type: t,
                pairs: Pairs::default(),
                on_disk: OnDisk::default(),
                pending: HashMap::default(),
            });
        }
        Ok(DistinctMarks {
            groups: spec.groups,
            group_converter: RowConverter::new(sort_fields)?,
            group_ids: Interner::default(),
            values,
            spilled_changes: Vec::new(),
            batch_rows: 0,
            output: spec.output,
            state_schema: Arc::new(Schema::new(fields)),
            budget: None,
        })
    }

    /// The same, its state accounted in `memory`.
    pub fn with_memory(mut self, memory: &Arc<StateMemory>) -> Self {
        self.budget = Some(Budget::new(memory, "distinct_marks"));
        self
    }

    /// The group id of each of the rows whose GROUP BY values are `keys`, and their rows.
    fn group_ids(&mut self, keys: &[ArrayRef]) -> Result<(Vec<u32>, Rows)> {
        let rows = self.group_converter.convert_columns(keys)?;
        let ids = rows
            .iter()
            .map(|r| self.group_ids.intern(r.as_ref()))
            .collect::<Result<_>>()?;
        Ok((ids, rows))
    }

    /// State rows for `pairs` (group id, value, filters) of argument `at`.
    fn state_batch(&self, at: usize, pairs: &[(u32, u64, u32)]) -> Result<RecordBatch> {
        let parser = self.group_converter.parser();
        let groups = self.group_converter.convert_rows(
            pairs
                .iter()
                .map(|(g, _, _)| parser.parse(self.group_ids.row(*g))),
        )?;
        let bits: Vec<u64> = pairs.iter().map(|(_, v, _)| *v).collect();
        let counted = &self.values[at];
        let values = counted.encoding.decode(&bits, &counted.data_type)?;
        let filters = UInt32Array::from_iter_values(pairs.iter().map(|(_, _, f)| *f));
        self.state_rows_of(at, groups, values, filters)
    }

    /// State rows of argument `at` from their group columns, values and filters.
    fn state_rows_of(
        &self,
        at: usize,
        mut columns: Vec<ArrayRef>,
        values: ArrayRef,
        filters: UInt32Array,
    ) -> Result<RecordBatch> {
        let n = values.len();
        let mut values = Some(values);
        let mut filters = Some(filters);
        for (i, counted) in self.values.iter().enumerate() {
            if i == at {
                columns.push(values.take().expect("one argument at `at`"));
                columns.push(Arc::new(filters.take().expect("one argument at `at`")));
            } else {
                columns.push(new_null_array(&counted.data_type, n));
                columns.push(new_null_array(&DataType::UInt32, n));
            }
        }
        Ok(RecordBatch::try_new(self.state_schema.clone(), columns)?)
    }

    fn bytes(&self) -> usize {
        self.group_ids.bytes() + self.values.iter().map(Counted::bytes).sum::<usize>()
    }
}

impl Operator for DistinctMarks {
    fn kind(&self) -> &'static str {
        "distinct_marks"
    }

    fn emits_only_when_processing(&self) -> bool {
        true
    }

    fn process(&mut self, _input: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        self.batch_rows = n;
        let keys = self
            .groups
            .iter()
            .map(|g| g.evaluate(&batch)?.into_array(n))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let (groups, group_rows) = self.group_ids(&keys)?;
        let mut columns = batch.columns().to_vec();
        for counted in &mut self.values {
            let values = counted.spec.value.evaluate(&batch)?.into_array(n)?;
            let (bits, value_rows) = counted.encoding.encode(&values)?;
            let passes = counted
                .spec
                .filters
                .iter()
                .map(|f| match f {
                    Some(f) => Ok(Some(f.evaluate(&batch)?.into_array(n)?)),
                    None => Ok(None),
                })
                .collect::<datafusion::common::Result<Vec<Option<ArrayRef>>>>()?;
            let passes: Vec<Option<&BooleanArray>> = passes
                .iter()
                .map(|p| p.as_ref().map(|a| a.as_boolean()))
                .collect();
            let mut marks: Vec<BooleanBufferBuilder> = passes
                .iter()
                .map(|_| BooleanBufferBuilder::new(n))
                .collect();
            // The filters each row passes that its pair had not passed in memory, then on disk.
            let mut new: Vec<u32> = (0..n)
                .map(|row| {
                    let mut want = 0u32;
                    if values.is_valid(row) {
                        for (j, p) in passes.iter().enumerate() {
                            let passed = match p {
                                None => true,
                                Some(p) => p.is_valid(row) && p.value(row),
                            };
                            if passed {
                                want |= 1 << j;
                            }
                        }
                    }
                    match want {
                        0 => 0,
                        _ => want & !counted.pairs.filters(groups[row], bits[row]),
                    }
                })
                .collect();
            if !counted.on_disk.is_empty() {
                let unsure: Vec<usize> = (0..n).filter(|&r| new[r] != 0).collect();
                let value = |r: usize| {
                    counted
                        .encoding
                        .value_bytes(bits[r], value_rows.as_ref(), r)
                };
                let filters =
                    counted
                        .on_disk
                        .filters(&unsure, |r| group_rows.row(r).data(), value)?;
                for (row, filters) in unsure.into_iter().zip(filters) {
                    new[row] &= !filters;
                }
            }
            for (row, &new) in new.iter().enumerate() {
                let mut first = new;
                if first != 0 {
                    let pending = counted.pending.entry((groups[row], bits[row])).or_insert(0);
                    first &= !*pending;
                    *pending |= first;
                }
                for (j, m) in marks.iter_mut().enumerate() {
                    m.append(first & (1 << j) != 0);
                }
            }
            for mut m in marks {
                columns.push(Arc::new(BooleanArray::new(m.finish(), None)));
            }
        }
        Ok(vec![RecordBatch::try_new(self.output.clone(), columns)?])
    }

    fn commit_batch(&mut self) {
        for counted in &mut self.values {
            for ((group, value), filters) in counted.pending.drain() {
                if filters != 0 {
                    counted.pairs.add(group, value, filters, false);
                }
            }
        }
    }

    fn abort_batch(&mut self) {
        for counted in &mut self.values {
            counted.pending.clear();
        }
    }

    fn state_schema(&self) -> Option<SchemaRef> {
        Some(self.state_schema.clone())
    }

    fn snapshot(&mut self, full: bool) -> Result<Vec<StateChunk>> {
        let total: usize = self
            .values
            .iter()
            .map(|c| match full {
                true => c.pairs.len() + c.on_disk.len(),
                false => c.pairs.changed_len(),
            })
            .sum();
        let memory = self.budget.as_ref().map(|b| b.memory().as_ref());
        let mut out = SnapshotWriter::new(memory, &self.state_schema, total, STATE_ROWS)?;
        let mut chunk = Vec::with_capacity(STATE_ROWS.min(total));
        for (at, counted) in self.values.iter().enumerate() {
            // Those in memory, then those on disk (a pair in both has the union of their
            // filters, as a restore makes it again).
            let pairs = match full {
                true => counted.pairs.iter(),
                false => counted.pairs.changed(),
            };
            let mut pairs = pairs.peekable();
            while pairs.peek().is_some() {
                chunk.clear();
                chunk.extend(pairs.by_ref().take(STATE_ROWS));
                out.write(self.state_batch(at, &chunk)?)?;
            }
            let mut entries = counted.on_disk.entries().filter(|_| full).peekable();
            let mut disk_chunk = Vec::new();
            while entries.peek().is_some() {
                disk_chunk.clear();
                for entry in entries.by_ref().take(STATE_ROWS) {
                    disk_chunk.push(entry?);
                }
                out.write(self.state_batch_of_keys(at, &disk_chunk)?)?;
            }
        }
        for counted in &mut self.values {
            counted.pairs.clear_changed();
        }
        let mut out = out.finish()?;
        // Changes spilled since the last snapshot: a full one holds them already.
        let spilled_changes = std::mem::take(&mut self.spilled_changes);
        if !full {
            out.extend(spilled_changes);
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<StateChunk>, _watermark: Option<i64>) -> Result<()> {
        let groups = self.groups.len();
        for chunk in &state {
            for batch in chunk.batches()? {
                let batch = batch?;
                let (ids, _) = self.group_ids(&batch.columns()[..groups])?;
                for (i, counted) in self.values.iter_mut().enumerate() {
                    let values = batch.column(groups + 2 * i);
                    let filters = batch
                        .column(groups + 2 * i + 1)
                        .as_primitive::<UInt32Type>();
                    if filters.null_count() == filters.len() {
                        continue;
                    }
                    let (bits, _) = counted.encoding.encode(values)?;
                    for row in 0..batch.num_rows() {
                        if filters.is_valid(row) && values.is_valid(row) {
                            counted
                                .pairs
                                .add(ids[row], bits[row], filters.value(row), true);
                        }
                    }
                }
                self.fit_memory()?;
            }
        }
        Ok(())
    }

    /// Past its share of the state memory, the pairs in memory go to disk, and the groups
    /// and values they named leave memory with them.
    fn fit_memory(&mut self) -> Result<()> {
        let Some(mut budget) = self.budget.take() else {
            return Ok(());
        };
        // Counted as the next batch may grow the pair tables, so that a growth (the old table
        // and the new at once) stays within the budget too.
        let fitted = budget.fit_spilling(
            self,
            |op| {
                op.group_ids.bytes()
                    + op.values
                        .iter()
                        .map(|c| c.bytes_taking(op.batch_rows))
                        .sum::<usize>()
            },
            |op, memory, _| op.spill(memory),
            "COUNT(DISTINCT ...)'s filters of its pairs on disk",
        );
        self.budget = Some(budget);
        fitted
    }

    /// Pairs counted: in memory, and entries on disk (a pair spilled twice, with filters
    /// passed after the first spill, counts twice until the runs merge).
    fn state_rows(&self) -> usize {
        self.values
            .iter()
            .map(|c| c.pairs.len() + c.on_disk.len())
            .sum()
    }

    fn state_bytes(&self) -> usize {
        self.bytes()
    }

    fn spilled_bytes(&self) -> u64 {
        self.values.iter().map(|c| c.on_disk.disk_bytes()).sum()
    }

    fn keying(&self) -> Option<Keying> {
        Some(Keying {
            inputs: vec![self.groups.clone()],
            state: (0..self.groups.len()).collect(),
        })
    }
}
