//! Warns when a column a pipeline reads is NULL in every record so far (a declared name that
//! matches no key of the input).

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::status::PipelineStatus;

/// Watches the source columns a pipeline reads for ones no record ever fills: a declared name
/// that matches no JSON key (`dateTime` declared unquoted becomes `datetime`) reads as NULL in
/// every row, silently. After enough rows, such columns are named in `tributary.pipelines.warning`;
/// the warning clears when a value turns up.
pub struct UnfilledColumns {
    /// (column index, name, a value seen yet).
    columns: Vec<(usize, String, bool)>,
    rows: u64,
    warned: bool,
}

/// Rows read before an all-NULL column is worth a warning.
const UNFILLED_WARNING_ROWS: u64 = 1_000;

impl UnfilledColumns {
    /// Watches the columns `read` (all when `None`) of `schema`.
    pub fn new(schema: &SchemaRef, read: Option<&[usize]>) -> Self {
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        let columns = read
            .unwrap_or(&all)
            .iter()
            .filter_map(|&i| Some((i, schema.fields().get(i)?.name().clone(), false)))
            .collect();
        UnfilledColumns {
            columns,
            rows: 0,
            warned: false,
        }
    }

    /// Notes a batch of `source`'s rows, and warns (or clears the warning) on `status`.
    pub fn observe(&mut self, batch: &RecordBatch, source: &str, status: &PipelineStatus) {
        if batch.num_rows() == 0 || self.columns.iter().all(|c| c.2) {
            return;
        }
        self.rows += batch.num_rows() as u64;
        for (i, _, filled) in self.columns.iter_mut().filter(|c| !c.2) {
            if let Some(col) = batch.columns().get(*i) {
                *filled = col.null_count() < col.len();
            }
        }
        let unfilled: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !c.2)
            .map(|c| format!("\"{}\"", c.1))
            .collect();
        if unfilled.is_empty() {
            if self.warned {
                status.set_warning(None);
                self.warned = false;
            }
        } else if self.rows >= UNFILLED_WARNING_ROWS {
            status.set_warning(Some(format!(
                "column {} of source \"{source}\" is NULL in all {} records read so far: if the \
                 records carry it, check the name's spelling and case (quoted names keep their \
                 case, unquoted ones are lowercased)",
                unfilled.join(", "),
                self.rows
            )));
            self.warned = true;
        }
    }
}
