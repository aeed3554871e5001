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
//! Assumptions: values are in an ASCII-compatible encoding (UTF-8, LATIN1,
//! EUC-*: an ASCII byte is an ASCII character). With client encodings
//! whose multi-byte characters contain ASCII bytes (SJIS, BIG5, GBK, UHC,
//! GB18030) detection could rewrite half a character; refuse them while
//! masking is on.
//!
//! Nothing here allocates per value or per row once its buffers have grown,
//! blocks, or logs a value.

pub mod classify;
#[doc(hidden)]
pub mod corpus;
pub mod detect;
pub mod engine;
pub mod profile;
pub mod rows;

#[cfg(test)]
mod tests;

pub use classify::Kernel;
pub use engine::{Builtin, Engine, Hits, RuleId};
pub use profile::{ColumnAction, ColumnRule, Detectors, MaskFormat, MaskingProfile, ProfileError};
pub use rows::{
    mask_copy_data, mask_data_row, mask_error_fields, ColumnPlan, CopyFormat, RowError, RowOutcome,
    RowPlan,
};
