//! Samples every pipeline's figures into the engine's history once a second, from the rows
//! `tributary.pipelines` and `tributary.source_lag` hold.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use chrono::Utc;

use crate::catalog::PipelineState;
use crate::error::Result;
use crate::health::{History, Sample, SAMPLE_INTERVAL};
use crate::system_tables::SystemSchema;

/// Samples into `history` until the system tables are dropped (the engine with them).
pub fn spawn(system: Weak<SystemSchema>, history: Arc<History>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(system) = system.upgrade() else {
                break;
            };
            if let Err(e) = sample(&system, &history).await {
                tracing::warn!(error = %e, "Sampling the pipelines' figures failed.");
            }
        }
    });
}

/// One sample of every pipeline.
pub async fn sample(system: &SystemSchema, history: &History) -> Result<()> {
    let pipelines = system.rows("pipelines").await?;
    let lag = system.rows("source_lag").await?;
    let mut lags: HashMap<String, i64> = HashMap::new();
    let lag_pipeline = text(&lag, "pipeline")?;
    let lag_values = column(&lag, "lag")?.as_primitive::<Int64Type>();
    for (pipeline, value) in lag_pipeline.into_iter().zip(lag_values.iter()) {
        if let Some(value) = value {
            *lags.entry(pipeline).or_default() += value.max(0);
        }
    }
    let names = text(&pipelines, "name")?;
    let states = text(&pipelines, "state")?;
    let count = |name: &str| -> Result<Vec<u64>> {
        let c = column(&pipelines, name)?.as_primitive::<Int64Type>();
        Ok((0..c.len()).map(|i| c.value(i).max(0) as u64).collect())
    };
    let (rows_in, rows_out, rows_errored, epoch) = (
        count("rows_in")?,
        count("rows_out")?,
        count("rows_errored")?,
        count("epoch")?,
    );
    let at_ms = Utc::now().timestamp_millis();
    for (i, name) in names.iter().enumerate() {
        history.record(
            name,
            Sample {
                at_ms,
                rows_in: rows_in[i],
                rows_out: rows_out[i],
                rows_errored: rows_errored[i],
                epoch: epoch[i],
                lag: lags.get(name).copied(),
                running: states[i] == PipelineState::Running.as_str(),
            },
        );
    }
    history.retain(&names);
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    Ok(batch.column(batch.schema().index_of(name)?).as_ref())
}

fn text(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    Ok(column(batch, name)?
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}
