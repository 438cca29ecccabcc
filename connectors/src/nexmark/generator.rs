//! The Nexmark event generator: row k of a table ↔ its global event number, and each event's
//! values from an RNG seeded by (seed, event id). Strings are slices of a seeded pool of random
//! lowercase letters, and URLs come from a precomputed table, so a bid costs a few RNG draws and
//! a few copies: generating is never the bottleneck of a pipeline.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::record_batch::RecordBatch;

use crate::error::Result;

/// The Nexmark tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkTable {
    /// New persons (1 in 50 events).
    Person,
    /// New auctions (3 in 50 events).
    Auction,
    /// Bids (46 in 50 events).
    Bid,
}

impl NexmarkTable {
    /// Table name.
    pub fn name(self) -> &'static str {
        match self {
            NexmarkTable::Person => "person",
            NexmarkTable::Auction => "auction",
            NexmarkTable::Bid => "bid",
        }
    }
    /// Share of the global event sequence.
    pub fn share(self) -> f64 {
        match self {
            NexmarkTable::Person => 1.0 / 50.0,
            NexmarkTable::Auction => 3.0 / 50.0,
            NexmarkTable::Bid => 46.0 / 50.0,
        }
    }

    /// A row's typical size as JSON lines (the generator's rows written out as such).
    pub fn row_bytes(self) -> u64 {
        match self {
            NexmarkTable::Person => 320,
            NexmarkTable::Auction => 650,
            NexmarkTable::Bid => 260,
        }
    }
}

const PROPORTION: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const ACTIVE_PEOPLE: u64 = 1000;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_BATCH: u64 = 100;
const CHANNELS: usize = 10_000;
/// 2015-07-15T00:00:00Z, the reference generator's base time.
pub const BASE_TIME_MS: i64 = 1_436_918_400_000;
const POOL_BYTES: usize = 1 << 16;

const FIRST_NAMES: &[&str] = &[
    "peter", "paul", "luke", "john", "saul", "vicky", "kate", "julie", "sarah", "deiter", "walter",
];
const LAST_NAMES: &[&str] = &[
    "shultz", "abrams", "spencer", "white", "bartels", "walton", "smith", "jones", "noris",
];
const CITIES: &[&str] = &[
    "phoenix",
    "los angeles",
    "san francisco",
    "boise",
    "portland",
    "bend",
    "redmond",
    "seattle",
    "kent",
    "cheyenne",
];
const STATES: &[&str] = &["az", "ca", "id", "or", "wa", "wy"];
const HOT_CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// The global event number of row `k` of `table`.
pub fn event_number(table: NexmarkTable, k: u64) -> u64 {
    match table {
        NexmarkTable::Person => k * PROPORTION,
        NexmarkTable::Auction => (k / 3) * PROPORTION + 1 + k % 3,
        NexmarkTable::Bid => (k / 46) * PROPORTION + 4 + k % 46,
    }
}

/// How many rows of `table` have an event number below `events`.
pub fn rows_below(table: NexmarkTable, events: u64) -> u64 {
    let (first, per) = match table {
        NexmarkTable::Person => (0, 1),
        NexmarkTable::Auction => (1, 3),
        NexmarkTable::Bid => (4, 46),
    };
    let full = events / PROPORTION;
    let rem = events % PROPORTION;
    full * per + rem.saturating_sub(first).min(per)
}

/// SplitMix64: small, fast, and good enough to seed and draw from.
#[derive(Debug, Clone)]
struct Rng(u64);

/// 6·ln 10 and ln 100: 10^(6u)·100 = e^(6u·ln 10 + ln 100).
const LN_10_TIMES_6: f64 = 6.0 * std::f64::consts::LN_10;
const LN_100: f64 = 2.0 * std::f64::consts::LN_10;

impl Rng {
    fn for_event(seed: u64, event: u64) -> Rng {
        let mut r = Rng(seed ^ event.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`, 53 bits, as Java's `Random.nextDouble`.
    #[inline]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in `[0, n)`.
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

fn last_base0_person_id(e: u64) -> u64 {
    e / PROPORTION
}

fn last_base0_auction_id(e: u64) -> u64 {
    let mut epoch = e / PROPORTION;
    let mut off = e % PROPORTION;
    if off < 1 {
        epoch = epoch.saturating_sub(1);
        off = 2;
    } else if off >= 4 {
        off = 2;
    } else {
        off -= 1;
    }
    epoch * 3 + off
}

fn next_base0_person_id(e: u64, rng: &mut Rng) -> u64 {
    let people = last_base0_person_id(e) + 1;
    let active = people.min(ACTIVE_PEOPLE);
    people - active + rng.below(active + ID_LEAD)
}

fn next_base0_auction_id(e: u64, rng: &mut Rng) -> u64 {
    let max = last_base0_auction_id(e);
    let min = max.saturating_sub(IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + ID_LEAD)
}

/// Generates rows of one table.
#[derive(Debug, Clone)]
pub struct Generator {
    table: NexmarkTable,
    seed: u64,
    /// Event-time rate, events per second.
    rate: u64,
    out_of_order: u64,
    /// Random lowercase letters; text values are slices of it.
    pool: Arc<String>,
    urls: Arc<Vec<String>>,
    channels: Arc<Vec<String>>,
}

impl Generator {
    /// A generator of `table` rows for `seed`, with event time advancing at `rate` events/s.
    pub fn new(table: NexmarkTable, seed: u64, rate: u64, out_of_order: u64) -> Self {
        let mut rng = Rng::for_event(seed, u64::MAX);
        let pool: String = (0..POOL_BYTES)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let word = |rng: &mut Rng| -> String {
            let len = 3 + rng.below(2) as usize;
            (0..len)
                .map(|_| {
                    if rng.below(13) == 0 {
                        '_'
                    } else {
                        (b'a' + rng.below(26) as u8) as char
                    }
                })
                .collect()
        };
        let base_url = |rng: &mut Rng| {
            format!(
                "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
                word(rng),
                word(rng),
                word(rng)
            )
        };
        let mut urls: Vec<String> = (0..HOT_CHANNELS.len())
            .map(|_| base_url(&mut rng))
            .collect();
        for i in 0..CHANNELS {
            let mut u = base_url(&mut rng);
            if rng.below(10) > 0 {
                u.push_str(&format!(
                    "&channel_id={}",
                    (i as i32).reverse_bits().unsigned_abs()
                ));
            }
            urls.push(u);
        }
        let channels = (0..CHANNELS).map(|i| format!("channel-{i}")).collect();
        Generator {
            table,
            seed,
            rate: rate.max(1),
            out_of_order: out_of_order.max(1),
            pool: Arc::new(pool),
            urls: Arc::new(urls),
            channels: Arc::new(channels),
        }
    }

    /// The event whose id, values and time event number `n` carries (the out-of-order shuffle).
    fn adjusted(&self, n: u64) -> u64 {
        let g = self.out_of_order;
        if g == 1 {
            return n;
        }
        (n / g) * g + (n.wrapping_mul(953)) % g
    }

    /// Event time of event `n`, in epoch milliseconds.
    pub fn timestamp(&self, n: u64) -> i64 {
        match n.checked_mul(1000) {
            Some(ms) => BASE_TIME_MS + (ms / self.rate) as i64,
            None => BASE_TIME_MS + ((n as u128 * 1000) / self.rate as u128) as i64,
        }
    }

    #[inline]
    fn text<'a>(&'a self, rng: &mut Rng, len: usize) -> &'a str {
        let off = rng.below((POOL_BYTES - len) as u64) as usize;
        // ASCII only, so every index is a character boundary.
        self.pool.get(off..off + len).unwrap_or("")
    }

    /// A price in cents as the reference generator draws it: round(10^(6u) * 100) for u uniform
    /// in [0, 1) with 53 bits, so prices take any of ~10^8 values (not a table of a few).
    #[inline]
    fn price(&self, rng: &mut Rng) -> i64 {
        rng.unit().mul_add(LN_10_TIMES_6, LN_100).exp().round() as i64
    }

    fn extra_len(current: usize, avg: usize, rng: &mut Rng) -> usize {
        if current > avg {
            return 0;
        }
        let d = avg - current;
        let delta = (d + 2) / 5;
        let min = d - delta;
        if delta == 0 {
            min
        } else {
            min + rng.below(2 * delta as u64) as usize
        }
    }

    /// Rows `first..first + rows` of the table as one batch.
    pub fn batch(&self, first: u64, rows: usize) -> Result<RecordBatch> {
        let schema = super::schema(self.table);
        let columns: Vec<ArrayRef> = match self.table {
            NexmarkTable::Bid => self.bids(first, rows),
            NexmarkTable::Auction => self.auctions(first, rows),
            NexmarkTable::Person => self.persons(first, rows),
        };
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    fn bids(&self, first: u64, rows: usize) -> Vec<ArrayRef> {
        let mut auction = Int64Builder::with_capacity(rows);
        let mut bidder = Int64Builder::with_capacity(rows);
        let mut price = Int64Builder::with_capacity(rows);
        let mut channel = StringBuilder::with_capacity(rows, rows * 12);
        let mut url = StringBuilder::with_capacity(rows, rows * 72);
        let mut date_time = TimestampMillisecondBuilder::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * 70);
        for k in first..first + rows as u64 {
            let n = self.adjusted(event_number(NexmarkTable::Bid, k));
            let mut rng = Rng::for_event(self.seed, n);
            let a = if rng.below(HOT_AUCTION_RATIO) > 0 {
                (last_base0_auction_id(n) / HOT_BATCH) * HOT_BATCH
            } else {
                next_base0_auction_id(n, &mut rng)
            };
            auction.append_value(a as i64 + FIRST_AUCTION_ID);
            let b = if rng.below(HOT_BIDDER_RATIO) > 0 {
                (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH + 1
            } else {
                next_base0_person_id(n, &mut rng)
            };
            bidder.append_value(b as i64 + FIRST_PERSON_ID);
            price.append_value(self.price(&mut rng));
            if rng.below(2) > 0 {
                let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
                channel.append_value(HOT_CHANNELS[i]);
                url.append_value(&self.urls[i]);
            } else {
                let i = rng.below(CHANNELS as u64) as usize;
                channel.append_value(&self.channels[i]);
                url.append_value(&self.urls[HOT_CHANNELS.len() + i]);
            }
            date_time.append_value(self.timestamp(n));
            let len = Self::extra_len(32, 100, &mut rng);
            extra.append_value(self.text(&mut rng, len));
        }
        vec![
            Arc::new(auction.finish()),
            Arc::new(bidder.finish()),
            Arc::new(price.finish()),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(date_time.finish()),
            Arc::new(extra.finish()),
        ]
    }

    fn auctions(&self, first: u64, rows: usize) -> Vec<ArrayRef> {
        let mut id = Int64Builder::with_capacity(rows);
        let mut item_name = StringBuilder::with_capacity(rows, rows * 20);
        let mut description = StringBuilder::with_capacity(rows, rows * 100);
        let mut initial_bid = Int64Builder::with_capacity(rows);
        let mut reserve = Int64Builder::with_capacity(rows);
        let mut date_time = TimestampMillisecondBuilder::with_capacity(rows);
        let mut expires = TimestampMillisecondBuilder::with_capacity(rows);
        let mut seller = Int64Builder::with_capacity(rows);
        let mut category = Int64Builder::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * 300);
        let events_for_auctions = (IN_FLIGHT_AUCTIONS * PROPORTION) / 3;
        for k in first..first + rows as u64 {
            let n = self.adjusted(event_number(NexmarkTable::Auction, k));
            let mut rng = Rng::for_event(self.seed, n);
            id.append_value(last_base0_auction_id(n) as i64 + FIRST_AUCTION_ID);
            let name = self.text(&mut rng, 20);
            let desc = self.text(&mut rng, 100);
            item_name.append_value(name);
            description.append_value(desc);
            let ib = self.price(&mut rng);
            initial_bid.append_value(ib);
            reserve.append_value(ib + self.price(&mut rng));
            let ts = self.timestamp(n);
            date_time.append_value(ts);
            let horizon = (self.timestamp(n + events_for_auctions) - ts).max(0) as u64;
            expires.append_value(ts + 1 + rng.below((2 * horizon).max(1)) as i64);
            let s = if rng.below(HOT_SELLER_RATIO) > 0 {
                (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH
            } else {
                next_base0_person_id(n, &mut rng)
            };
            seller.append_value(s as i64 + FIRST_PERSON_ID);
            category.append_value(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
            let len = Self::extra_len(8 + 20 + 100 + 40, 500, &mut rng);
            extra.append_value(self.text(&mut rng, len));
        }
        vec![
            Arc::new(id.finish()),
            Arc::new(item_name.finish()),
            Arc::new(description.finish()),
            Arc::new(initial_bid.finish()),
            Arc::new(reserve.finish()),
            Arc::new(date_time.finish()),
            Arc::new(expires.finish()),
            Arc::new(seller.finish()),
            Arc::new(category.finish()),
            Arc::new(extra.finish()),
        ]
    }

    fn persons(&self, first: u64, rows: usize) -> Vec<ArrayRef> {
        let mut id = Int64Builder::with_capacity(rows);
        let mut name = StringBuilder::with_capacity(rows, rows * 14);
        let mut email = StringBuilder::with_capacity(rows, rows * 17);
        let mut card = StringBuilder::with_capacity(rows, rows * 19);
        let mut city = StringBuilder::with_capacity(rows, rows * 10);
        let mut state = StringBuilder::with_capacity(rows, rows * 2);
        let mut date_time = TimestampMillisecondBuilder::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * 140);
        for k in first..first + rows as u64 {
            let n = self.adjusted(event_number(NexmarkTable::Person, k));
            let mut rng = Rng::for_event(self.seed, n);
            id.append_value(last_base0_person_id(n) as i64 + FIRST_PERSON_ID);
            let full = format!(
                "{} {}",
                FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize],
                LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]
            );
            let mail = format!("{}@{}.com", self.text(&mut rng, 7), self.text(&mut rng, 5));
            let cc = format!(
                "{:04} {:04} {:04} {:04}",
                rng.below(10_000),
                rng.below(10_000),
                rng.below(10_000),
                rng.below(10_000)
            );
            let c = CITIES[rng.below(CITIES.len() as u64) as usize];
            let s = STATES[rng.below(STATES.len() as u64) as usize];
            let len = Self::extra_len(
                8 + full.len() + mail.len() + cc.len() + c.len() + s.len(),
                200,
                &mut rng,
            );
            name.append_value(&full);
            email.append_value(&mail);
            card.append_value(&cc);
            city.append_value(c);
            state.append_value(s);
            date_time.append_value(self.timestamp(n));
            extra.append_value(self.text(&mut rng, len));
        }
        vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(email.finish()),
            Arc::new(card.finish()),
            Arc::new(city.finish()),
            Arc::new(state.finish()),
            Arc::new(date_time.finish()),
            Arc::new(extra.finish()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};

    #[test]
    fn rows_map_onto_one_global_sequence() {
        // Event numbers of the three tables partition 0..50 in the 1:3:46 proportion.
        let mut seen = vec![];
        seen.extend((0..1).map(|k| event_number(NexmarkTable::Person, k)));
        seen.extend((0..3).map(|k| event_number(NexmarkTable::Auction, k)));
        seen.extend((0..46).map(|k| event_number(NexmarkTable::Bid, k)));
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        for n in [0, 1, 3, 4, 49, 50, 51, 100, 1_000_003] {
            let total = rows_below(NexmarkTable::Person, n)
                + rows_below(NexmarkTable::Auction, n)
                + rows_below(NexmarkTable::Bid, n);
            assert_eq!(total, n, "events below {n}");
        }
        assert_eq!(rows_below(NexmarkTable::Bid, 1_000_000), 920_000);
        assert_eq!(rows_below(NexmarkTable::Auction, 1_000_000), 60_000);
        assert_eq!(rows_below(NexmarkTable::Person, 1_000_000), 20_000);
    }

    #[test]
    fn same_seed_same_rows_and_batches_compose() {
        let g = Generator::new(NexmarkTable::Bid, 7, 10_000, 1);
        let whole = g.batch(0, 1000).unwrap();
        let again = Generator::new(NexmarkTable::Bid, 7, 10_000, 1)
            .batch(0, 1000)
            .unwrap();
        assert_eq!(whole, again);
        let tail = g.batch(600, 400).unwrap();
        assert_eq!(whole.slice(600, 400), tail);
        let other = Generator::new(NexmarkTable::Bid, 8, 10_000, 1)
            .batch(0, 1000)
            .unwrap();
        assert_ne!(whole, other);
    }

    #[test]
    fn bids_refer_to_existing_auctions_and_people_with_hot_keys() {
        let g = Generator::new(NexmarkTable::Bid, 1, 10_000, 1);
        let b = g.batch(0, 46_000).unwrap();
        let auctions = b.column(0).as_primitive::<Int64Type>();
        let bidders = b.column(1).as_primitive::<Int64Type>();
        let prices = b.column(2).as_primitive::<Int64Type>();
        // 46,000 bids span 50,000 events: 3,000 auctions and 1,000 people exist (plus the id lead).
        assert!(auctions
            .values()
            .iter()
            .all(|a| (1000..1000 + 3000 + 10).contains(a)));
        assert!(bidders
            .values()
            .iter()
            .all(|p| (1000..1000 + 1000 + 10).contains(p)));
        assert!(prices
            .values()
            .iter()
            .all(|p| (100..=100_000_000).contains(p)));
        // Prices follow 10^(6u)·100 with a continuous u: about a sixth of them fall in each decade,
        // and the top decade's ~7,700 bids over 9·10^7 possible values almost never repeat (a
        // table of 65,536 draws gave ~11,000 values per decade, so about a third repeated).
        let n = prices.len() as f64;
        let low = prices.values().iter().filter(|p| **p < 1000).count() as f64 / n;
        assert!(
            (0.15..0.185).contains(&low),
            "share of prices under 1000: {low}"
        );
        let top: Vec<i64> = prices
            .values()
            .iter()
            .copied()
            .filter(|p| *p >= 10_000_000)
            .collect();
        let distinct = top.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(
            distinct as f64 >= 0.99 * top.len() as f64,
            "{distinct} of {}",
            top.len()
        );
        // Hot auctions: about half the bids go to an auction id that is a multiple of 100 (+1000).
        let hot = auctions
            .values()
            .iter()
            .filter(|a| (**a - 1000) % 100 == 0)
            .count() as f64
            / b.num_rows() as f64;
        assert!((0.45..0.6).contains(&hot), "hot auction share {hot}");
        let channels = b.column(3).as_string::<i32>();
        let google = (0..channels.len())
            .filter(|i| channels.value(*i) == "Google")
            .count() as f64
            / b.num_rows() as f64;
        assert!((0.10..0.15).contains(&google), "Google share {google}");
    }

    #[test]
    fn event_time_follows_rate_and_out_of_order_bound() {
        let g = Generator::new(NexmarkTable::Bid, 1, 1000, 1);
        let b = g.batch(0, 10_000).unwrap();
        let ts = b.column(5).as_primitive::<TimestampMillisecondType>();
        assert!(
            ts.values().windows(2).all(|w| w[0] <= w[1]),
            "monotone without out-of-order"
        );
        // 10,000 bids are 10,870 events at 1,000 events/s: about 10.9 s of event time.
        assert_eq!(ts.value(0), BASE_TIME_MS + 4);
        assert_eq!(
            ts.value(9_999) - BASE_TIME_MS,
            (event_number(NexmarkTable::Bid, 9_999) as i64 * 1000) / 1000
        );
        let g = Generator::new(NexmarkTable::Bid, 1, 1000, 100);
        let b = g.batch(0, 10_000).unwrap();
        let ts = b.column(5).as_primitive::<TimestampMillisecondType>();
        let mut max = 0i64;
        for &t in ts.values().iter() {
            // Never more than one group (100 events = 100 ms here) behind the maximum seen.
            assert!(t >= max - 100, "{t} is too far behind {max}");
            max = max.max(t);
        }
        assert!(
            ts.values().windows(2).any(|w| w[0] > w[1]),
            "out-of-order groups do reorder"
        );
    }

    #[test]
    fn persons_and_auctions_have_reference_shapes() {
        let p = Generator::new(NexmarkTable::Person, 3, 10_000, 1)
            .batch(0, 100)
            .unwrap();
        let ids = p.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), (1000..1100).collect::<Vec<i64>>());
        let cards = p.column(3).as_string::<i32>();
        assert!((0..cards.len()).all(|i| cards.value(i).len() == 19));
        let a = Generator::new(NexmarkTable::Auction, 3, 10_000, 1)
            .batch(0, 300)
            .unwrap();
        let ids = a.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), (1000..1300).collect::<Vec<i64>>());
        let (dt, ex) = (
            a.column(5).as_primitive::<TimestampMillisecondType>(),
            a.column(6).as_primitive::<TimestampMillisecondType>(),
        );
        assert!((0..300).all(|i| ex.value(i) > dt.value(i)));
        let cats = a.column(8).as_primitive::<Int64Type>();
        assert!(cats.values().iter().all(|c| (10..15).contains(c)));
    }
}
