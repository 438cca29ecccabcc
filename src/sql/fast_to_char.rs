//! `to_char` (and its alias `date_format`) for timestamps without a time zone and dates, in the
//! fixed-width formats of per-day and per-minute keys (`%Y-%m-%d`, `%H:%M`...), written digit by
//! digit; DataFusion's `to_char` for everything else. Formatting a key per row through chrono's
//! strftime was a fifth of Nexmark q17's CPU.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// One piece of a format.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Literal(u8),
}

/// The pieces of `format` when every specifier is one this module writes (`%Y %m %d %H %M %S
/// %%`, the date and time fields zero-padded) and the rest is ASCII; `None` otherwise.
fn pieces(format: &str) -> Option<Vec<Piece>> {
    let mut out = Vec::new();
    let mut bytes = format.bytes();
    while let Some(b) = bytes.next() {
        if !b.is_ascii() {
            return None;
        }
        if b != b'%' {
            out.push(Piece::Literal(b));
            continue;
        }
        out.push(match bytes.next()? {
            b'Y' => Piece::Year,
            b'm' => Piece::Month,
            b'd' => Piece::Day,
            b'H' => Piece::Hour,
            b'M' => Piece::Minute,
            b'S' => Piece::Second,
            b'%' => Piece::Literal(b'%'),
            _ => return None,
        });
    }
    Some(out)
}

/// The civil date of `days` since 1970-01-01 (proleptic Gregorian): year, month, day.
fn civil(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 4];
    let mut v = value;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Writes `seconds` since the epoch (and its date) as `pieces`; false when the year is outside
/// 0..=9999, which chrono writes differently.
fn write(out: &mut Vec<u8>, pieces: &[Piece], seconds: i64) -> bool {
    let days = seconds.div_euclid(86_400);
    let in_day = seconds.rem_euclid(86_400) as u32;
    let (year, month, day) = civil(days);
    if !(0..=9999).contains(&year) {
        return false;
    }
    for p in pieces {
        match p {
            Piece::Year => push_digits(out, year as u32, 4),
            Piece::Month => push_digits(out, month, 2),
            Piece::Day => push_digits(out, day, 2),
            Piece::Hour => push_digits(out, in_day / 3600, 2),
            Piece::Minute => push_digits(out, in_day / 60 % 60, 2),
            Piece::Second => push_digits(out, in_day % 60, 2),
            Piece::Literal(b) => out.push(*b),
        }
    }
    true
}

/// Seconds since the epoch of each value of `values`, when it is a timestamp without a time zone
/// or a date.
fn seconds(values: &ArrayRef) -> Option<Vec<Option<i64>>> {
    fn each<T: arrow::datatypes::ArrowPrimitiveType<Native = N>, N: Into<i64> + Copy>(
        values: &ArrayRef,
        to_seconds: impl Fn(i64) -> i64,
    ) -> Vec<Option<i64>> {
        values
            .as_primitive::<T>()
            .iter()
            .map(|v| v.map(|v| to_seconds(v.into())))
            .collect()
    }
    use arrow::datatypes as t;
    Some(match values.data_type() {
        DataType::Timestamp(TimeUnit::Second, None) => {
            each::<t::TimestampSecondType, _>(values, |v| v)
        }
        DataType::Timestamp(TimeUnit::Millisecond, None) => {
            each::<t::TimestampMillisecondType, _>(values, |v| v.div_euclid(1_000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, None) => {
            each::<t::TimestampMicrosecondType, _>(values, |v| v.div_euclid(1_000_000))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, None) => {
            each::<t::TimestampNanosecondType, _>(values, |v| v.div_euclid(1_000_000_000))
        }
        DataType::Date32 => each::<t::Date32Type, _>(values, |d| d * 86_400),
        _ => return None,
    })
}

/// `values` formatted as `pieces`; `None` when some value cannot be (the caller falls back).
fn format(values: &ArrayRef, pieces: &[Piece]) -> Option<ArrayRef> {
    let seconds = seconds(values)?;
    let mut builder = StringBuilder::with_capacity(seconds.len(), seconds.len() * pieces.len());
    let mut buf = Vec::with_capacity(32);
    for s in seconds {
        match s {
            Some(s) => {
                buf.clear();
                if !write(&mut buf, pieces, s) {
                    return None;
                }
                // Only ASCII was written.
                builder.append_value(std::str::from_utf8(&buf).ok()?);
            }
            None => builder.append_null(),
        }
    }
    Some(Arc::new(builder.finish()))
}

/// DataFusion's `to_char`, with the fast path in front.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FastToChar {
    inner: Arc<ScalarUDF>,
}

/// `to_char` over DataFusion's (`inner`).
pub fn fast_to_char(inner: Arc<ScalarUDF>) -> ScalarUDF {
    ScalarUDF::new_from_impl(FastToChar { inner })
}

impl FastToChar {
    fn fast(&self, args: &ScalarFunctionArgs) -> Option<ColumnarValue> {
        let [value, ColumnarValue::Scalar(ScalarValue::Utf8(Some(format_text)))] =
            args.args.as_slice()
        else {
            return None;
        };
        let pieces = pieces(format_text)?;
        match value {
            ColumnarValue::Array(values) => format(values, &pieces).map(ColumnarValue::Array),
            ColumnarValue::Scalar(v) => {
                let values = v.to_array().ok()?;
                let out = format(&values, &pieces)?;
                ScalarValue::try_from_array(&out, 0)
                    .ok()
                    .map(ColumnarValue::Scalar)
            }
        }
    }
}

impl ScalarUDFImpl for FastToChar {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match self.fast(&args) {
            Some(out) => Ok(out),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Date32Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    use super::*;

    fn call(udf: &ScalarUDF, values: ArrayRef, format: &str) -> ArrayRef {
        let args = ScalarFunctionArgs {
            number_rows: values.len(),
            arg_fields: vec![
                Arc::new(Field::new("v", values.data_type().clone(), true)),
                Arc::new(Field::new("f", DataType::Utf8, false)),
            ],
            return_field: Arc::new(Field::new("out", DataType::Utf8, true)),
            args: vec![
                ColumnarValue::Array(values),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(format.into()))),
            ],
            config_options: Arc::new(ConfigOptions::default()),
        };
        match udf.invoke_with_args(args).unwrap() {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(s) => s.to_array().unwrap(),
        }
    }

    #[test]
    fn writes_what_datafusion_writes() {
        let datafusion = datafusion::functions::datetime::to_char();
        let fast = fast_to_char(datafusion.clone());
        // Seeded spread of millisecond timestamps from 1601 to 2400, with nulls, and the
        // edges of days, months, leap years and the epoch.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut millis: Vec<Option<i64>> = (0..20_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (i % 97 != 0).then(|| (x % 25_000_000_000_000) as i64 - 11_600_000_000_000)
            })
            .collect();
        for edge in [
            0,
            -1,
            86_399_999,
            86_400_000,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
        ] {
            millis.push(Some(edge));
        }
        let values: ArrayRef = Arc::new(TimestampMillisecondArray::from(millis));
        let days: ArrayRef = Arc::new(Date32Array::from(vec![
            Some(0),
            Some(-1),
            None,
            Some(11_016),
            Some(-135_140),
        ]));
        for format in [
            "%Y-%m-%d",
            "%H:%M",
            "%Y%m%d %H:%M:%S",
            "day %d of %m, %Y (100%%)",
        ] {
            for v in [&values, &days] {
                let want = call(&datafusion, v.clone(), format);
                let got = call(&fast, v.clone(), format);
                assert_eq!(
                    got.as_any().downcast_ref::<StringArray>(),
                    want.as_any().downcast_ref::<StringArray>(),
                    "{format}"
                );
            }
        }
        // The fast path wrote them (it does not fall back within years 0 to 9999).
        assert!(format(&values, &pieces("%Y-%m-%d").unwrap()).is_some());
        assert!(format(&days, &pieces("%H:%M").unwrap()).is_some());
        // Other specifiers, and years chrono writes with a sign, go to DataFusion's.
        assert!(pieces("%Y-%j").is_none());
        let far: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![Some(
            300_000_000_000_000i64,
        )]));
        assert_eq!(
            call(&fast, far.clone(), "%Y").as_string::<i32>().value(0),
            call(&datafusion, far, "%Y").as_string::<i32>().value(0)
        );
    }
}
