//! `MaskingProfile`: what to mask and how, as written in YAML.
//!
//! ```yaml
//! enabled: true                  # masking is on unless turned off
//! detectors:                     # built-in detectors; these are the defaults
//!   payment_card: true
//!   email: true
//!   ssn: true
//!   phone: true
//!   iban: true
//!   ipv4: false                  # IP addresses are opt-in: infrastructure
//!   ipv6: false                  # databases are full of them
//!   aws_access_key: true
//!   jwt: true
//!   private_key: true
//!   github_token: true
//!   slack_token: true
//!   stripe_key: true
//!   google_api_key: true
//!   bearer_token: true
//!   openai_api_key: true
//!   anthropic_api_key: true
//!   gitlab_token: true
//!   huggingface_token: true
//!   npm_token: true
//!   url_password: true           # scheme://user:PASSWORD@host
//!   shopify_token: true
//!   digitalocean_token: true
//!   grafana_token: true
//!   postman_api_key: true
//!   newrelic_api_key: true
//!   age_secret_key: true
//!   sendgrid_api_key: true
//!   vault_token: true
//!   databricks_token: true
//!   mailgun_api_key: true
//!   telegram_bot_token: true
//!   linear_api_key: true
//!   pypi_token: true
//!   doppler_token: true
//!   pulumi_token: true
//!   sentry_token: true
//!   named_values: true           # the name rules below in text: password=…
//! custom_literals:
//!   - name: project_codenames
//!     values: [BLUEBIRD, NIGHTJAR]
//!     case_insensitive: true
//! custom_regexes:
//!   - name: employee_id
//!     pattern: 'EMP-[0-9]{6}'
//! columns:                       # first matching rule wins
//!   - column: '*password*'       # glob on the column name, case-insensitive
//!     action: mask
//!   - column_regex: '^(ssn|tax_id)$'
//!     action: { keep_last: 4 }
//!   - type: varchar              # or an oid: `type: 25`
//!     column: 'email*'
//!     action: hash
//!   - column: internal_notes
//!     action: 'null'
//! format:
//!   mask_char: '*'
//!   keep_punctuation: true       # `****-****-****-1111`, `****.***@*******.com`
//!   card_keep_last: 4
//!   ssn_keep_last: 4
//!   iban_keep_last: 4
//!   phone_keep_last: 2
//!   email_keep_tld: true
//!   token_keep_prefix: true      # `ghp_****…`, `AKIA****…`, `Bearer ****…`
//! hash_key: 'at least 16 bytes, the same on every node'
//! ```
//!
//! [`MaskingProfile::default`] is the production default: the detectors
//! above, plus column rules that mask columns named like passwords, secrets,
//! API keys and access tokens, and keep the last four characters of columns
//! named `ssn`. Name rules with the `mask` or `keep_last` action also mask
//! the string values of JSON members with matching keys (`super::json`). [`MaskingProfile::validate`] (also run by
//! [`super::Engine::compile`]) names the field that is wrong.

use serde::{Deserialize, Serialize};

/// Most rules (detectors + literal lists + regexes + column rules) a profile
/// may have; hit counters are a fixed array of this size, and the rules hit
/// a 128-bit set. (37 detectors leave 43 for the others.)
pub const MAX_RULES: usize = 80;

/// A profile error, always naming the offending field (`columns[2].action`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("masking profile field `{field}`: {message}")]
pub struct ProfileError {
    pub field: String,
    pub message: String,
}

impl ProfileError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProfileError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What to mask and how. See the module documentation for the YAML form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingProfile {
    pub enabled: bool,
    pub detectors: Detectors,
    pub custom_literals: Vec<CustomLiterals>,
    pub custom_regexes: Vec<CustomRegex>,
    pub columns: Vec<ColumnRule>,
    pub format: MaskFormat,
    /// Key of the `hash` column action. Without one, each process draws a
    /// random key at first use: hashes are then stable within the process
    /// only, so set the same key on every node when joins across sessions
    /// on different nodes must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
}

impl Default for MaskingProfile {
    fn default() -> Self {
        let mask = |glob: &str| ColumnRule {
            column: Some(glob.to_string()),
            column_regex: None,
            type_: None,
            action: ColumnAction::Mask,
        };
        MaskingProfile {
            enabled: true,
            detectors: Detectors::default(),
            custom_literals: Vec::new(),
            custom_regexes: Vec::new(),
            columns: vec![
                mask("*password*"),
                mask("*passwd*"),
                mask("*secret*"),
                mask("*api_key*"),
                mask("*apikey*"),
                mask("*access_token*"),
                mask("*refresh_token*"),
                // (`accessToken`, `auth_token`, `x-auth-token`, `token`;
                // not `tokens`, `max_tokens`, `token_type`.)
                mask("*token"),
                mask("*pwd"),
                mask("*passphrase*"),
                mask("*private_key*"),
                // Azure connection strings' `AccountKey=`.
                mask("*accountkey*"),
                ColumnRule {
                    column: None,
                    column_regex: Some("^(ssn|.*_ssn|social_security(_number)?)$".into()),
                    type_: None,
                    action: ColumnAction::KeepLast(4),
                },
            ],
            format: MaskFormat::default(),
            hash_key: None,
        }
    }
}

/// The built-in detectors, each on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detectors {
    /// 13–19 digits, optionally grouped by single spaces or dashes, with a
    /// known issuer prefix and a valid Luhn check digit.
    pub payment_card: bool,
    pub email: bool,
    /// `AAA-GG-SSSS` (or space-separated); impossible areas (000, 666,
    /// 900–999), group 00 and serial 0000 are not SSNs. A bare nine-digit
    /// number is not recognised (it is indistinguishable from an id; use a
    /// column rule).
    pub ssn: bool,
    /// E.164 (`+` and 9–15 digits, grouped or not), North American
    /// (`(415) 555-2671`, `1-415-555-2671`, `415.555.2671`) and trunk-0
    /// national numbers (`020 7946 0958`, `06 12 34 56 78`).
    pub phone: bool,
    /// Country code, length for that country and mod-97, compact or in
    /// groups of four.
    pub iban: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    /// `AKIA…`/`ASIA…` access key ids.
    pub aws_access_key: bool,
    pub jwt: bool,
    /// The body of PEM `-----BEGIN … PRIVATE KEY-----` blocks.
    pub private_key: bool,
    /// `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`.
    pub github_token: bool,
    /// `xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`, `xoxe-`, `xapp-`.
    pub slack_token: bool,
    /// `sk_live_`, `sk_test_`, `rk_live_`, `rk_test_`.
    pub stripe_key: bool,
    /// `AIza…`.
    pub google_api_key: bool,
    /// The credential after `Bearer ` (any case), at least 16 characters.
    pub bearer_token: bool,
    /// `sk-proj-`, `sk-svcacct-`, `sk-admin-`, `sk-None-`, and the legacy
    /// `sk-` + 32 or more letters and digits (a form other AI APIs use
    /// too).
    pub openai_api_key: bool,
    /// `sk-ant-` (`sk-ant-api03-`, `sk-ant-admin01-`, …).
    pub anthropic_api_key: bool,
    /// `glpat-`, `gldt-`, `glptt-`, `glrt-`, `glcbt-`, `glft-`, `glimt-`,
    /// `glagent-`, `glsoat-`, `gloas-`.
    pub gitlab_token: bool,
    /// `hf_` + 30 or more letters and digits.
    pub huggingface_token: bool,
    /// `npm_` + 36 or more letters and digits.
    pub npm_token: bool,
    /// The password of a URL, `scheme://user:password@host` (database
    /// URLs, DSNs, clone URLs), and a user name alone that looks like a
    /// token (`https://ghp_…@github.com`).
    pub url_password: bool,
    /// Shopify `shpat_`, `shpss_` + 32 hex digits; `shpca_`, `shppa_` +
    /// 32 hex digits as a whole value (see `vault_token`).
    pub shopify_token: bool,
    /// DigitalOcean `dop_v1_`, `doo_v1_`, `dor_v1_` + 64 hex digits.
    pub digitalocean_token: bool,
    /// Grafana Cloud tokens `glc_` + 32 or more base64 characters;
    /// service-account tokens `glsa_` + 32 letters and digits + `_` + 8 hex
    /// digits as a whole value (see `vault_token`).
    pub grafana_token: bool,
    /// Postman `PMAK-` + 24 hex digits, `-`, 34 hex digits.
    pub postman_api_key: bool,
    /// New Relic user keys `NRAK-` + 27 capitals and digits.
    pub newrelic_api_key: bool,
    /// age secret keys `AGE-SECRET-KEY-1…`.
    pub age_secret_key: bool,
    /// SendGrid `SG.` + 22, `.`, 43 of `[A-Za-z0-9_-]`.
    pub sendgrid_api_key: bool,
    /// The tokens below are recognized only as a whole value (a cell, a
    /// COPY field, a JSON string or `jsonb` string scalar, a notification's
    /// payload, a word of an error message; ASCII whitespace around it
    /// aside), not inside other text:
    /// their prefixes are too common in prose to be looked for everywhere.
    /// Vault `hvs.`, `hvb.`, `hvr.` + 24 or more of `[A-Za-z0-9_-]` with a
    /// digit and a capital (and a namespace's `.` + 5-character id).
    pub vault_token: bool,
    /// Databricks `dapi` + 32 hex digits (and `-` + 1 or 2 digits).
    pub databricks_token: bool,
    /// Mailgun `key-` + 32 hex digits.
    pub mailgun_api_key: bool,
    /// Telegram bot tokens: the bot id (8–10 digits, kept), `:AA` + 33 of
    /// `[A-Za-z0-9_-]`.
    pub telegram_bot_token: bool,
    /// Linear `lin_api_` + 40 letters and digits, `lin_oauth_` + 64 hex.
    pub linear_api_key: bool,
    /// PyPI upload tokens `pypi-AgEIcHlwaS5vcmc…`.
    pub pypi_token: bool,
    /// Doppler `dp.pt.`, `dp.st.` (and a config's name and `.`), `dp.sa.`,
    /// `dp.ct.`, `dp.scim.`, `dp.audit.` + 40–44 letters and digits.
    pub doppler_token: bool,
    /// Pulumi `pul-` + 40 hex digits.
    pub pulumi_token: bool,
    /// Sentry `sntryu_` + 64 hex digits, `sntrys_` + 60 or more base64.
    pub sentry_token: bool,
    /// The name rules (`columns` with a glob or regex and the `mask` or
    /// `keep_last` action) also mask the value after a key they match in
    /// text: `password=hunter2`, `api_key: 9f8e…`, `"db_password": "x"`,
    /// `AccountKey=…;`, `aws_secret_access_key = …`. Counted under the
    /// column rule. Not a detector of its own (no rule id).
    pub named_values: bool,
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors {
            payment_card: true,
            email: true,
            ssn: true,
            phone: true,
            iban: true,
            ipv4: false,
            ipv6: false,
            aws_access_key: true,
            jwt: true,
            private_key: true,
            github_token: true,
            slack_token: true,
            stripe_key: true,
            google_api_key: true,
            bearer_token: true,
            openai_api_key: true,
            anthropic_api_key: true,
            gitlab_token: true,
            huggingface_token: true,
            npm_token: true,
            url_password: true,
            shopify_token: true,
            digitalocean_token: true,
            grafana_token: true,
            postman_api_key: true,
            newrelic_api_key: true,
            age_secret_key: true,
            sendgrid_api_key: true,
            vault_token: true,
            databricks_token: true,
            mailgun_api_key: true,
            telegram_bot_token: true,
            linear_api_key: true,
            pypi_token: true,
            doppler_token: true,
            pulumi_token: true,
            sentry_token: true,
            named_values: true,
        }
    }
}

impl Detectors {
    /// Every built-in detector on (IP addresses included).
    pub fn all() -> Self {
        Detectors {
            ipv4: true,
            ipv6: true,
            ..Detectors::default()
        }
    }

    /// Every built-in detector off.
    pub fn none() -> Self {
        Detectors {
            payment_card: false,
            email: false,
            ssn: false,
            phone: false,
            iban: false,
            ipv4: false,
            ipv6: false,
            aws_access_key: false,
            jwt: false,
            private_key: false,
            github_token: false,
            slack_token: false,
            stripe_key: false,
            google_api_key: false,
            bearer_token: false,
            openai_api_key: false,
            anthropic_api_key: false,
            gitlab_token: false,
            huggingface_token: false,
            npm_token: false,
            url_password: false,
            shopify_token: false,
            digitalocean_token: false,
            grafana_token: false,
            postman_api_key: false,
            newrelic_api_key: false,
            age_secret_key: false,
            sendgrid_api_key: false,
            vault_token: false,
            databricks_token: false,
            mailgun_api_key: false,
            telegram_bot_token: false,
            linear_api_key: false,
            pypi_token: false,
            doppler_token: false,
            pulumi_token: false,
            sentry_token: false,
            named_values: false,
        }
    }
}

/// A list of literal strings masked wherever they occur.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomLiterals {
    pub name: String,
    pub values: Vec<String>,
    /// ASCII case-insensitive matching.
    #[serde(default)]
    pub case_insensitive: bool,
}

/// A regular expression (Rust `regex` syntax) whose matches are masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRegex {
    pub name: String,
    pub pattern: String,
}

/// A rule applied to whole columns, chosen from RowDescription. At least one
/// of `column`, `column_regex` and `type` must be given; all given must match.
///
/// Names are the stored column's name where the gateway knows where a
/// result column comes from (`super::origins`: an alias, a subquery or a
/// CTE that renames a table column), else the result's column name; an
/// expression gives a column no origin, and COPY TO output has no names:
/// rules are a convenience on top of the detectors, which scan every text
/// value, not an access control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// Glob on the column name (`*` any run, `?` one character), ASCII
    /// case-insensitive, whole name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Regex on the column name (unanchored unless written with `^…$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_regex: Option<String>,
    /// PostgreSQL type name (`text`, `varchar`, `int8`, …) or oid.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<TypeRef>,
    pub action: ColumnAction,
}

/// A column type given by name or oid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TypeRef {
    Oid(u32),
    Name(String),
}

/// What a column rule does to each non-NULL value.
///
/// On text types (`text`, `varchar`, `bpchar`, `name`, …) `mask` and
/// `keep_last` rewrite the characters in place. On any other type (numbers,
/// dates, uuid, json, arrays, …) `mask`, `keep_last` and `hash` apply to
/// the value's text form (a binary value is printed as text first; one of
/// a type the gateway cannot print becomes NULL), and the column is shown
/// to the client as `text`, since `****` would not parse as the type. `null`
/// keeps the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnAction {
    /// Every character becomes the mask character.
    Mask,
    /// Every character but the last N becomes the mask character.
    KeepLast(u16),
    /// The value becomes a keyed hash (HMAC-SHA-256, 32 hex digits): equal
    /// values give equal hashes, so joins and GROUP BY still work.
    Hash,
    /// The value becomes NULL.
    Null,
}

impl Serialize for ColumnAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ColumnAction::Mask => s.serialize_str("mask"),
            ColumnAction::Hash => s.serialize_str("hash"),
            ColumnAction::Null => s.serialize_str("null"),
            ColumnAction::KeepLast(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("keep_last", n)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ColumnAction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "`mask`, `hash`, `null` or `{ keep_last: N }`";
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ColumnAction;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ColumnAction, E> {
                match v {
                    "mask" => Ok(ColumnAction::Mask),
                    "hash" => Ok(ColumnAction::Hash),
                    "null" | "set_null" => Ok(ColumnAction::Null),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            // YAML `action: null` (unquoted) arrives as a null.
            fn visit_unit<E: serde::de::Error>(self) -> Result<ColumnAction, E> {
                Ok(ColumnAction::Null)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<ColumnAction, E> {
                Ok(ColumnAction::Null)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ColumnAction, A::Error> {
                let mut n = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "keep_last" {
                        return Err(serde::de::Error::unknown_field(&k, &["keep_last"]));
                    }
                    if n.is_some() {
                        return Err(serde::de::Error::duplicate_field("keep_last"));
                    }
                    n = Some(map.next_value::<u16>()?);
                }
                n.map(ColumnAction::KeepLast)
                    .ok_or_else(|| serde::de::Error::missing_field("keep_last"))
            }
        }
        d.deserialize_any(V)
    }
}

/// How masked characters look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskFormat {
    /// One of `* # ~ ^ ? ! _ % =`: never a letter or digit (a mask must not
    /// look like data) and never a quote, backslash, comma or delimiter (an
    /// in-place rewrite must not break CSV, COPY or JSON).
    pub mask_char: char,
    /// Keep separators (`-`, `.`, `@`, spaces, parentheses) so the shape of
    /// a value stays recognisable; only letters and digits are masked.
    pub keep_punctuation: bool,
    pub card_keep_last: u8,
    pub ssn_keep_last: u8,
    pub iban_keep_last: u8,
    pub phone_keep_last: u8,
    /// Keep the top-level domain of e-mail addresses (`.com`).
    pub email_keep_tld: bool,
    /// Keep the fixed prefix of tokens (`ghp_`, `AKIA`, `sk_live_`,
    /// `Bearer `): it says what leaked without leaking it.
    pub token_keep_prefix: bool,
}

impl Default for MaskFormat {
    fn default() -> Self {
        MaskFormat {
            mask_char: '*',
            keep_punctuation: true,
            card_keep_last: 4,
            ssn_keep_last: 4,
            iban_keep_last: 4,
            phone_keep_last: 2,
            email_keep_tld: true,
            token_keep_prefix: true,
        }
    }
}

/// Characters allowed as `mask_char`.
pub const MASK_CHARS: &str = "*#~^?!_%=";

/// The `hash` action's key; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HashKey(pub String);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl MaskingProfile {
    /// Parse YAML (unknown fields refused) without validating; errors carry
    /// the field path.
    pub fn from_yaml(text: &str) -> Result<MaskingProfile, ProfileError> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "<root>".to_string()
            } else {
                path
            };
            ProfileError::field(field, e.into_inner().to_string())
        })
    }

    /// Number of rules: built-in detectors, then literal lists, regexes and
    /// column rules, in that order (this is also the order of rule ids).
    pub fn rule_count(&self) -> usize {
        super::engine::BUILTIN_RULES
            + self.custom_literals.len()
            + self.custom_regexes.len()
            + self.columns.len()
            // (`column:unresolved_copy`, with column rules.)
            + usize::from(!self.columns.is_empty())
    }

    /// Check values that the types alone do not; compiles the regexes to
    /// check them (so [`super::Engine::compile`] errors look the same).
    pub fn validate(&self) -> Result<(), ProfileError> {
        let f = &self.format;
        if !MASK_CHARS.contains(f.mask_char) {
            return Err(ProfileError::field(
                "format.mask_char",
                format!("must be one of `{MASK_CHARS}`"),
            ));
        }
        if self.rule_count() > MAX_RULES {
            return Err(ProfileError::field(
                "columns",
                format!(
                    "at most {} literal lists, regexes and column rules together",
                    MAX_RULES - super::engine::BUILTIN_RULES
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.custom_literals.iter().enumerate() {
            let at = |s: &str| format!("custom_literals[{i}].{s}");
            if l.name.is_empty() {
                return Err(ProfileError::field(at("name"), "must not be empty"));
            }
            if !names.insert(l.name.as_str()) {
                return Err(ProfileError::field(at("name"), "duplicate rule name"));
            }
            if l.values.is_empty() {
                return Err(ProfileError::field(at("values"), "must not be empty"));
            }
            for (j, v) in l.values.iter().enumerate() {
                if v.is_empty() {
                    return Err(ProfileError::field(
                        format!("custom_literals[{i}].values[{j}]"),
                        "must not be empty",
                    ));
                }
            }
        }
        for (i, r) in self.custom_regexes.iter().enumerate() {
            let at = |s: &str| format!("custom_regexes[{i}].{s}");
            if r.name.is_empty() {
                return Err(ProfileError::field(at("name"), "must not be empty"));
            }
            if !names.insert(r.name.as_str()) {
                return Err(ProfileError::field(at("name"), "duplicate rule name"));
            }
            let re =
                compile_regex(&r.pattern).map_err(|m| ProfileError::field(at("pattern"), m))?;
            if re.is_match(b"") {
                return Err(ProfileError::field(
                    at("pattern"),
                    "matches the empty string",
                ));
            }
        }
        for (i, c) in self.columns.iter().enumerate() {
            let at = |s: &str| format!("columns[{i}].{s}");
            if c.column.is_none() && c.column_regex.is_none() && c.type_.is_none() {
                return Err(ProfileError::field(
                    format!("columns[{i}]"),
                    "needs `column`, `column_regex` or `type`",
                ));
            }
            if c.column.is_some() && c.column_regex.is_some() {
                return Err(ProfileError::field(
                    at("column_regex"),
                    "give `column` or `column_regex`, not both",
                ));
            }
            if let Some(g) = &c.column {
                if g.is_empty() {
                    return Err(ProfileError::field(at("column"), "must not be empty"));
                }
            }
            if let Some(r) = &c.column_regex {
                regex::Regex::new(r)
                    .map_err(|e| ProfileError::field(at("column_regex"), e.to_string()))?;
            }
            if let Some(TypeRef::Name(n)) = &c.type_ {
                if super::rows::type_oid(n).is_none() {
                    return Err(ProfileError::field(
                        at("type"),
                        format!("unknown type name `{n}` (give the oid for other types)"),
                    ));
                }
            }
            if let ColumnAction::KeepLast(n) = c.action {
                if n == 0 {
                    return Err(ProfileError::field(
                        at("action.keep_last"),
                        "must be at least 1 (use `mask`)",
                    ));
                }
            }
        }
        if let Some(k) = &self.hash_key {
            if k.0.len() < 16 {
                return Err(ProfileError::field("hash_key", "must be at least 16 bytes"));
            }
        }
        Ok(())
    }
}

/// Compile a custom regex (bytes API, size-limited).
pub(crate) fn compile_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(4 << 20)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_yaml() {
        let p = MaskingProfile::default();
        p.validate().unwrap();
        let y = serde_yaml::to_string(&p).unwrap();
        assert_eq!(MaskingProfile::from_yaml(&y).unwrap(), p);
        // An empty document is the default.
        assert_eq!(MaskingProfile::from_yaml("{}").unwrap(), p);
    }

    #[test]
    fn parses_the_documented_example() {
        let y = r#"
detectors: { ipv4: true, bearer_token: false }
custom_literals:
  - { name: codenames, values: [BLUEBIRD], case_insensitive: true }
custom_regexes:
  - { name: employee_id, pattern: 'EMP-[0-9]{6}' }
columns:
  - { column: '*password*', action: mask }
  - { column_regex: '^(ssn|tax_id)$', action: { keep_last: 4 } }
  - { type: varchar, column: 'email*', action: hash }
  - { type: 25, action: 'null' }
  - { column: notes, action: null }
format: { mask_char: '#', card_keep_last: 0 }
hash_key: '0123456789abcdef'
"#;
        let p = MaskingProfile::from_yaml(y).unwrap();
        p.validate().unwrap();
        assert!(p.detectors.ipv4 && !p.detectors.bearer_token && p.detectors.email);
        assert_eq!(p.columns[1].action, ColumnAction::KeepLast(4));
        assert_eq!(p.columns[2].type_, Some(TypeRef::Name("varchar".into())));
        assert_eq!(p.columns[3].type_, Some(TypeRef::Oid(25)));
        assert_eq!(p.columns[3].action, ColumnAction::Null);
        assert_eq!(p.columns[4].action, ColumnAction::Null);
        assert_eq!(p.format.mask_char, '#');
        assert!(!format!("{p:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("detectors: { e_mail: true }", "detectors.e_mail"),
            (
                "columns: [ { column: a, action: squash } ]",
                "columns[0].action",
            ),
            (
                "columns: [ { column: a, action: { keep_last: 0 } } ]",
                "columns[0].action.keep_last",
            ),
            ("columns: [ { action: mask } ]", "columns[0]"),
            (
                "columns: [ { type: moneybags, action: mask } ]",
                "columns[0].type",
            ),
            (
                "columns: [ { column_regex: '(', action: mask } ]",
                "columns[0].column_regex",
            ),
            (
                "custom_regexes: [ { name: r, pattern: 'a*' } ]",
                "custom_regexes[0].pattern",
            ),
            (
                "custom_regexes: [ { name: r, pattern: '(' } ]",
                "custom_regexes[0].pattern",
            ),
            (
                "custom_literals: [ { name: l, values: [''] } ]",
                "custom_literals[0].values[0]",
            ),
            ("format: { mask_char: 'x' }", "format.mask_char"),
            ("format: { mask_char: ',' }", "format.mask_char"),
            ("hash_key: short", "hash_key"),
        ];
        for (y, field) in cases {
            let err = MaskingProfile::from_yaml(y).and_then(|p| p.validate().map(|_| p));
            let err = err.expect_err(y);
            assert_eq!(&err.field, field, "{y}: {err}");
        }
    }

    #[test]
    fn too_many_rules_are_refused() {
        let p = MaskingProfile {
            custom_regexes: (0..MAX_RULES)
                .map(|i| CustomRegex {
                    name: format!("r{i}"),
                    pattern: "x".into(),
                })
                .collect(),
            ..MaskingProfile::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "columns");
    }
}
