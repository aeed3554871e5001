//! Binary-format bind values as text (sans-IO), the way PostgreSQL prints
//! them, so the masking engine sees in an audit record what a text-format
//! value would show: a card number sent as an `int8`, an e-mail inside a
//! `text[]` or `jsonb`. The tracker calls [`binary_text`] with the type OID
//! the statement's Parse or ParameterDescription gave; a value it cannot
//! read here is recorded as hex (masked as bytes first, by the tracker).
//! Masking calls it too, for a column rule on a binary result value of a
//! non-text type (`mask::rows`).

use jiff::tz::TimeZone;
use std::fmt::Write;

/// Type OIDs whose binary values are read as text here.
pub(crate) mod oid {
    pub const BOOL: u32 = 16;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Array type OID → element type OID, for the element types read here
/// (PostgreSQL's `pg_type.typarray` of each).
const ARRAYS: [(u32, u32); 21] = [
    (1000, oid::BOOL),
    (1003, oid::NAME),
    (1016, oid::INT8),
    (1005, oid::INT2),
    (1007, oid::INT4),
    (1009, oid::TEXT),
    (1028, oid::OID),
    (199, oid::JSON),
    (143, oid::XML),
    (1021, oid::FLOAT4),
    (1022, oid::FLOAT8),
    (1014, oid::BPCHAR),
    (1015, oid::VARCHAR),
    (1182, oid::DATE),
    (1183, oid::TIME),
    (1115, oid::TIMESTAMP),
    (1185, oid::TIMESTAMPTZ),
    (1187, oid::INTERVAL),
    (1231, oid::NUMERIC),
    (2951, oid::UUID),
    (3807, oid::JSONB),
];

/// PostgreSQL allows at most 6 array dimensions.
const MAX_DIMS: usize = 6;

/// A binary-format value of type `oid` as text, the way PostgreSQL prints
/// it with `DateStyle` ISO, with this difference: floats as plain decimals
/// (exponents only for very large or small values). `timestamptz` values
/// print in UTC (`+00`): the form the audit trail keeps, whatever the
/// session's `TimeZone` (see [`binary_text_in`] for a session's form).
/// `None`: a type not read here, bytes that are not a valid value of it,
/// text that is not UTF-8, or a `numeric` that would print longer than
/// `room`. `cut`: only the first bytes were kept. An array stops once it
/// has printed more than `room` (the caller cuts it to `room` and marks it
/// cut).
pub(crate) fn binary_text(oid: u32, v: &[u8], cut: bool, room: usize) -> Option<String> {
    binary_text_in(oid, v, cut, room, None)
}

/// [`binary_text`], with `timestamptz` values (and arrays of them) printed
/// in `zone` (the session's `TimeZone`), as PostgreSQL would print them in
/// text results: local time, then the offset (`-05`, `+05:30`, `+00:53:28`
/// for local mean time). `None`: in UTC.
pub(crate) fn binary_text_in(
    oid: u32,
    v: &[u8],
    cut: bool,
    room: usize,
    zone: Option<&TimeZone>,
) -> Option<String> {
    let fixed = |n: usize| (!cut && v.len() == n).then_some(());
    Some(match oid {
        oid::BOOL => {
            fixed(1)?;
            if v[0] != 0 { "t" } else { "f" }.to_string()
        }
        oid::INT2 => {
            fixed(2)?;
            i16::from_be_bytes([v[0], v[1]]).to_string()
        }
        oid::INT4 => {
            fixed(4)?;
            i32::from_be_bytes(v.try_into().ok()?).to_string()
        }
        oid::OID => {
            fixed(4)?;
            u32::from_be_bytes(v.try_into().ok()?).to_string()
        }
        oid::INT8 => {
            fixed(8)?;
            i64::from_be_bytes(v.try_into().ok()?).to_string()
        }
        oid::FLOAT4 => {
            fixed(4)?;
            float_text(f64::from(f32::from_be_bytes(v.try_into().ok()?)))
        }
        oid::FLOAT8 => {
            fixed(8)?;
            float_text(f64::from_be_bytes(v.try_into().ok()?))
        }
        oid::NUMERIC if !cut => numeric_text(v, room)?,
        oid::UUID => {
            fixed(16)?;
            let mut h = Vec::with_capacity(32);
            crate::protocol::hex_into(&mut h, v);
            let h = String::from_utf8(h).expect("hex is ASCII");
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        oid::DATE => {
            fixed(4)?;
            let d = i32::from_be_bytes(v.try_into().ok()?);
            match d {
                i32::MAX => "infinity".into(),
                i32::MIN => "-infinity".into(),
                _ => {
                    let mut s = String::with_capacity(16);
                    push_date(&mut s, i64::from(d));
                    s
                }
            }
        }
        oid::TIME => {
            fixed(8)?;
            let us = i64::from_be_bytes(v.try_into().ok()?);
            if !(0..=86_400_000_000).contains(&us) {
                return None;
            }
            let mut s = String::with_capacity(16);
            push_clock(&mut s, us as u64);
            s
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            fixed(8)?;
            let us = i64::from_be_bytes(v.try_into().ok()?);
            match us {
                i64::MAX => "infinity".into(),
                i64::MIN => "-infinity".into(),
                _ => {
                    let mut s = String::with_capacity(32);
                    if oid == oid::TIMESTAMPTZ {
                        push_timestamptz(&mut s, us, zone);
                    } else {
                        push_timestamp(&mut s, us, None);
                    }
                    s
                }
            }
        }
        oid::INTERVAL => {
            fixed(16)?;
            let us = i64::from_be_bytes(v[..8].try_into().ok()?);
            let days = i32::from_be_bytes(v[8..12].try_into().ok()?);
            let months = i32::from_be_bytes(v[12..].try_into().ok()?);
            interval_text(us, days, months)
        }
        // Version 1 of jsonb's binary form: the JSON text behind one byte.
        oid::JSONB if v.first() == Some(&1) => utf8_text(&v[1..])?,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON | oid::XML => utf8_text(v)?,
        _ => {
            let elem = ARRAYS.iter().find(|&&(a, _)| a == oid)?.1;
            array_text(elem, v, cut, room, zone)?
        }
    })
}

/// Valid UTF-8 (a character cut at the end of a kept prefix dropped).
pub(crate) fn utf8_text(v: &[u8]) -> Option<String> {
    match std::str::from_utf8(v) {
        Ok(s) => Some(s.to_owned()),
        Err(e) if e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&v[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

/// A float as text: `NaN`, `Infinity`, `-Infinity`, a plain decimal, or
/// (beyond 1e20 or below 1e-6) the shortest exponent form.
fn float_text(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if x == 0.0 || (1e-6..1e20).contains(&x.abs()) {
        x.to_string()
    } else {
        format!("{x:e}")
    }
}

/// A binary `numeric` in its text form: `ndigits`, `weight`, `sign` and
/// `dscale` (16 bits each), then base-10000 digits. `None` for anything
/// malformed, or that would print longer than `room`.
pub(crate) fn numeric_text(v: &[u8], room: usize) -> Option<String> {
    let at = |i: usize| i16::from_be_bytes([v[i], v[i + 1]]);
    if v.len() < 8 {
        return None;
    }
    let (ndigits, weight, sign, dscale) = (at(0), i32::from(at(2)), at(4) as u16, at(6));
    if ndigits < 0 || dscale < 0 || v.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0 | 0x4000 => {}
        _ => return None,
    }
    if !(-1000..=1000).contains(&weight) || dscale > 1000 {
        return None;
    }
    let printed = 2 + 4 * (weight.max(0) as usize + 1) + dscale as usize;
    if printed > room {
        return None;
    }
    let digits: Vec<i16> = (0..ndigits as usize).map(|i| at(8 + 2 * i)).collect();
    if digits.iter().any(|d| !(0..10000).contains(d)) {
        return None;
    }
    let digit = |idx: i32| {
        usize::try_from(idx)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut s = String::with_capacity(printed);
    // A negative zero prints as zero.
    if sign == 0x4000 && digits.iter().any(|&d| d != 0) {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for w in 0..=weight {
            let d = digit(w);
            let _ = if w == 0 {
                write!(s, "{d}")
            } else {
                write!(s, "{d:04}")
            };
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut idx = weight + 1;
        while frac.len() < dscale as usize {
            let _ = write!(frac, "{:04}", digit(idx));
            idx += 1;
        }
        frac.truncate(dscale as usize);
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

const US_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Proleptic Gregorian (year, month, day) of a day number counted from
/// 1970-01-01 (the usual era-of-400-years method).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` of a PostgreSQL day number (days from 2000-01-01); years
/// before 1 print as PostgreSQL does, `0044-03-15 BC`. Returns whether it
/// was BC (the suffix goes after the time of a timestamp).
fn push_date_part(s: &mut String, pg_days: i64) -> bool {
    let (y, m, d) = civil(pg_days + PG_EPOCH_DAYS);
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y };
    let _ = write!(s, "{year:04}-{m:02}-{d:02}");
    bc
}

fn push_date(s: &mut String, pg_days: i64) {
    if push_date_part(s, pg_days) {
        s.push_str(" BC");
    }
}

/// `HH:MM:SS`, then `.ffffff` with trailing zeros dropped if there is a
/// fraction. Hours are not wrapped (an interval's can exceed 24).
fn push_clock(s: &mut String, us: u64) {
    let secs = us / 1_000_000;
    let _ = write!(
        s,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let frac = us % 1_000_000;
    if frac != 0 {
        let _ = write!(s, ".{frac:06}");
        let kept = s.trim_end_matches('0').len();
        s.truncate(kept);
    }
}

/// A timestamp (microseconds from 2000-01-01) as `YYYY-MM-DD HH:MM:SS`,
/// then the UTC offset in seconds (if given) the way PostgreSQL prints it:
/// `+HH`, `+HH:MM` when there are minutes, `+HH:MM:SS` when there are
/// seconds. ` BC` goes last.
fn push_timestamp(s: &mut String, us: i64, offset: Option<i32>) {
    let days = us.div_euclid(US_PER_DAY);
    let bc = push_date_part(s, days);
    s.push(' ');
    push_clock(s, us.rem_euclid(US_PER_DAY) as u64);
    if let Some(off) = offset {
        let a = off.unsigned_abs();
        let sign = if off < 0 { '-' } else { '+' };
        let _ = write!(s, "{sign}{:02}", a / 3600);
        if a % 3600 != 0 {
            let _ = write!(s, ":{:02}", a / 60 % 60);
        }
        if a % 60 != 0 {
            let _ = write!(s, ":{:02}", a % 60);
        }
    }
    if bc {
        s.push_str(" BC");
    }
}

/// The time zone a `TimeZone` ParameterStatus names, read as PostgreSQL
/// reads the setting: a name in the system's time zone database
/// (`America/New_York`, `UTC`), else a POSIX TZ string (`<+05:30>-05:30`,
/// PostgreSQL's form for `SET TIME ZONE INTERVAL '+05:30'`; `UTC+3`; a
/// bare `+05:30`, which POSIX reads as five and a half hours *west* of
/// Greenwich, as PostgreSQL does). `None` when none of these reads (no
/// database on this host): UTC is used.
pub(crate) fn session_zone(name: &[u8]) -> Option<TimeZone> {
    let name = std::str::from_utf8(name).ok()?;
    if let Ok(z) = TimeZone::get(name) {
        return Some(z);
    }
    // POSIX allows letters, digits, `+` and `-` in a quoted abbreviation;
    // PostgreSQL writes `<+05:30>`. Only the offset after it matters here.
    let mut posix = String::with_capacity(name.len() + 5);
    if name.starts_with(|c: char| c == '+' || c == '-' || c.is_ascii_digit()) {
        // An offset without a name.
        posix.push_str("<UNK>");
    }
    let mut quoted = false;
    for c in name.chars() {
        match c {
            '<' => quoted = true,
            '>' => quoted = false,
            ':' if quoted => continue,
            _ => {}
        }
        posix.push(c);
    }
    TimeZone::posix(&posix).ok()
}

/// Microseconds from 1970-01-01 (Unix) to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_US: i64 = 946_684_800 * 1_000_000;

/// A `timestamptz` (microseconds from 2000-01-01 UTC) in `zone`'s local
/// time with its offset then, or in UTC when `zone` is `None` or the
/// instant lies outside what the time zone library covers (years beyond
/// ±9999).
fn push_timestamptz(s: &mut String, us: i64, zone: Option<&TimeZone>) {
    let offset = zone
        .and_then(|z| {
            let t = jiff::Timestamp::from_microsecond(us.checked_add(PG_EPOCH_UNIX_US)?).ok()?;
            Some(z.to_offset(t).seconds())
        })
        .unwrap_or(0);
    match us.checked_add(i64::from(offset) * 1_000_000) {
        Some(local) => push_timestamp(s, local, Some(offset)),
        None => push_timestamp(s, us, Some(0)),
    }
}

/// An interval in PostgreSQL's default output style (`postgres`):
/// `1 year 2 mons -3 days +04:05:06.5`: each field with its own sign, a
/// `+` on a positive field once a negative one was printed, the time
/// printed when non-zero or when nothing else was.
fn interval_text(us: i64, days: i32, months: i32) -> String {
    let mut s = String::new();
    let mut before_negative = false;
    let mut field = |s: &mut String, n: i64, unit: &str| {
        if n == 0 {
            return;
        }
        if !s.is_empty() {
            s.push(' ');
        }
        let plus = if before_negative && n > 0 { "+" } else { "" };
        let plural = if n == 1 { "" } else { "s" };
        let _ = write!(s, "{plus}{n} {unit}{plural}");
        before_negative |= n < 0;
    };
    let (years, mons) = (i64::from(months) / 12, i64::from(months) % 12);
    field(&mut s, years, "year");
    field(&mut s, mons, "mon");
    field(&mut s, i64::from(days), "day");
    if us != 0 || s.is_empty() {
        if !s.is_empty() {
            s.push(' ');
        }
        if us < 0 {
            s.push('-');
        } else if before_negative {
            s.push('+');
        }
        push_clock(&mut s, us.unsigned_abs());
    }
    s
}

/// A binary array (`ndim`, a has-nulls flag, the element OID, then per
/// dimension its size and lower bound, then each element as a length and
/// bytes, -1 for NULL) as PostgreSQL prints it: `{a,"b c",NULL}`, nested
/// braces per dimension, `[2:3]=` in front when a lower bound is not 1.
/// `None` when the header is malformed, names another element type, or
/// an element cannot be read; a cut value prints as far as its bytes go.
fn array_text(
    elem: u32,
    v: &[u8],
    cut: bool,
    room: usize,
    zone: Option<&TimeZone>,
) -> Option<String> {
    let int = |at: usize| {
        v.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
    };
    let ndim = usize::try_from(int(0)?).ok()?;
    if ndim > MAX_DIMS || !matches!(int(4)?, 0 | 1) || int(8)? as u32 != elem {
        return None;
    }
    let mut dims = [(0usize, 0i32); MAX_DIMS];
    for (d, dim) in dims.iter_mut().enumerate().take(ndim) {
        *dim = (usize::try_from(int(12 + 8 * d)?).ok()?, int(16 + 8 * d)?);
    }
    let dims = &dims[..ndim];
    let mut s = String::new();
    if dims.is_empty() || dims.iter().any(|&(n, _)| n == 0) {
        s.push_str("{}");
        return Some(s);
    }
    if dims.iter().any(|&(_, lb)| lb != 1) {
        for &(n, lb) in dims {
            let ub = i64::from(lb) + n as i64 - 1;
            let _ = write!(s, "[{lb}:{ub}]");
        }
        s.push('=');
    }
    let mut at = 12 + 8 * ndim;
    match write_dim(&mut s, dims, elem, zone, v, &mut at, room) {
        Walk::Done | Walk::Full => Some(s),
        Walk::Short if cut => Some(s),
        Walk::Short | Walk::Bad => None,
    }
}

enum Walk {
    Done,
    /// More than `room` printed: stop.
    Full,
    /// The bytes ran out.
    Short,
    /// An element that is not a valid value of its type.
    Bad,
}

fn write_dim(
    s: &mut String,
    dims: &[(usize, i32)],
    elem: u32,
    zone: Option<&TimeZone>,
    v: &[u8],
    at: &mut usize,
    room: usize,
) -> Walk {
    s.push('{');
    for i in 0..dims[0].0 {
        if i > 0 {
            s.push(',');
        }
        if s.len() > room {
            return Walk::Full;
        }
        if dims.len() > 1 {
            match write_dim(s, &dims[1..], elem, zone, v, at, room) {
                Walk::Done => continue,
                other => return other,
            }
        }
        let Some(len) = v
            .get(*at..*at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
        else {
            return Walk::Short;
        };
        *at += 4;
        if len < 0 {
            s.push_str("NULL");
            continue;
        }
        let Some(bytes) = v.get(*at..*at + len as usize) else {
            return Walk::Short;
        };
        *at += len as usize;
        let Some(t) = binary_text_in(elem, bytes, false, room.saturating_sub(s.len()), zone) else {
            return Walk::Bad;
        };
        push_element(s, &t);
    }
    s.push('}');
    Walk::Done
}

/// An array element, double-quoted (with `"` and `\` escaped) where
/// PostgreSQL's array output quotes it: empty, `NULL` in any case, or
/// holding a brace, quote, comma, backslash or white space.
fn push_element(s: &mut String, t: &str) {
    let quote = t.is_empty()
        || t.eq_ignore_ascii_case("null")
        || t.bytes().any(|b| {
            matches!(b, b'{' | b'}' | b'"' | b',' | b'\\') || b.is_ascii_whitespace() || b == 0x0b
        });
    if !quote {
        s.push_str(t);
        return;
    }
    s.push('"');
    for c in t.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
}

/// A binary numeric for tests: base-10000 digits with weight, sign and
/// scale.
#[cfg(test)]
pub(crate) fn numeric_bytes(digits: &[i16], weight: i16, negative: bool, dscale: i16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((digits.len() as i16).to_be_bytes());
    b.extend(weight.to_be_bytes());
    b.extend((if negative { 0x4000u16 } else { 0 }).to_be_bytes());
    b.extend(dscale.to_be_bytes());
    for d in digits {
        b.extend(d.to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_numeric_reads_as_postgres_prints_it() {
        let numeric = numeric_bytes;
        for (digits, weight, neg, scale, want) in [
            (
                &[4111, 1111, 1111, 1111][..],
                3,
                false,
                0,
                "4111111111111111",
            ),
            (&[12, 5000][..], 0, true, 1, "-12.5"),
            (&[1234][..], -2, false, 8, "0.00001234"),
            (&[][..], 0, false, 2, "0.00"),
            (&[1][..], 2, false, 0, "100000000"),
            (&[7, 1][..], 0, false, 4, "7.0001"),
        ] {
            assert_eq!(
                numeric_text(&numeric(digits, weight, neg, scale), 4096).as_deref(),
                Some(want)
            );
        }
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        assert_eq!(numeric_text(&nan, 4096).as_deref(), Some("NaN"));
        // Malformed: short, a digit out of range, a length that disagrees.
        assert_eq!(numeric_text(&[0, 1, 0], 4096), None);
        assert_eq!(numeric_text(&numeric(&[10000], 0, false, 0), 4096), None);
        assert_eq!(
            numeric_text(&numeric(&[1, 2], 0, false, 0)[..10], 4096),
            None
        );
        // Negative zero prints as zero.
        assert_eq!(
            numeric_text(&numeric(&[], 0, true, 2), 4096).as_deref(),
            Some("0.00")
        );
        // 8 bytes that would print as ~5000 characters: refused beyond `room`.
        let huge = numeric(&[], 1000, false, 1000);
        assert_eq!(numeric_text(&huge, 4096), None);
        assert_eq!(numeric_text(&huge, 10_000).map(|s| s.len()), Some(5002));
    }

    #[test]
    fn scalar_types_read_as_postgres_prints_them() {
        assert_eq!(
            binary_text(oid::INT8, &(-42i64).to_be_bytes(), false, 64).as_deref(),
            Some("-42")
        );
        assert_eq!(binary_text(oid::INT4, &[0, 0, 1], false, 64), None);
        assert_eq!(binary_text(oid::INT8, &[0; 8], true, 64), None);
        assert_eq!(
            binary_text(oid::BOOL, &[1], false, 64).as_deref(),
            Some("t")
        );
        assert_eq!(
            binary_text(oid::UUID, &[0xab; 16], false, 64).as_deref(),
            Some("abababab-abab-abab-abab-abababababab")
        );
        // Not read here: bytea, point, an unknown OID.
        assert_eq!(binary_text(17, b"\x00\x01", false, 64), None);
        assert_eq!(binary_text(600, &[0; 16], false, 64), None);
        assert_eq!(binary_text(0, &[0; 4], false, 64), None);
        // Floats: no 300-digit decimals, PostgreSQL's names for the specials.
        let f8 = |x: f64| binary_text(oid::FLOAT8, &x.to_be_bytes(), false, 64);
        assert_eq!(f8(f64::INFINITY).as_deref(), Some("Infinity"));
        assert_eq!(f8(f64::NEG_INFINITY).as_deref(), Some("-Infinity"));
        assert_eq!(f8(f64::NAN).as_deref(), Some("NaN"));
        assert_eq!(f8(1e300).as_deref(), Some("1e300"));
        assert_eq!(f8(5e-324).as_deref(), Some("5e-324"));
        assert_eq!(f8(4111111111111111.0).as_deref(), Some("4111111111111111"));
        assert_eq!(f8(-12.5).as_deref(), Some("-12.5"));
        // Text that is not UTF-8 is not read; a character cut at the end
        // of a kept prefix is dropped.
        assert_eq!(binary_text(oid::TEXT, &[0xff, 0xfe], false, 64), None);
        assert_eq!(
            binary_text(oid::TEXT, "aé".as_bytes()[..2].as_ref(), true, 64).as_deref(),
            Some("a")
        );
    }

    fn ts(oid: u32, us: i64) -> Option<String> {
        binary_text(oid, &us.to_be_bytes(), false, 64)
    }

    #[test]
    fn timestamptz_prints_in_the_session_zone() {
        const S: i64 = 1_000_000;
        const DAY: i64 = 86_400 * S;
        let at = |z: &str, us: i64| {
            let zone = session_zone(z.as_bytes()).unwrap_or_else(|| panic!("zone {z}"));
            binary_text_in(oid::TIMESTAMPTZ, &us.to_be_bytes(), false, 64, Some(&zone)).unwrap()
        };
        // 2024-07-01 12:00 UTC (day 8948) and 2024-01-15 12:00 UTC (day
        // 8780), in a zone with daylight saving time (POSIX rules: no
        // database needed).
        let us_eastern = "EST5EDT,M3.2.0,M11.1.0";
        assert_eq!(
            at(us_eastern, 8948 * DAY + 12 * 3600 * S),
            "2024-07-01 08:00:00-04"
        );
        assert_eq!(
            at(us_eastern, 8780 * DAY + 12 * 3600 * S),
            "2024-01-15 07:00:00-05"
        );
        // The local date may be the day before; fractions stay.
        assert_eq!(
            at(us_eastern, 2 * 3600 * S + S / 4),
            "1999-12-31 21:00:00.25-05"
        );
        // Offsets with minutes and seconds print as PostgreSQL does; a
        // numeric zone as PostgreSQL reports it.
        assert_eq!(at("<+0530>-5:30", 0), "2000-01-01 05:30:00+05:30");
        assert_eq!(at("<+05:30>-05:30", 0), "2000-01-01 05:30:00+05:30");
        assert_eq!(
            at("<-00:19:32>+00:19:32", 0),
            "1999-12-31 23:40:28-00:19:32"
        );
        assert_eq!(at("<+03>-03", 0), "2000-01-01 03:00:00+03");
        assert_eq!(at("UTC+3", 0), "1999-12-31 21:00:00-03");
        assert_eq!(at("+05:30", 0), "1999-12-31 18:30:00-05:30");
        // Names from the system's database (PostgreSQL's output for the
        // same instants: local mean time in 1900, summer time in 2024).
        assert_eq!(at("UTC", 0), "2000-01-01 00:00:00+00");
        let y1900 = -36_524 * DAY + 12 * 3600 * S;
        assert_eq!(
            at("Europe/Amsterdam", y1900),
            "1900-01-01 12:19:32+00:19:32"
        );
        assert_eq!(at("America/New_York", y1900), "1900-01-01 07:00:00-05");
        assert_eq!(
            at("Europe/Amsterdam", 8948 * DAY + 12 * 3600 * S),
            "2024-07-01 14:00:00+02"
        );
        // Infinity stays; beyond the library's years, UTC.
        assert_eq!(at(us_eastern, i64::MAX), "infinity");
        let far = 30_000 * 365 * DAY; // ~year 32000
        let far_text = at(us_eastern, far);
        assert!(far_text.ends_with("+00"), "{far_text}");
        assert!(session_zone(b"No/Such_Zone!").is_none());
        // Arrays of timestamptz follow the zone too.
        let mut arr = Vec::new();
        for w in [1i32, 0, 1184, 2, 1] {
            arr.extend_from_slice(&w.to_be_bytes());
        }
        for us in [8948 * DAY, 8780 * DAY] {
            arr.extend_from_slice(&8i32.to_be_bytes());
            arr.extend_from_slice(&(us + 12 * 3600 * S).to_be_bytes());
        }
        let zone = session_zone(us_eastern.as_bytes()).unwrap();
        assert_eq!(
            binary_text_in(1185, &arr, false, 256, Some(&zone)).as_deref(),
            Some(r#"{"2024-07-01 08:00:00-04","2024-01-15 07:00:00-05"}"#)
        );
        assert_eq!(
            binary_text(1185, &arr, false, 256).as_deref(),
            Some(r#"{"2024-07-01 12:00:00+00","2024-01-15 12:00:00+00"}"#)
        );
    }

    #[test]
    fn dates_and_times_read_as_postgres_prints_them() {
        const S: i64 = 1_000_000;
        const DAY: i64 = 86_400 * S;
        // 2000-01-01 is day 0 and microsecond 0.
        assert_eq!(
            ts(oid::TIMESTAMP, 0).as_deref(),
            Some("2000-01-01 00:00:00")
        );
        assert_eq!(
            ts(oid::TIMESTAMPTZ, 0).as_deref(),
            Some("2000-01-01 00:00:00+00")
        );
        // 2024-02-29 13:14:15.5: 8825 days after 2000-01-01.
        let leap = 8825 * DAY + (13 * 3600 + 14 * 60 + 15) * S + S / 2;
        assert_eq!(
            ts(oid::TIMESTAMP, leap).as_deref(),
            Some("2024-02-29 13:14:15.5")
        );
        assert_eq!(
            ts(oid::TIMESTAMP, -1).as_deref(),
            Some("1999-12-31 23:59:59.999999")
        );
        // 1970-01-01 (the Unix epoch) is day -10957.
        assert_eq!(
            ts(oid::TIMESTAMP, -10_957 * DAY).as_deref(),
            Some("1970-01-01 00:00:00")
        );
        assert_eq!(ts(oid::TIMESTAMP, i64::MAX).as_deref(), Some("infinity"));
        assert_eq!(ts(oid::TIMESTAMPTZ, i64::MIN).as_deref(), Some("-infinity"));
        let date = |d: i32| binary_text(oid::DATE, &d.to_be_bytes(), false, 64);
        assert_eq!(date(0).as_deref(), Some("2000-01-01"));
        assert_eq!(date(8825).as_deref(), Some("2024-02-29"));
        assert_eq!(date(-730_119).as_deref(), Some("0001-01-01"));
        assert_eq!(date(-730_120).as_deref(), Some("0001-12-31 BC"));
        assert_eq!(date(i32::MAX).as_deref(), Some("infinity"));
        assert_eq!(
            binary_text(
                oid::TIME,
                &((10 * 3600 + 5) * S + 250).to_be_bytes(),
                false,
                64
            )
            .as_deref(),
            Some("10:00:05.00025")
        );
        assert_eq!(
            binary_text(oid::TIME, &(-1i64).to_be_bytes(), false, 64),
            None
        );
        assert_eq!(binary_text(oid::TIMESTAMP, &[0; 7], false, 64), None);
        let iv = |us: i64, days: i32, months: i32| {
            let mut b = us.to_be_bytes().to_vec();
            b.extend(days.to_be_bytes());
            b.extend(months.to_be_bytes());
            binary_text(oid::INTERVAL, &b, false, 64).unwrap()
        };
        assert_eq!(iv(0, 0, 0), "00:00:00");
        assert_eq!(iv(0, 3, 14), "1 year 2 mons 3 days");
        assert_eq!(
            iv((4 * 3600 + 5 * 60 + 6) * S, 1, 1),
            "1 mon 1 day 04:05:06"
        );
        assert_eq!(iv(2 * 3600 * S, -1, 0), "-1 days +02:00:00");
        assert_eq!(iv(-90 * S, 0, -1), "-1 mons -00:01:30");
        assert_eq!(iv(30 * 3600 * S, 0, 0), "30:00:00");
    }

    /// A binary array: `dims` as (size, lower bound), elements already
    /// encoded (None: NULL).
    fn array(elem: u32, dims: &[(i32, i32)], elems: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((dims.len() as i32).to_be_bytes());
        b.extend(i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
        b.extend(elem.to_be_bytes());
        for &(n, lb) in dims {
            b.extend(n.to_be_bytes());
            b.extend(lb.to_be_bytes());
        }
        for e in elems {
            match e {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(v);
                }
            }
        }
        b
    }

    fn text(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn arrays_read_as_postgres_prints_them() {
        let t = array(
            oid::TEXT,
            &[(5, 1)],
            &[text("a"), text("b c"), None, text("null"), text("x\"y\\z")],
        );
        assert_eq!(
            binary_text(1009, &t, false, 256).as_deref(),
            Some(r#"{a,"b c",NULL,"null","x\"y\\z"}"#)
        );
        // int8[][] with a lower bound of 0 on the first dimension.
        let i = |n: i64| Some(n.to_be_bytes().to_vec());
        let m = array(
            oid::INT8,
            &[(2, 0), (2, 1)],
            &[i(4111111111111111), i(2), i(3), i(-4)],
        );
        assert_eq!(
            binary_text(1016, &m, false, 256).as_deref(),
            Some("[0:1][1:2]={{4111111111111111,2},{3,-4}}")
        );
        assert_eq!(
            binary_text(1009, &array(oid::TEXT, &[], &[]), false, 256).as_deref(),
            Some("{}")
        );
        // The header must name the element type of the array OID.
        assert_eq!(binary_text(1016, &t, false, 256), None);
        // An element that is not a valid value: not read.
        let bad = array(oid::INT4, &[(1, 1)], &[Some(vec![1, 2])]);
        assert_eq!(binary_text(1007, &bad, false, 256), None);
        // Elements missing: only a cut value prints as far as it goes.
        let short = &t[..t.len() - 3];
        assert_eq!(binary_text(1009, short, false, 256), None);
        assert_eq!(
            binary_text(1009, short, true, 256).as_deref(),
            Some(r#"{a,"b c",NULL,"null","#)
        );
        // Stops once past `room`.
        let long = array(oid::TEXT, &[(100, 1)], &vec![text("abcdefgh"); 100]);
        let s = binary_text(1009, &long, false, 20).unwrap();
        assert!(s.len() > 20 && s.len() < 40, "{s}");
        // Too many dimensions, a negative size: not read.
        assert_eq!(
            binary_text(
                1009,
                &array(oid::TEXT, &[(1, 1); 7], &[text("a")]),
                false,
                256
            ),
            None
        );
        assert_eq!(
            binary_text(1009, &array(oid::TEXT, &[(-1, 1)], &[]), false, 256),
            None
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const OIDS: [u32; 40] = [
            oid::BOOL,
            oid::NAME,
            oid::INT8,
            oid::INT2,
            oid::INT4,
            oid::TEXT,
            oid::OID,
            oid::JSON,
            oid::XML,
            oid::FLOAT4,
            oid::FLOAT8,
            oid::BPCHAR,
            oid::VARCHAR,
            oid::DATE,
            oid::TIME,
            oid::TIMESTAMP,
            oid::TIMESTAMPTZ,
            oid::INTERVAL,
            oid::NUMERIC,
            oid::UUID,
            oid::JSONB,
            1000,
            1003,
            1016,
            1005,
            1007,
            1009,
            1028,
            199,
            143,
            1021,
            1022,
            1014,
            1015,
            1182,
            1183,
            1115,
            1185,
            1187,
            1231,
        ];

        proptest! {
            /// Whatever the bytes (a client may send anything as a binary
            /// value), reading them never panics, and what it prints stays
            /// bounded (an array stops one element past `room`).
            #[test]
            fn any_bytes_any_type(
                i in 0..OIDS.len(),
                v in proptest::collection::vec(any::<u8>(), 0..96),
                cut in any::<bool>(),
                room in 0usize..128,
            ) {
                if let Some(t) = binary_text(OIDS[i], &v, cut, room) {
                    prop_assert!(t.len() <= room.max(64) + 2 * v.len() + 64, "{t}");
                }
            }

            /// Array headers that look right, with random dimensions and
            /// random element bytes after them (what `any_bytes_any_type`
            /// almost never reaches): never a panic.
            #[test]
            fn array_like_bytes(
                a in 0..ARRAYS.len(),
                ndim in 0i32..8,
                flags in 0i32..3,
                dims in proptest::collection::vec((-1i32..5, any::<i32>()), 0..8),
                tail in proptest::collection::vec(any::<u8>(), 0..160),
                cut in any::<bool>(),
                room in 0usize..256,
            ) {
                let (array_oid, elem) = ARRAYS[a];
                let mut b = Vec::new();
                b.extend(ndim.to_be_bytes());
                b.extend(flags.to_be_bytes());
                b.extend(elem.to_be_bytes());
                for &(n, lb) in &dims {
                    b.extend(n.to_be_bytes());
                    b.extend(lb.to_be_bytes());
                }
                b.extend(&tail);
                if let Some(t) = binary_text(array_oid, &b, cut, room) {
                    prop_assert!(t.len() <= room + 2 * tail.len() + 6 * 26 + 128, "{t}");
                }
            }

            /// Well-formed int4 arrays of random shapes, bounds and NULLs
            /// read back with every NULL.
            #[test]
            fn int4_arrays(
                dims in proptest::collection::vec((0i32..4, -2i32..3), 0..4),
                fill in proptest::collection::vec(proptest::option::of(any::<i32>()), 0..64),
            ) {
                let n: usize = dims.iter().map(|&(d, _)| d as usize).product();
                let elems: Vec<Option<Vec<u8>>> = (0..n)
                    .map(|k| fill.get(k).copied().flatten().map(|x| x.to_be_bytes().to_vec()))
                    .collect();
                let b = array(oid::INT4, &dims, &elems);
                let t = binary_text(1007, &b, false, 1 << 20).unwrap();
                let nulls = if n == 0 || dims.is_empty() {
                    0
                } else {
                    elems.iter().filter(|e| e.is_none()).count()
                };
                prop_assert!(t.starts_with('{') || t.starts_with('['), "{t}");
                prop_assert_eq!(t.matches("NULL").count(), nulls, "{}", t);
            }
        }
    }
}
