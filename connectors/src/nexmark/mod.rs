//! The `nexmark` source: a deterministic generator of the Nexmark benchmark's persons, auctions
//! and bids, producing Arrow batches directly. It follows the reference generator's rules (one
//! global event sequence with person:auction:bid = 1:3:46, hot auctions, sellers and bidders,
//! event time advancing with the configured rate); values come from a per-event seeded RNG, so
//! the same seed gives the same rows and a restart resumes exactly where a checkpoint left off.

mod generator;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};
use crate::options::{OptionSpec, Options};
use crate::{Source, SourceBatch, SourceConnector, SourcePosition, SourceSpec};
pub use generator::{event_number, rows_below as generator_rows, Generator, NexmarkTable};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec::required("table", "bid, auction or person"),
    OptionSpec::optional("events", "length of the global event sequence (persons + auctions + bids); the source ends after it"),
    OptionSpec::optional("rate", "events per second of the global sequence, paced in wall-clock time; without events the source never ends"),
    OptionSpec::optional("seed", "random seed (default 0): the same seed gives the same rows"),
    OptionSpec::optional("out_of_order", "out-of-order group size (default 1: event times never go back)"),
    OptionSpec::optional("batch_size", "rows per batch (default 16384)"),
];

/// Event-time rate when none is configured, as in the reference generator.
pub const DEFAULT_EVENT_RATE: u64 = 10_000;

/// Parsed options of a Nexmark source.
#[derive(Debug, Clone)]
pub struct NexmarkOptions {
    /// Which table.
    pub table: NexmarkTable,
    /// Bound on the global sequence.
    pub events: Option<u64>,
    /// Wall-clock pacing, events per second.
    pub rate: Option<u64>,
    /// RNG seed.
    pub seed: u64,
    /// Out-of-order group size.
    pub out_of_order: u64,
    /// Rows per batch.
    pub batch_size: usize,
}

impl NexmarkOptions {
    /// Parses and checks the options of `spec`.
    pub fn parse(spec: &SourceSpec) -> Result<Self> {
        let opts = Options::validate("nexmark", OPTIONS, &spec.options)?;
        let table = match opts.get_choice("table", &["bid", "auction", "person"], "bid")? {
            "bid" => NexmarkTable::Bid,
            "auction" => NexmarkTable::Auction,
            _ => NexmarkTable::Person,
        };
        let events = opts.get_u64("events")?;
        let rate = opts.get_u64("rate")?;
        if rate == Some(0) {
            return Err(ConnectorError::InvalidOption {
                option: "rate".into(),
                value: "0".into(),
                reason: "must be positive".into(),
            });
        }
        if events.is_none() && rate.is_none() {
            return Err(ConnectorError::MissingOption {
                connector: "nexmark".into(),
                option: "events".into(),
                description: "set events = N for a bounded source or rate = R (events/s) for an unbounded one".into(),
            });
        }
        let out_of_order = opts.get_u64("out_of_order")?.unwrap_or(1).max(1);
        let batch_size = opts
            .get_u64("batch_size")?
            .unwrap_or(16_384)
            .clamp(1, 1 << 20) as usize;
        Ok(NexmarkOptions {
            table,
            events,
            rate,
            seed: opts.get_u64("seed")?.unwrap_or(0),
            out_of_order,
            batch_size,
        })
    }
}

/// The schema of a Nexmark table, with the reference column names.
pub fn schema(table: NexmarkTable) -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(match table {
        NexmarkTable::Bid => vec![
            f("auction", DataType::Int64),
            f("bidder", DataType::Int64),
            f("price", DataType::Int64),
            f("channel", DataType::Utf8),
            f("url", DataType::Utf8),
            f("date_time", ts()),
            f("extra", DataType::Utf8),
        ],
        NexmarkTable::Auction => vec![
            f("id", DataType::Int64),
            f("item_name", DataType::Utf8),
            f("description", DataType::Utf8),
            f("initial_bid", DataType::Int64),
            f("reserve", DataType::Int64),
            f("date_time", ts()),
            f("expires", ts()),
            f("seller", DataType::Int64),
            f("category", DataType::Int64),
            f("extra", DataType::Utf8),
        ],
        NexmarkTable::Person => vec![
            f("id", DataType::Int64),
            f("name", DataType::Utf8),
            f("email_address", DataType::Utf8),
            f("credit_card", DataType::Utf8),
            f("city", DataType::Utf8),
            f("state", DataType::Utf8),
            f("date_time", ts()),
            f("extra", DataType::Utf8),
        ],
    }))
}

/// `connector = 'nexmark'`.
pub struct NexmarkSourceConnector;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct NexmarkPosition {
    /// Index of the next row of this table.
    next: u64,
}

#[async_trait]
impl SourceConnector for NexmarkSourceConnector {
    fn name(&self) -> &'static str {
        "nexmark"
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    async fn validate(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let opts = NexmarkOptions::parse(spec)?;
        let schema = schema(opts.table);
        if let Some(declared) = &spec.schema {
            for f in declared.fields() {
                let ours = schema.field_with_name(f.name()).map_err(|_| {
                    ConnectorError::Config(format!(
                        "nexmark {} has no column '{}' (it has: {}); the column list can be omitted",
                        opts.table.name(),
                        f.name(),
                        schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                if ours.data_type() != f.data_type() {
                    return Err(ConnectorError::Config(format!(
                        "nexmark column '{}' is {}, not {}; the column list can be omitted",
                        f.name(),
                        ours.data_type(),
                        f.data_type()
                    )));
                }
            }
        }
        Ok(schema)
    }

    fn is_bounded(&self, spec: &SourceSpec) -> bool {
        NexmarkOptions::parse(spec)
            .map(|o| o.events.is_some())
            .unwrap_or(true)
    }

    async fn open(
        &self,
        spec: &SourceSpec,
        _schema: SchemaRef,
        from: Option<SourcePosition>,
        _read: crate::ReadOptions,
    ) -> Result<Box<dyn Source>> {
        let opts = NexmarkOptions::parse(spec)?;
        let pos: NexmarkPosition = SourcePosition::decode(from, "nexmark")?;
        let generator = Generator::new(
            opts.table,
            opts.seed,
            opts.rate.unwrap_or(DEFAULT_EVENT_RATE),
            opts.out_of_order,
        );
        let end = opts.events.map(|n| generator::rows_below(opts.table, n));
        Ok(Box::new(NexmarkSource {
            schema: schema(opts.table),
            generator,
            next: pos.next,
            end,
            opts,
            started: None,
        }))
    }
}

struct NexmarkSource {
    schema: SchemaRef,
    generator: Generator,
    next: u64,
    end: Option<u64>,
    opts: NexmarkOptions,
    /// Wall-clock start and the row it started at, for pacing.
    started: Option<(Instant, u64)>,
}

#[async_trait]
impl Source for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Unpaced and bounded: the rows left times a typical row's size.
    fn remaining_bytes(&self) -> Option<u64> {
        match (self.end, self.opts.rate) {
            (Some(end), None) => Some(end.saturating_sub(self.next) * self.opts.table.row_bytes()),
            _ => None,
        }
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let mut rows = self.opts.batch_size as u64;
        if let Some(end) = self.end {
            if self.next >= end {
                return Ok(None);
            }
            rows = rows.min(end - self.next);
        }
        if let Some(rate) = self.opts.rate {
            // Rows of this table per second: its share of the global rate.
            let table_rate = (rate as f64 * self.opts.table.share()).max(1e-9);
            let (t0, k0) = *self.started.get_or_insert((Instant::now(), self.next));
            loop {
                let due = (t0.elapsed().as_secs_f64() * table_rate) as u64 + k0;
                if due > self.next {
                    rows = rows.min(due - self.next);
                    break;
                }
                let wait = ((self.next + 1 - k0) as f64 / table_rate) - t0.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.0005, 0.1))).await;
            }
        }
        let batch = self.generator.batch(self.next, rows as usize)?;
        self.next += rows;
        let position = SourcePosition(serde_json::json!({ "next": self.next }));
        Ok(Some(SourceBatch::new(batch, position)))
    }
}
