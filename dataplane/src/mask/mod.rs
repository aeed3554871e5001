//! Masking of sensitive values in query results (sans-IO).
//!
//! A [`MaskingProfile`] (YAML) says which detectors are on, which custom
//! literals and regexes to mask, which columns get whole-value rules, and
//! what masks look like. [`Engine::compile`] turns it into an immutable
//! [`Engine`] that every core shares by `Arc`.
//!
//! - [`engine`]: the per-value scan. SIMD classification of 64-byte blocks
//!   ([`classify`]) finds candidates; scalar validators ([`detect`]: Luhn,
//!   SSN ranges, IBAN mod-97, …) confirm them and rewrite them in place,
//!   same length. Hits are counted per rule in [`Hits`].
//! - [`rows`]: the message level. [`RowPlan`] is built from RowDescription;
//!   [`mask_data_row`], [`mask_copy_data`] and [`mask_error_fields`] mask
//!   DataRow, CopyData (COPY TO) and ErrorResponse/NoticeResponse bodies.
//!
//! Wiring into the relay (server → client direction), per session:
//!
//! ```text
//! engine: Arc<Engine>            // from the snapshot: Engine::compile(&profile)
//! plan:   RowPlan::new()          // once per session, reused
//! hits:   Hits::new()             // per session or per core
//! out:    Vec<u8>                 // rewrite buffer, reused
//!
//! 'T' RowDescription  → plan.describe(&engine, body)?
//!     (extended protocol: after a Bind, plan.set_result_formats(&engine, bind_formats)?)
//! 'D' DataRow         → match mask_data_row(&engine, &mut plan, body, &mut hits, &mut out)? {
//!                          Unchanged | MaskedInPlace => forward the frame from its buffer,
//!                          Rewritten => forward `out` instead of the frame }
//! 'd' CopyData (COPY TO, text/CSV) → mask_copy_data(&engine, format, payload, &mut hits)
//! 'E' / 'N'           → mask_error_fields(&engine, body, &mut hits)?
//! 'C' CommandComplete → plan.take_column_hits(..) and hits → audit record and metrics
//! ```
//!
//! Every function needs the whole message body in one slice.
//!
//! Assumptions: values are in an ASCII-compatible encoding (UTF-8, LATIN1,
//! EUC-*: an ASCII byte is an ASCII character). With client encodings
//! whose multi-byte characters contain ASCII bytes (SJIS, BIG5, GBK, UHC,
//! GB18030) detection could rewrite half a character; refuse them while
//! masking is on.
//!
//! Nothing here allocates per value or per row once its buffers have grown,
//! blocks, or logs a value.

pub mod classify;
pub mod copyout;
#[doc(hidden)]
pub mod corpus;
pub mod derived;
pub mod detect;
pub mod engine;
mod json;
mod named;
pub mod origins;
mod phone;
pub mod profile;
pub mod rows;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod phone_tests;

pub use classify::Kernel;
pub use engine::{Builtin, Engine, HitAt, Hits, RuleId};
pub use origins::ColumnOrigins;
pub use profile::{ColumnAction, ColumnRule, Detectors, MaskFormat, MaskingProfile, ProfileError};
pub use rows::{
    mask_copy_data, mask_data_row, mask_description_names, mask_error_fields, mask_error_values,
    retype_statement_description, words_rule, ColumnPlan, CopyFormat, RowError, RowOutcome,
    RowPlan,
};

/// Whether text in client encoding `name` (as PostgreSQL reports it in
/// ParameterStatus `client_encoding`, any alias and case) keeps ASCII
/// bytes for ASCII characters only. SJIS, BIG5, GBK, UHC, GB18030 and
/// JOHAB put bytes in the ASCII range inside multi-byte characters: the
/// detectors would read them as letters and a same-length rewrite could
/// break characters, so masking refuses those encodings.
pub fn ascii_safe_encoding(name: &[u8]) -> bool {
    let mut norm = [0u8; 24];
    let mut n = 0;
    for &c in name {
        if c.is_ascii_alphanumeric() {
            if n == norm.len() {
                return true; // no unsafe name is this long
            }
            norm[n] = c.to_ascii_lowercase();
            n += 1;
        }
    }
    !matches!(
        &norm[..n],
        b"sjis"
            | b"shiftjis"
            | b"shiftjis2004"
            | b"mskanji"
            | b"win932"
            | b"windows932"
            | b"cp932"
            | b"big5"
            | b"win950"
            | b"windows950"
            | b"cp950"
            | b"gbk"
            | b"win936"
            | b"windows936"
            | b"cp936"
            | b"uhc"
            | b"win949"
            | b"windows949"
            | b"cp949"
            | b"gb18030"
            | b"johab"
    )
}

#[cfg(test)]
mod encoding_tests {
    use super::ascii_safe_encoding as safe;

    #[test]
    fn multibyte_encodings_with_ascii_trail_bytes_are_unsafe() {
        for n in [
            "SJIS",
            "Shift_JIS",
            "SHIFT_JIS_2004",
            "BIG5",
            "gbk",
            "UHC",
            "GB18030",
            "JOHAB",
            "WIN932",
            "cp950",
        ] {
            assert!(!safe(n.as_bytes()), "{n}");
        }
        for n in [
            "UTF8",
            "utf-8",
            "SQL_ASCII",
            "LATIN1",
            "EUC_JP",
            "EUC_KR",
            "WIN1252",
            "KOI8R",
            "",
        ] {
            assert!(safe(n.as_bytes()), "{n}");
        }
    }
}
