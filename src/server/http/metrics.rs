//! `/metrics` in Prometheus's text format: each pipeline's, source partition's and operator's
//! figures from the system tables' rows, and the process's memory and CPU. Names carry the
//! `tributary_` prefix and base units; counters end in `_total`.

use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::HttpState;
use crate::catalog::PipelineState;
use crate::error::{Error, Result};
use crate::system_tables::SystemSchema;

/// The content type of the text format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) async fn metrics(State(state): State<Arc<HttpState>>) -> Result<Response, ApiError> {
    let text = render(&state.system).await?;
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}

/// One metric family being written: its samples follow its HELP and TYPE lines.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// Starts family `name` of `kind` (`counter`, `gauge`).
fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

/// A label value as the text format escapes it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the text format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The columns of a system table's rows, by name.
struct Columns<'a> {
    batch: &'a RecordBatch,
}

impl Columns<'_> {
    fn column(&self, name: &str) -> Result<&dyn Array> {
        Ok(self
            .batch
            .column(self.batch.schema().index_of(name)?)
            .as_ref())
    }

    fn text(&self, name: &str, row: usize) -> Result<String> {
        let c = self.column(name)?;
        Ok(match c.data_type() {
            DataType::Utf8 if c.is_valid(row) => c.as_string::<i32>().value(row).to_string(),
            _ => String::new(),
        })
    }

    /// A number column's value (integers, floats, and timestamps as seconds since the epoch).
    fn number(&self, name: &str, row: usize) -> Result<Option<f64>> {
        let c = self.column(name)?;
        if c.is_null(row) {
            return Ok(None);
        }
        Ok(Some(match c.data_type() {
            DataType::Int64 => c.as_primitive::<Int64Type>().value(row) as f64,
            DataType::Float64 => c.as_primitive::<Float64Type>().value(row),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                c.as_primitive::<TimestampMicrosecondType>().value(row) as f64 / 1e6
            }
            other => {
                return Err(Error::Internal(format!(
                    "metric column {name} of type {other}"
                )))
            }
        }))
    }
}

/// A family of one sample per row of `rows`, labelled by `labels` (label, column) and valued by
/// column `value`; rows where it is NULL have no sample.
fn per_row(
    out: &mut String,
    rows: &RecordBatch,
    (name, kind, help): (&'static str, &str, &str),
    labels: &[(&str, &str)],
    value: &str,
) -> Result<()> {
    let columns = Columns { batch: rows };
    let mut f = family(out, name, kind, help);
    for row in 0..rows.num_rows() {
        let Some(v) = columns.number(value, row)? else {
            continue;
        };
        let texts = labels
            .iter()
            .map(|(_, c)| columns.text(c, row))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .zip(&texts)
            .map(|((l, _), t)| (*l, t.as_str()))
            .collect();
        f.sample(&pairs, v);
    }
    Ok(())
}

const STATES: [PipelineState; 5] = [
    PipelineState::Created,
    PipelineState::Running,
    PipelineState::Completed,
    PipelineState::Stopped,
    PipelineState::Failed,
];

/// Every metric, in the text format.
pub(super) async fn render(system: &SystemSchema) -> Result<String> {
    let mut out = String::new();
    let pipelines = system.rows("pipelines").await?;
    let p = Columns { batch: &pipelines };
    {
        let mut up = family(
            &mut out,
            "tributary_pipeline_up",
            "gauge",
            "Whether the pipeline is running (1) or not (0).",
        );
        for row in 0..pipelines.num_rows() {
            let running = p.text("state", row)? == PipelineState::Running.as_str();
            up.sample(
                &[("pipeline", &p.text("name", row)?)],
                f64::from(u8::from(running)),
            );
        }
    }
    {
        let mut state = family(
            &mut out,
            "tributary_pipeline_state",
            "gauge",
            "The pipeline's state: 1 for the one it is in, 0 for the others.",
        );
        for row in 0..pipelines.num_rows() {
            let name = p.text("name", row)?;
            let now = p.text("state", row)?;
            for s in STATES {
                state.sample(
                    &[("pipeline", &name), ("state", s.as_str())],
                    f64::from(u8::from(now == s.as_str())),
                );
            }
        }
    }
    let pipeline_label = [("pipeline", "name")];
    for (column, name, kind, help) in [
        (
            "rows_in_since_start",
            "tributary_pipeline_records_in_total",
            "counter",
            "Records read from the pipeline's sources by this process (tributary.pipelines.rows_in_since_start).",
        ),
        (
            "rows_out_since_start",
            "tributary_pipeline_records_out_total",
            "counter",
            "Records written to the pipeline's sink by this process (rows_out_since_start).",
        ),
        (
            "rows_errored_since_start",
            "tributary_pipeline_records_rejected_total",
            "counter",
            "Records rejected as bad by this process (kept in tributary.errors; rows_errored_since_start).",
        ),
        (
            "rows_late_since_start",
            "tributary_pipeline_records_late_total",
            "counter",
            "Records that arrived behind the watermark, in this process (rows_late_since_start).",
        ),
        (
            "bytes_in_since_start",
            "tributary_pipeline_bytes_in_total",
            "counter",
            "Bytes of encoded input read by this process: file lines and Kafka payloads (sources that do not count them add 0).",
        ),
        (
            "commit_failures",
            "tributary_sink_commit_failures_total",
            "counter",
            "Sink commits that failed (each fails the pipeline's run), since the engine started.",
        ),
        (
            "epoch",
            "tributary_pipeline_checkpoint_epoch",
            "gauge",
            "The epoch of the pipeline's last checkpoint.",
        ),
        (
            "last_checkpoint_at",
            "tributary_pipeline_last_checkpoint_timestamp_seconds",
            "gauge",
            "When the pipeline's last checkpoint was taken (Unix time).",
        ),
        (
            "started_at",
            "tributary_pipeline_start_timestamp_seconds",
            "gauge",
            "When the pipeline last started (Unix time).",
        ),
        (
            "watermark",
            "tributary_pipeline_watermark_timestamp_seconds",
            "gauge",
            "The pipeline's event-time watermark (Unix time).",
        ),
    ] {
        per_row(
            &mut out,
            &pipelines,
            (name, kind, help),
            &pipeline_label,
            column,
        )?;
    }
    histograms(&mut out, &system.rows("durations").await?)?;
    let lag = system.rows("source_lag").await?;
    per_row(
        &mut out,
        &lag,
        (
            "tributary_source_lag_records",
            "gauge",
            "What a source partition has yet to read: records, or bytes of WAL for a CDC slot.",
        ),
        &[
            ("pipeline", "pipeline"),
            ("source", "source"),
            ("partition", "partition"),
        ],
        "lag",
    )?;
    per_row(
        &mut out,
        &lag,
        (
            "tributary_source_lag_seconds",
            "gauge",
            "How far behind in time a source partition is: the age of the last record read while input is left (0 when caught up).",
        ),
        &[
            ("pipeline", "pipeline"),
            ("source", "source"),
            ("partition", "partition"),
        ],
        "lag_seconds",
    )?;
    let operators = system.rows("operators").await?;
    // `replica`, not `instance`: Prometheus gives every scraped series its own `instance`.
    let operator_labels = [
        ("pipeline", "pipeline"),
        ("operator", "operator"),
        ("kind", "kind"),
        ("replica", "instance"),
    ];
    for (column, name, kind, help) in [
        (
            "rows_in",
            "tributary_operator_records_in_total",
            "counter",
            "Records into the operator.",
        ),
        (
            "rows_out",
            "tributary_operator_records_out_total",
            "counter",
            "Records out of the operator.",
        ),
        (
            "state_rows",
            "tributary_operator_state_rows",
            "gauge",
            "Rows the operator keeps as state.",
        ),
        (
            "state_bytes",
            "tributary_operator_state_bytes",
            "gauge",
            "Bytes of the operator's state in memory.",
        ),
        (
            "spilled_bytes",
            "tributary_operator_spilled_bytes",
            "gauge",
            "Bytes of the operator's state spilled to disk.",
        ),
        (
            "busy_ratio",
            "tributary_operator_busy_ratio",
            "gauge",
            "The share of the run's time the operator spent working.",
        ),
    ] {
        per_row(
            &mut out,
            &operators_with_text_instance(&operators)?,
            (name, kind, help),
            &operator_labels,
            column,
        )?;
    }
    process(&mut out);
    Ok(out)
}

/// The checkpoint and sink commit duration histograms, from `tributary.durations`' rows (a row
/// per pipeline, measure and bucket, cumulative, ending with `le` = +Inf).
fn histograms(out: &mut String, rows: &RecordBatch) -> Result<()> {
    let c = Columns { batch: rows };
    for (measure, name, help) in [
        (
            "checkpoint",
            "tributary_checkpoint_duration_seconds",
            "How long a checkpoint took: operators' checkpoint output, sink prepare, state writes.",
        ),
        (
            "sink_commit",
            "tributary_sink_commit_duration_seconds",
            "How long a sink commit took.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for row in 0..rows.num_rows() {
            if c.text("measure", row)? != measure {
                continue;
            }
            let pipeline = escape_label(&c.text("pipeline", row)?);
            let le = c.number("le", row)?.unwrap_or(f64::INFINITY);
            let n = c.number("count", row)?.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{name}_bucket{{pipeline=\"{pipeline}\",le=\"{}\"}} {}",
                number(le),
                number(n)
            );
            if le.is_infinite() {
                let sum = c.number("sum_seconds", row)?.unwrap_or(0.0);
                let _ = writeln!(out, "{name}_sum{{pipeline=\"{pipeline}\"}} {}", number(sum));
                let _ = writeln!(out, "{name}_count{{pipeline=\"{pipeline}\"}} {}", number(n));
            }
        }
    }
    Ok(())
}

/// The operators' rows with `instance` as text, so it can be a label.
fn operators_with_text_instance(operators: &RecordBatch) -> Result<RecordBatch> {
    let index = operators.schema().index_of("instance")?;
    let mut columns = operators.columns().to_vec();
    columns[index] = arrow::compute::cast(&columns[index], &DataType::Utf8)?;
    let fields: Vec<_> = operators
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == index {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8))
            } else {
                f.clone()
            }
        })
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

/// The process's resident memory and CPU time, from `/proc/self` (Linux; absent elsewhere).
fn process(out: &mut String) {
    if let Some(kb) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
    {
        family(
            out,
            "tributary_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        )
        .sample(&[], kb * 1024.0);
    }
    // Fields 14 and 15 of /proc/self/stat: user and system time in clock ticks, which Linux
    // counts in USER_HZ (100 per second) whatever the kernel's own tick rate.
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after_name = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
    {
        family(
            out,
            "tributary_process_cpu_seconds_total",
            "counter",
            "CPU time the process has used, user and system.",
        )
        .sample(&[], ticks / 100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_values_are_written_as_the_text_format_wants() {
        let mut out = String::new();
        let mut f = family(&mut out, "tributary_x_total", "counter", "X.");
        f.sample(&[("pipeline", "a\"b\\c\nd")], 3.0);
        f.sample(&[], f64::NAN);
        assert_eq!(
            out,
            "# HELP tributary_x_total X.\n# TYPE tributary_x_total counter\n\
             tributary_x_total{pipeline=\"a\\\"b\\\\c\\nd\"} 3\ntributary_x_total NaN\n"
        );
    }
}
