//! Parsing the Prometheus text exposition format well enough for assertions:
//! `name{label="value",...} number` and `name number` lines; `#` lines are
//! comments.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = parse_line(line) {
                samples.push(s);
            }
        }
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// Sum of the samples named `name` whose labels include all of `labels`
    /// (0 if there is none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample named `name` (with `labels`) exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(|x| x == v).unwrap_or(false))
        })
    }

    /// The lines for metric `name` (for failure messages).
    pub fn lines_for(&self, name: &str) -> String {
        self.text
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(b) if line[..b].find(char::is_whitespace).is_none() => {
            let name = &line[..b];
            let (labels, after) = parse_labels(&line[b + 1..])?;
            (name, labels, after)
        }
        _ => {
            let mut it = line.splitn(2, char::is_whitespace);
            (it.next()?, BTreeMap::new(), it.next()?)
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parse `k="v",k2="v2"}` and return the labels and the text after `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            return Some((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=')? + i;
        let key = s[i..eq].trim().to_string();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut val = String::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                val.push(match bytes[i] {
                    b'n' => '\n',
                    c => c as char,
                });
            } else {
                // Label values are UTF-8; copy whole chars.
                let ch = s[i..].chars().next()?;
                val.push(ch);
                i += ch.len_utf8() - 1;
            }
            i += 1;
        }
        i += 1; // closing quote
        labels.insert(key, val);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE sluice_auth_failures_total counter\n\
             sluice_auth_failures_total{reason=\"bad_password\"} 3\n\
             sluice_auth_failures_total{reason=\"unknown_identity\",core=\"0\"} 1\n\
             sluice_auth_failures_total{core=\"1\",reason=\"unknown_identity\"} 2\n\
             sluice_connections_open 7\n\
             sluice_gateway_added_seconds{quantile=\"0.99\"} 1.5e-5\n",
        );
        assert_eq!(
            m.get("sluice_auth_failures_total", &[("reason", "bad_password")]),
            3.0
        );
        assert_eq!(
            m.get(
                "sluice_auth_failures_total",
                &[("reason", "unknown_identity")]
            ),
            3.0
        );
        assert_eq!(m.get("sluice_auth_failures_total", &[]), 6.0);
        assert_eq!(m.get("sluice_connections_open", &[]), 7.0);
        assert_eq!(
            m.get("sluice_gateway_added_seconds", &[("quantile", "0.99")]),
            1.5e-5
        );
        assert!(!m.has("nope", &[]));
    }
}
