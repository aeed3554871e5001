//! Result masking end to end (issue 4): real PostgreSQL, the real
//! `sluice-dp` (static config, and nodes of a real `sluice-cp` on its
//! embedded store), real clients (tokio-postgres simple and extended
//! protocol, prepared statements, COPY, psql).
//!
//! Method: a table holds sensitive values (Luhn-valid cards with spaces,
//! dashes or none, e-mails, SSNs, IBANs, tokens, phones) next to clean
//! ones. The same statement runs through the gateway and directly; the
//! expected gateway answer is the direct answer with every sensitive value
//! replaced by its documented mask, byte for byte. So clean values (and
//! the clean text around a sensitive value) must come back identical, and
//! a sensitive value must come back exactly as its mask.
//!
//! Every wait has a deadline; nothing asserts speed.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::{future::join_all, pin_mut, StreamExt};
use proto::resource::Spec;
use sluice_tests::client::{connect_with_messages, err_text, step};
use sluice_tests::cp::{self, Admin, Backend, ControlPlane};
use sluice_tests::{connect, db_code, process, ApiKey, Gateway, GatewayConfig, Pg};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Row, SimpleQueryMessage};

/// Bound for a configuration change to reach a node on a loaded machine.
const LIMIT: Duration = Duration::from_secs(20);

/// Node settings appended to `control_plane:` (one data core, short drain).
const NODE: &str = "workers: 1\nlimits:\n  drain_timeout_ms: 500\n";

/// The `hash` action's key in the custom profiles below.
const HASH_KEY: &str = "sluice-e2e-hash-key-0123456789";

// ------------------------------------------------------------------ data

/// A sensitive value, and how the default profile must return it.
struct Secret {
    what: &'static str,
    value: String,
    masked: String,
    /// The rule label of `sluice_masked_values_total`.
    rule: &'static str,
}

/// The sensitive values. Token-shaped values are assembled at run time so
/// that no scanner mistakes this file for a leak.
fn secrets() -> Vec<Secret> {
    let stars = |n: usize| "*".repeat(n);
    let gh_body = "Xq7Lm2Pz9Rt4Vw8Ny3Kb6Hd1Fs5Gj0Ce2UaQ"; // 36
    let stripe_body = "4eC39HqLyjWDarjtT1zdp7dc";
    let slack_body = "T0123ABCD-B0123EFGH-abcdefghijklmnop";
    let bearer_body = "abcDEF123456ghiJKL7890mnopQR";
    let openai_body = "Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789_abcDEFghiJKLmno-PQRst";
    let anthropic_body = "Zx9Y8w7V6u5T4s3R2q1P0oNmLkJiHgFeDcBa-ZyXwVuTsRqPoNm_AA";
    let gitlab_body = "xYz12AbC34dEf56GhI78";
    let hf_body = "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGhIj"; // 34
    let npm_body = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"; // 36
    let sendgrid_id = "AbCdEfGhIjKlMnOpQrStUv"; // 22
    let sendgrid_secret = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdE"; // 43
    let do_body = "0123456789abcdef".repeat(4); // 64
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\
               .eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0\
               .dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let jwt_masked: String = jwt
        .chars()
        .map(|c| if c == '.' { '.' } else { '*' })
        .collect();
    let v = |what, value: String, masked: String, rule| {
        assert_eq!(value.len(), masked.len(), "{what}: masks keep the length");
        Secret {
            what,
            value,
            masked,
            rule,
        }
    };
    let s = |what, value: &str, masked: &str, rule| v(what, value.into(), masked.into(), rule);
    vec![
        s(
            "Visa, spaces",
            "4111 1111 1111 1111",
            "**** **** **** 1111",
            "payment_card",
        ),
        s(
            "Mastercard, dashes",
            "5500-0000-0000-0004",
            "****-****-****-0004",
            "payment_card",
        ),
        s(
            "Amex, bare",
            "378282246310005",
            "***********0005",
            "payment_card",
        ),
        s(
            "e-mail",
            "alice.smith@example.com",
            "*****.*****@*******.com",
            "email",
        ),
        s(
            "e-mail, URL-encoded",
            "https://shop.example/unsubscribe?email=bob.jones%40example.org",
            "https://shop.example/unsubscribe?email=***.*****%40*******.org",
            "email",
        ),
        s("SSN", "536-22-8841", "***-**-8841", "ssn"),
        s("E.164 phone", "+1 415 555 2671", "+* *** *** **71", "phone"),
        s("NANP phone", "(415) 555-2671", "(***) ***-**71", "phone"),
        s(
            "IBAN, grouped",
            "GB82 WEST 1234 5698 7654 32",
            "GB** **** **** **** **54 32",
            "iban",
        ),
        s(
            "IBAN, compact",
            "DE89370400440532013000",
            "DE****************3000",
            "iban",
        ),
        s(
            "AWS key id",
            "AKIAIOSFODNN7EXAMPLE",
            "AKIA****************",
            "aws_access_key",
        ),
        v("JWT", jwt.to_string(), jwt_masked, "jwt"),
        v(
            "GitHub token",
            format!("gh{}_{gh_body}", "p"),
            format!("ghp_{}", stars(gh_body.len())),
            "github_token",
        ),
        v(
            "Stripe key",
            format!("sk_{}_{stripe_body}", "test"),
            format!("sk_test_{}", stars(stripe_body.len())),
            "stripe_key",
        ),
        v(
            "Slack token",
            format!("xox{}-{slack_body}", "b"),
            format!("xoxb-{}", stars(slack_body.len())),
            "slack_token",
        ),
        v(
            "OpenAI project key",
            format!("sk-{}-{openai_body}", "proj"),
            format!("sk-proj-{}", stars(openai_body.len())),
            "openai_api_key",
        ),
        v(
            "Anthropic key",
            format!("sk-{}-api03-{anthropic_body}", "ant"),
            format!("sk-ant-api03-{}", stars(anthropic_body.len())),
            "anthropic_api_key",
        ),
        v(
            "GitLab token",
            format!("gl{}-{gitlab_body}", "pat"),
            format!("glpat-{}", stars(gitlab_body.len())),
            "gitlab_token",
        ),
        v(
            "Hugging Face token",
            format!("h{}_{hf_body}", "f"),
            format!("hf_{}", stars(hf_body.len())),
            "huggingface_token",
        ),
        v(
            "npm token",
            format!("np{}_{npm_body}", "m"),
            format!("npm_{}", stars(npm_body.len())),
            "npm_token",
        ),
        v(
            "SendGrid key",
            format!("S{}.{sendgrid_id}.{sendgrid_secret}", "G"),
            format!(
                "SG.{}",
                stars(sendgrid_id.len() + 1 + sendgrid_secret.len())
            ),
            "sendgrid_api_key",
        ),
        v(
            "DigitalOcean token",
            format!("do{}_v1_{do_body}", "p"),
            format!("dop_v1_{}", stars(do_body.len())),
            "digitalocean_token",
        ),
        s(
            "database URL password",
            "postgres://app:S3cretPass99@db.internal:5432/orders",
            "postgres://app:************@db.internal:5432/orders",
            "url_password",
        ),
        s(
            "password in an env line",
            "DB_PASSWORD=Tr0ub4dor&3",
            "DB_PASSWORD=***********",
            "column:*password*",
        ),
        v(
            "Bearer credential",
            format!("Bearer {bearer_body}"),
            format!("Bearer {}", stars(bearer_body.len())),
            "bearer_token",
        ),
    ]
}

/// Values no detector of the default profile may touch.
const CLEAN: &[&str] = &[
    "ORD-2024-000123",
    "4111 1111 1111 1112",
    "123456789",
    "000-12-3456",
    "666-45-6789",
    "version 1.2.3 build 20240301",
    "192.168.1.20",
    "user at example dot com",
    "x@y",
    "Z\u{fc}rich caf\u{e9} \u{2615} na\u{ef}ve",
    "price 12.50 EUR, qty 3",
    "2024-03-01T10:00:00Z",
    "550e8400-e29b-41d4-a716-446655440000",
    "GB00 NOT AN IBAN",
    "AKIA short",
    "eyJ not a token",
    "tab\tand\\backslash and \"quotes\", commas",
    "line one\nline two",
    "",
    "+1",
    "12/31/2024",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod",
    "a risk-free, part-time set-up; sk-learn and the glpat-short token",
];

/// A sensitive (or clean) value inside clean text.
fn sentence(v: &str) -> String {
    format!("note for order 7: {v} (checked)")
}

/// Create `t` (id, kind, value, sentence, n, created) holding every secret,
/// every clean value, and a row of NULLs.
async fn seed(pg: &Pg, t: &str, secrets: &[Secret]) {
    let c = pg.direct().await;
    c.batch_execute(&format!(
        "drop table if exists {t}; \
         create table {t} (id int primary key, kind text not null, value text, \
                           sentence text, n int8, created date)"
    ))
    .await
    .unwrap_or_else(|e| panic!("create {t}: {}", err_text(&e)));
    let ins = c
        .prepare(&format!(
            "insert into {t} values ($1, $2, $3, $4, $5, date '2024-03-01' + $1::int)"
        ))
        .await
        .unwrap();
    let rows = secrets
        .iter()
        .map(|s| ("sensitive", s.value.as_str()))
        .chain(CLEAN.iter().map(|v| ("clean", *v)));
    for (i, (kind, v)) in rows.enumerate() {
        let id = i as i32 + 1;
        let n = id as i64 * 1_000_003;
        c.execute(&ins, &[&id, &kind, &v, &sentence(v), &n])
            .await
            .unwrap_or_else(|e| panic!("insert into {t}: {}", err_text(&e)));
    }
    c.execute(
        &format!("insert into {t} (id, kind) values (999, 'null')"),
        &[],
    )
    .await
    .unwrap();
}

// ------------------------------------------------------------ expectations

/// Replace every occurrence of `from` in `buf` with `to` (same length).
fn replace_all(buf: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut i = 0;
    while let Some(k) = find(&buf[i..], from) {
        buf[i + k..i + k + from.len()].copy_from_slice(to);
        i += k + from.len();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The direct answer with every sensitive value replaced by its mask.
fn masked_bytes(direct: &[u8], secrets: &[Secret]) -> Vec<u8> {
    let mut out = direct.to_vec();
    for s in secrets {
        replace_all(&mut out, s.value.as_bytes(), s.masked.as_bytes());
    }
    out
}

fn masked_text(direct: &str, secrets: &[Secret]) -> String {
    String::from_utf8(masked_bytes(direct.as_bytes(), secrets)).expect("masks are ASCII")
}

/// The secrets (by description) whose original value appears in `bytes`.
fn leaks<'a>(bytes: &[u8], secrets: &'a [Secret]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|s| find(bytes, s.value.as_bytes()).is_some())
        .map(|s| s.what)
        .collect()
}

type TextRow = Vec<Option<String>>;

fn masked_rows(direct: &[TextRow], secrets: &[Secret]) -> Vec<TextRow> {
    direct
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| c.as_deref().map(|v| masked_text(v, secrets)))
                .collect()
        })
        .collect()
}

/// Raw column bytes as they came off the wire (binary for tokio-postgres's
/// extended-protocol queries), for any type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

type RawRow = Vec<Raw>;

fn raw_rows(rows: &[Row]) -> Vec<RawRow> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<_, Raw>(i).expect("raw column"))
                .collect()
        })
        .collect()
}

fn masked_raw_rows(direct: &[RawRow], secrets: &[Secret]) -> Vec<RawRow> {
    direct
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| Raw(c.0.as_deref().map(|b| masked_bytes(b, secrets))))
                .collect()
        })
        .collect()
}

/// Panic listing every row that differs.
#[track_caller]
fn assert_rows<T: std::fmt::Debug + PartialEq>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} rows through the gateway, {} expected",
        got.len(),
        want.len()
    );
    let diffs: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| format!("row {i}:\n  got  {g:?}\n  want {w:?}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} rows differ from the direct answer with sensitive values masked:\n{}",
        diffs.len(),
        got.len(),
        diffs.join("\n")
    );
}

/// Panic showing the differing lines (or the first differing offset).
#[track_caller]
fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let g: Vec<&[u8]> = got.split(|&b| b == b'\n').collect();
    let w: Vec<&[u8]> = want.split(|&b| b == b'\n').collect();
    let mut shown = Vec::new();
    // A long line is shown around its first difference only.
    let around = |a: &[u8], b: &[u8]| -> (String, String) {
        let at = a
            .iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let cut = |s: &[u8]| {
            let from = at.saturating_sub(60);
            let to = (at + 60).min(s.len());
            format!(
                "{}{}{} (byte {at} of {})",
                if from > 0 { "…" } else { "" },
                String::from_utf8_lossy(&s[from.min(to)..to]),
                if to < s.len() { "…" } else { "" },
                s.len()
            )
        };
        (cut(a), cut(b))
    };
    if g.len() == w.len() {
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            if a != b {
                let (a, b) = around(a, b);
                shown.push(format!("line {i}:\n  got  {a}\n  want {b}"));
            }
            if shown.len() >= 40 {
                shown.push("…".into());
                break;
            }
        }
    } else {
        let (a, b) = around(got, want);
        shown.push(format!(
            "{} lines vs {} expected:\n  got  {a}\n  want {b}",
            g.len(),
            w.len()
        ));
    }
    panic!(
        "{what}: the gateway's bytes differ from the direct answer with sensitive values masked:\n{}",
        shown.join("\n")
    );
}

// --------------------------------------------------------------- clients

async fn simple_rows(c: &Client, sql: &str) -> Vec<TextRow> {
    let msgs = step(sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn query_raw_rows(c: &Client, sql: &str) -> Vec<RawRow> {
    let rows = step(sql, c.query(sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
    raw_rows(&rows)
}

/// `COPY … TO STDOUT` with tokio-postgres (extended protocol).
async fn copy_out(c: &Client, sql: &str) -> Result<Vec<u8>, tokio_postgres::Error> {
    let stream = step(sql, c.copy_out(sql)).await?;
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = step("COPY data", stream.next()).await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// psql (simple query protocol) with `args`, against `url`.
fn psql(url: &str, args: &[&str], password: Option<&str>) -> process::Output {
    let mut c = std::process::Command::new("psql");
    for v in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSSLMODE",
        "PGSERVICE",
        "PGOPTIONS",
    ] {
        c.env_remove(v);
    }
    c.env("PGCONNECT_TIMEOUT", "10").env("PSQLRC", "/dev/null");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.args(["-X", "-v", "ON_ERROR_STOP=1"]).args(args).arg(url);
    process::run(&mut c, None, Duration::from_secs(60))
}

fn via_url(gw: &Gateway) -> String {
    gw.url("agent1", &ApiKey::shared().key, "app", "sslmode=disable")
}

/// psql through the gateway and directly; stdout of both.
fn psql_both(gw: &Gateway, pg: &Pg, args: &[&str]) -> (String, String) {
    let via = psql(&via_url(gw), args, None);
    via.assert_success("psql through the gateway");
    let direct = psql(&pg.direct_url(), args, Some(&pg.app_password));
    direct.assert_success("psql direct");
    (via.stdout, direct.stdout)
}

fn hmac_hex(key: &str, value: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    sluice_tests::hex(&ring::hmac::sign(&k, value.as_bytes()).as_ref()[..16])
}

// ------------------------------------------------- static config: default

/// Simple protocol (tokio-postgres `simple_query`, several statements in one
/// Query, and psql): sensitive values come back as their masks, clean
/// values and the clean text around them byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_profile_masks_simple_protocol_and_psql() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_simple";
    seed(pg, t, &secrets).await;
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let direct = pg.direct().await;

    let sql = format!("select id, kind, value, sentence, n, created from {t} order by id");
    let got = simple_rows(&via, &sql).await;
    let want = masked_rows(&simple_rows(&direct, &sql).await, &secrets);
    assert!(want.len() > secrets.len() + CLEAN.len());
    assert_rows("simple query", &got, &want);
    // The expectation really masks: every secret is in the direct answer.
    for s in &secrets {
        assert!(
            want.iter()
                .flatten()
                .flatten()
                .any(|v| v.contains(&s.masked)),
            "{}",
            s.what
        );
    }

    // Several result sets with different shapes in one Query.
    let multi = format!(
        "select value from {t} where kind = 'sensitive' order by id; \
         select sentence, id, kind, value from {t} order by id desc; \
         select 1 as one, 'plain' as two"
    );
    let got = simple_rows(&via, &multi).await;
    let want = masked_rows(&simple_rows(&direct, &multi).await, &secrets);
    assert_rows("multi-statement query", &got, &want);

    // psql, aligned and unaligned output.
    for args in [
        vec!["-A", "-t", "-F", "|", "-c"],
        vec!["-P", "pager=off", "-c"],
    ] {
        let q = format!("select id, kind, value, sentence from {t} order by id");
        let mut a: Vec<&str> = args.clone();
        a.push(&q);
        let (via_out, direct_out) = psql_both(&gw, pg, &a);
        assert!(leaks(via_out.as_bytes(), &secrets).is_empty());
        assert_bytes(
            &format!("psql {args:?}"),
            via_out.as_bytes(),
            masked_bytes(direct_out.as_bytes(), &secrets).as_slice(),
        );
    }
}

/// `SLUICE_MASK_KERNEL` picks the classification kernel: an unknown name
/// stops the gateway at start with an error naming the variable; `scalar`
/// (which every CPU runs) is what the gateway reports and masks with, with
/// the same output as the default kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masking_kernel_can_be_chosen_and_a_bad_choice_is_refused() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_kernel";
    seed(pg, t, &secrets).await;
    let yaml = GatewayConfig::standard(pg, ApiKey::shared()).to_yaml();
    let err = match Gateway::try_start_customized(&yaml, |c| {
        c.env("SLUICE_MASK_KERNEL", "avx1024");
    }) {
        Ok(_) => panic!("sluice-dp started with SLUICE_MASK_KERNEL=avx1024"),
        Err(e) => e,
    };
    assert!(
        err.contains("SLUICE_MASK_KERNEL=\"avx1024\": unknown masking kernel"),
        "{err}"
    );

    let gw = Gateway::try_start_customized(&yaml, |c| {
        c.env("SLUICE_MASK_KERNEL", "scalar");
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        gw.metrics()
            .get("sluice_mask_kernel_info", &[("kernel", "scalar")]),
        1.0
    );
    let via = gw.agent().await;
    let direct = pg.direct().await;
    let sql = format!("select id, kind, value, sentence, n, created from {t} order by id");
    let got = simple_rows(&via, &sql).await;
    let want = masked_rows(&simple_rows(&direct, &sql).await, &secrets);
    assert_rows("scalar kernel", &got, &want);
}

/// Extended protocol: tokio-postgres asks for binary results; unnamed and
/// named (prepared, reused, interleaved) statements with different column
/// layouts; several queries pipelined on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_profile_masks_extended_protocol_and_prepared_statements() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_extended";
    seed(pg, t, &secrets).await;
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let direct = pg.direct().await;

    let sql = format!("select id, kind, value, sentence, n, created from {t} order by id");
    let got = query_raw_rows(&via, &sql).await;
    let want = masked_raw_rows(&query_raw_rows(&direct, &sql).await, &secrets);
    assert_rows("extended query (binary results)", &got, &want);

    let by_kind_sql = format!("select value, id, sentence from {t} where kind = $1 order by id");
    let by_id_sql = format!("select n, created, sentence, value, kind from {t} where id = $1");
    let (by_kind, by_id) = (
        via.prepare(&by_kind_sql).await.unwrap(),
        via.prepare(&by_id_sql).await.unwrap(),
    );
    let (d_kind, d_id) = (
        direct.prepare(&by_kind_sql).await.unwrap(),
        direct.prepare(&by_id_sql).await.unwrap(),
    );
    let kinds = ["sensitive", "clean", "null"];
    let ids = [1i32, 4, 11, 20, 999];
    for round in 0..3 {
        for k in &kinds {
            let g = raw_rows(&via.query(&by_kind, &[k]).await.unwrap());
            let w = raw_rows(&direct.query(&d_kind, &[k]).await.unwrap());
            assert_rows(
                &format!("prepared by kind {k}, round {round}"),
                &g,
                &masked_raw_rows(&w, &secrets),
            );
        }
        for id in &ids {
            let g = raw_rows(&via.query(&by_id, &[id]).await.unwrap());
            let w = raw_rows(&direct.query(&d_id, &[id]).await.unwrap());
            assert_rows(
                &format!("prepared by id {id}, round {round}"),
                &g,
                &masked_raw_rows(&w, &secrets),
            );
        }
    }

    // Pipelined: twelve executions of the two statements in flight at once.
    let kind_params: Vec<[&(dyn ToSql + Sync); 1]> = kinds.iter().map(|k| [k as _]).collect();
    let id_params: Vec<[&(dyn ToSql + Sync); 1]> = ids.iter().map(|i| [i as _]).collect();
    type Fut<'a> =
        Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;
    let mut futs: Vec<Fut<'_>> = Vec::new();
    let mut wants = Vec::new();
    for i in 0..12 {
        if i % 2 == 0 {
            let p = &kind_params[i / 2 % kinds.len()];
            futs.push(Box::pin(via.query(&by_kind, p)));
            wants.push(raw_rows(&direct.query(&d_kind, p).await.unwrap()));
        } else {
            let p = &id_params[i / 2 % ids.len()];
            futs.push(Box::pin(via.query(&by_id, p)));
            wants.push(raw_rows(&direct.query(&d_id, p).await.unwrap()));
        }
    }
    let results = step("pipelined queries", join_all(futs)).await;
    for (i, (r, w)) in results.into_iter().zip(wants).enumerate() {
        let g = raw_rows(&r.unwrap_or_else(|e| panic!("pipelined query {i}: {}", err_text(&e))));
        assert_rows(
            &format!("pipelined query {i}"),
            &g,
            &masked_raw_rows(&w, &secrets),
        );
    }

    // Typed access, as an application would read it.
    let row = via
        .query_one(&format!("select value from {t} where id = 1"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), secrets[0].masked);
}

/// `COPY … TO STDOUT` in text and CSV: through tokio-postgres's
/// `copy_out` (extended protocol) and psql (a simple Query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_profile_masks_copy_to_stdout_text_and_csv() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_copy";
    seed(pg, t, &secrets).await;
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let direct = pg.direct().await;
    let cols = "id, kind, value, sentence, n, created";
    let statements = [
        format!("copy (select {cols} from {t} order by id) to stdout"),
        format!("copy (select {cols} from {t} order by id) to stdout with (format csv, header)"),
        format!("copy (select {cols} from {t} order by id) to stdout csv"),
        format!("copy {t} to stdout"),
        format!("copy {t} to stdout with (format csv, force_quote *)"),
    ];
    for sql in &statements {
        let got = copy_out(&via, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} through the gateway: {}", err_text(&e)));
        let d = copy_out(&direct, sql).await.unwrap();
        assert!(!d.is_empty());
        assert_bytes(
            &format!("copy_out: {sql}"),
            &got,
            &masked_bytes(&d, &secrets),
        );
        let (via_out, direct_out) = psql_both(&gw, pg, &["-c", sql]);
        assert_bytes(
            &format!("psql: {sql}"),
            via_out.as_bytes(),
            &masked_bytes(direct_out.as_bytes(), &secrets),
        );
    }
}

/// Fields of a binary COPY stream (`PGCOPY` signature, header, tuples of
/// length-prefixed fields, trailer), or why it does not parse.
fn parse_binary_copy(b: &[u8]) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
    let sig = b"PGCOPY\n\xff\r\n\0";
    if !b.starts_with(sig) {
        return Err("no PGCOPY signature".into());
    }
    let mut at = sig.len() + 4;
    let be32 = |at: usize| -> Result<i32, String> {
        b.get(at..at + 4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let ext = be32(at)? as usize;
    at += 4 + ext;
    let mut rows = Vec::new();
    loop {
        let n = b
            .get(at..at + 2)
            .map(|x| i16::from_be_bytes([x[0], x[1]]))
            .ok_or_else(|| format!("truncated at byte {at}"))?;
        at += 2;
        if n == -1 {
            return if at == b.len() {
                Ok(rows)
            } else {
                Err(format!("{} bytes after the trailer", b.len() - at))
            };
        }
        let mut row = Vec::new();
        for _ in 0..n {
            let len = be32(at)?;
            at += 4;
            if len < 0 {
                row.push(None);
                continue;
            }
            let v = b
                .get(at..at + len as usize)
                .ok_or_else(|| format!("field of {len} bytes runs past the end at {at}"))?;
            row.push(Some(v.to_vec()));
            at += len as usize;
        }
        rows.push(row);
    }
}

/// Binary COPY and binary DataRows carry text values behind a 4-byte
/// length. Masking must not let the length word change what is detected:
/// values of 48–57 bytes have a length whose last byte is an ASCII digit
/// (`0`–`9`) right before the value's first digit. Every value must come
/// back masked and the stream must still parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_and_binary_rows_are_masked_and_stay_well_formed() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_copy_binary";
    seed(pg, t, &secrets).await;
    let direct = pg.direct().await;
    // Values starting with a card, 40–60 bytes long.
    let card = &secrets[0];
    direct
        .batch_execute(&format!(
            "drop table if exists {t}_len; create table {t}_len (id int, v text)"
        ))
        .await
        .unwrap();
    for len in 40usize..=60 {
        let v = format!("{} {}", card.value, "x".repeat(len - card.value.len() - 1));
        assert_eq!(v.len(), len);
        direct
            .execute(
                &format!("insert into {t}_len values ($1, $2)"),
                &[&(len as i32), &v],
            )
            .await
            .unwrap();
    }
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let mut problems = Vec::new();
    for sql in [
        format!(
            "copy (select id, value, sentence from {t} order by id) to stdout with (format binary)"
        ),
        format!("copy (select id, v from {t}_len order by id) to stdout with (format binary)"),
    ] {
        let want = copy_out(&direct, &sql).await.unwrap();
        let want = parse_binary_copy(&want).expect("direct binary COPY parses");
        match copy_out(&via, &sql).await {
            Err(e) => {
                // Refusing binary COPY while masking is on is acceptable.
                eprintln!("binary COPY refused: {}", err_text(&e));
                continue;
            }
            Ok(bytes) => {
                let l = leaks(&bytes, &secrets);
                if !l.is_empty() {
                    problems.push(format!("`{sql}`: unmasked {l:?} in the binary COPY stream"));
                }
                match parse_binary_copy(&bytes) {
                    Err(e) => problems.push(format!(
                        "`{sql}`: the binary COPY stream through the gateway does not parse: {e}"
                    )),
                    Ok(got) => {
                        let want: Vec<Vec<Option<Vec<u8>>>> = want
                            .iter()
                            .map(|r| {
                                r.iter()
                                    .map(|c| c.as_deref().map(|v| masked_bytes(v, &secrets)))
                                    .collect()
                            })
                            .collect();
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            if g != w {
                                problems.push(format!(
                                    "`{sql}` row {i}: got {:?}, want {:?}",
                                    g.iter()
                                        .map(|c| c.as_deref().map(String::from_utf8_lossy))
                                        .collect::<Vec<_>>(),
                                    w.iter()
                                        .map(|c| c.as_deref().map(String::from_utf8_lossy))
                                        .collect::<Vec<_>>()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    // The same values as binary and text DataRows.
    let sql = format!("select id, v from {t}_len order by id");
    let want = masked_raw_rows(&query_raw_rows(&direct, &sql).await, &secrets);
    let got = query_raw_rows(&via, &sql).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            problems.push(format!("binary DataRow {i}: got {g:?}, want {w:?}"));
        }
    }
    let want = masked_rows(&simple_rows(&direct, &sql).await, &secrets);
    let got = simple_rows(&via, &sql).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            problems.push(format!("text DataRow {i}: got {g:?}, want {w:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The session is still usable.
    let r = simple_rows(&via, "select 1").await;
    assert_eq!(r, vec![vec![Some("1".to_string())]]);
}

/// Decimal numbers written as text (an amount computed by the database,
/// `2.2600000000000000`) are not card numbers: the digits after a decimal
/// point belong to the number before it, even when they happen to form a
/// Luhn-valid 16-digit run with a card issuer prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_fractions_in_text_are_not_masked() {
    let pg = Pg::shared();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let direct = pg.direct().await;
    // What `format('%s', 226 / 100.0)` and friends print in PostgreSQL 15.
    let sql = "select format('qty 6 at %s EUR', 226 / 100.0) as a, \
               format('ratio %s', 41 / 100.0 + 0.0011111111111111) as b, \
               '2.2600000000000000'::text as c, 'total 12.5500000000000004 USD'::text as d";
    let d = simple_rows(&direct, sql).await;
    assert_eq!(d[0][0].as_deref(), Some("qty 6 at 2.2600000000000000 EUR"));
    assert_rows("simple", &simple_rows(&via, sql).await, &d);
    assert_rows(
        "extended",
        &query_raw_rows(&via, sql).await,
        &query_raw_rows(&direct, sql).await,
    );
}

/// A portal read in several Executes (`max_rows`, PortalSuspended, as JDBC
/// with a fetch size does), with other statements of other shapes run on
/// the same session in between: every batch of the portal's rows is masked
/// by the portal's own description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_portal_rows_are_masked_after_other_statements() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_portal";
    seed(pg, t, &secrets).await;
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let mut via = gw.agent().await;
    let direct = pg.direct().await;
    let sql = format!("select value, sentence from {t} where kind = 'sensitive' order by id");
    let want = masked_raw_rows(&query_raw_rows(&direct, &sql).await, &secrets);
    let tx = via.transaction().await.unwrap();
    let portal = tx.bind(sql.as_str(), &[]).await.unwrap();
    let mut got = Vec::new();
    let mut batches = 0;
    loop {
        let rows = step("execute portal", tx.query_portal(&portal, 3))
            .await
            .unwrap_or_else(|e| panic!("portal: {}", err_text(&e)));
        if rows.is_empty() {
            break;
        }
        got.extend(raw_rows(&rows));
        batches += 1;
        // Other statements in between, with other row shapes: two integer
        // columns (simple protocol, text), then a binary one.
        let r = tx.simple_query("select 1 as a, 2 as b").await.unwrap();
        assert!(matches!(
            r.first(),
            Some(SimpleQueryMessage::RowDescription(_)) | Some(SimpleQueryMessage::Row(_))
        ));
        let r = tx
            .query("select 3::int4 as c, 4::int8 as d", &[])
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
    }
    tx.commit().await.unwrap();
    assert!(batches > 2);
    let l: Vec<&str> = got
        .iter()
        .flatten()
        .flat_map(|c| leaks(c.0.as_deref().unwrap_or_default(), &secrets))
        .collect();
    assert!(l.is_empty(), "unmasked in later portal batches: {l:?}");
    assert_rows("portal rows, all batches", &got, &want);
}

/// NOTIFY payloads reach a listening session as NotificationResponse: a
/// trigger that sends row data (`pg_notify`) must not get card numbers or
/// e-mails past the masking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_payloads_are_masked() {
    let pg = Pg::shared();
    let secrets = secrets();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let (via, mut msgs) = connect_with_messages(&gw.agent_config()).await.unwrap();
    via.batch_execute("listen mk_orders").await.unwrap();
    let payload = format!(
        "order 7 paid by {} with {}",
        secrets[3].value, secrets[0].value
    );
    let direct = pg.direct().await;
    direct
        .execute("select pg_notify('mk_orders', $1)", &[&payload])
        .await
        .unwrap();
    // A statement on the listening session makes sure the notification
    // has been delivered before we look.
    simple_rows(&via, "select 1").await;
    let deadline = Instant::now() + LIMIT;
    let n = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, msgs.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => break n,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => panic!("no notification within {LIMIT:?}"),
        }
    };
    assert_eq!(n.channel(), "mk_orders");
    assert_eq!(
        n.payload(),
        masked_text(&payload, &secrets),
        "NOTIFY payload through a masking gateway"
    );
}

/// Tokens recognized only as a whole value (Vault, Databricks, Mailgun,
/// Telegram, Linear, PyPI, Doppler, Pulumi, Sentry; Grafana service
/// accounts, Shopify custom apps), as a key-value settings table holds
/// them: masked after their prefix in simple and extended results, COPY,
/// and the message of a cast error that quotes one, and counted under
/// their rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stored_as_whole_values_are_masked() {
    let pg = Pg::shared();
    let t = "mk_whole_tokens";
    // (Assembled at run time, so that no scanner mistakes this file for a
    // leak.)
    let hex32 = "0123456789abcdef".repeat(2);
    let b62 = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".repeat(3);
    let tokens: Vec<(String, usize, &str)> = vec![
        (format!("hv{}.CAESIJ{}", "s", &b62[..90]), 4, "vault_token"),
        (format!("da{}{hex32}", "pi"), 4, "databricks_token"),
        (format!("ke{}-{hex32}", "y"), 4, "mailgun_api_key"),
        (
            format!("123456789:A{}{}", "A", &b62[..33]),
            10,
            "telegram_bot_token",
        ),
        (format!("lin_{}_{}", "api", &b62[..40]), 8, "linear_api_key"),
        (
            format!("py{}-AgEIcHlwaS5vcmc{}", "pi", &b62[..80]),
            5,
            "pypi_token",
        ),
        (format!("dp.{}.{}", "pt", &b62[..43]), 6, "doppler_token"),
        (format!("pu{}-{hex32}01234567", "l"), 4, "pulumi_token"),
        (format!("sntr{}_{hex32}{hex32}", "yu"), 7, "sentry_token"),
        (
            format!("gl{}_{}_{}", "sa", &b62[..32], &hex32[..8]),
            5,
            "grafana_token",
        ),
        (format!("shp{}_{hex32}", "ca"), 6, "shopify_token"),
    ];
    let masked = |(v, keep, _): &(String, usize, &str)| {
        format!("{}{}", &v[..*keep], "*".repeat(v.len() - keep))
    };
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; create table {t} (id int, key text, value text)"
        ))
        .await
        .unwrap();
    for (i, (v, _, rule)) in tokens.iter().enumerate() {
        direct
            .execute(
                &format!("insert into {t} values ($1, $2, $3)"),
                &[&(i as i32), &rule.to_uppercase(), v],
            )
            .await
            .unwrap();
    }
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let sql = format!("select value from {t} order by id");
    let want: Vec<TextRow> = tokens.iter().map(|x| vec![Some(masked(x))]).collect();
    assert_eq!(simple_rows(&via, &sql).await, want);
    let rows = via.query(&sql, &[]).await.unwrap();
    let got: Vec<TextRow> = rows.iter().map(|r| vec![r.get(0)]).collect();
    assert_eq!(got, want);
    let copy = copy_out(&via, &format!("copy ({sql}) to stdout"))
        .await
        .unwrap();
    let lines: String = want
        .iter()
        .map(|r| format!("{}\n", r[0].as_ref().unwrap()))
        .collect();
    assert_eq!(String::from_utf8(copy).unwrap(), lines);
    // As an element of an array (text and binary results) and a field of
    // a record.
    let sql = format!("select array['x', value], row(value, 1) from {t} order by id");
    let want: Vec<TextRow> = tokens
        .iter()
        .map(|x| {
            vec![
                Some(format!("{{x,{}}}", masked(x))),
                Some(format!("({},1)", masked(x))),
            ]
        })
        .collect();
    assert_eq!(simple_rows(&via, &sql).await, want);
    let sql = format!("select array['x', value] from {t} order by id");
    let got: Vec<Vec<String>> = via
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<Vec<String>> = tokens.iter().map(|x| vec!["x".into(), masked(x)]).collect();
    assert_eq!(got, want);
    // Padded past 512 bytes (`char(600)`), in an array with other bounds,
    // in a `jsonb[]`: text rows and text COPY.
    let sql = format!(
        "select value::char(600), array_fill(value, array[2], array[0]), \
         array[to_jsonb(value)] from {t} order by id"
    );
    let rows = simple_rows(&via, &sql).await;
    let copy = copy_out(&via, &format!("copy ({sql}) to stdout"))
        .await
        .unwrap();
    let copy = String::from_utf8(copy).unwrap();
    for (x, row) in tokens.iter().zip(&rows) {
        let (v, ..) = x;
        let row = format!("{row:?}");
        assert!(
            !row.contains(v.as_str()) && !copy.contains(v.as_str()),
            "{v}: {row}"
        );
        assert_eq!(row.matches(&masked(x)).count(), 4, "{row}");
    }
    // Binary COPY of the same values as `jsonb` string scalars: a version
    // byte, then the JSON text.
    let copy = copy_out(
        &via,
        &format!(
            "copy (select to_jsonb(value) from {t} order by id) to stdout with (format binary)"
        ),
    )
    .await
    .unwrap();
    let got: Vec<String> = parse_binary_copy(&copy)
        .expect("the binary COPY parses")
        .into_iter()
        .map(|r| {
            let v = r[0].as_deref().expect("not NULL");
            assert_eq!(v[0], 1, "jsonb version byte");
            String::from_utf8(v[1..].to_vec()).unwrap()
        })
        .collect();
    let quoted: Vec<String> = tokens
        .iter()
        .map(|x| format!("\"{}\"", masked(x)))
        .collect();
    assert_eq!(got, quoted);
    // CSV quotes a JSON text and doubles its quotes: `"""hvs.…"""`, and an
    // object's members `""db_password"": ""…""`.
    direct
        .batch_execute(&format!(
            "alter table {t} add column doc jsonb; \
             update {t} set doc = jsonb_build_object('db_password', key || 'x')"
        ))
        .await
        .unwrap();
    let copy = copy_out(
        &via,
        &format!(
            "copy (select to_jsonb(value), doc from {t} order by id) to stdout with (format csv)"
        ),
    )
    .await
    .unwrap();
    let lines: String = tokens
        .iter()
        .map(|x| {
            let hidden = "*".repeat(x.2.len() + 1);
            format!(
                "\"\"\"{}\"\"\",\"{{\"\"db_password\"\": \"\"{hidden}\"\"}}\"\n",
                masked(x)
            )
        })
        .collect();
    assert_eq!(String::from_utf8(copy).unwrap(), lines);
    // A cast error quotes the value.
    let (v, ..) = &tokens[0];
    let err = via
        .simple_query(&format!("select '{v}'::int"))
        .await
        .expect_err("not an integer");
    let msg = err_text(&err);
    assert!(
        msg.contains(&masked(&tokens[0])) && !msg.contains(v.as_str()),
        "{msg}"
    );
    let m = gw.metrics();
    for (_, _, rule) in &tokens {
        assert!(
            m.get("sluice_masked_values_total", &[("rule", rule)]) >= 3.0,
            "{rule}: {:?}",
            m.lines_for("sluice_masked_values_total")
        );
    }
}

/// ErrorResponse and NoticeResponse texts: a unique violation's DETAIL
/// repeats the value, a cast error's message quotes it, RAISE puts it in
/// message, detail and hint; simple and extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_and_notice_texts_are_masked() {
    let pg = Pg::shared();
    let secrets = secrets();
    let card = &secrets[0];
    let email = &secrets[3];
    let t = "mk_errors";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; \
             create table {t} (id serial primary key, card text unique, email text unique)"
        ))
        .await
        .unwrap();
    direct
        .execute(
            &format!("insert into {t} (card, email) values ($1, $2)"),
            &[&card.value, &email.value],
        )
        .await
        .unwrap();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let (via, mut notices) = connect_with_messages(&gw.agent_config()).await.unwrap();

    let all_text = |e: &tokio_postgres::Error| -> String {
        let d = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e:?}"));
        format!(
            "{} | {:?} | {:?} | {:?}",
            d.message(),
            d.detail(),
            d.hint(),
            d.where_()
        )
    };

    // Unique violation, simple protocol.
    let e = step(
        "duplicate card (simple)",
        via.simple_query(&format!("insert into {t} (card) values ('{}')", card.value)),
    )
    .await
    .expect_err("duplicate accepted");
    assert_eq!(db_code(&e).as_deref(), Some("23505"), "{}", err_text(&e));
    let text = all_text(&e);
    assert!(leaks(text.as_bytes(), &secrets).is_empty(), "{text}");
    assert_eq!(
        e.as_db_error().unwrap().detail(),
        Some(format!("Key (card)=({}) already exists.", card.masked).as_str()),
        "{text}"
    );

    // Unique violation, extended protocol (the value is a bind parameter).
    for (col, s) in [("card", card), ("email", email)] {
        let e = step(
            "duplicate (extended)",
            via.execute(&format!("insert into {t} ({col}) values ($1)"), &[&s.value]),
        )
        .await
        .expect_err("duplicate accepted");
        assert_eq!(db_code(&e).as_deref(), Some("23505"), "{}", err_text(&e));
        let text = all_text(&e);
        assert!(leaks(text.as_bytes(), &secrets).is_empty(), "{text}");
        assert_eq!(
            e.as_db_error().unwrap().detail(),
            Some(format!("Key ({col})=({}) already exists.", s.masked).as_str()),
        );
    }

    // A cast error quotes the value in the message.
    let e = via
        .simple_query(&format!("select '{}'::int", card.value))
        .await
        .expect_err("cast succeeded");
    assert_eq!(db_code(&e).as_deref(), Some("22P02"));
    let text = all_text(&e);
    assert!(leaks(text.as_bytes(), &secrets).is_empty(), "{text}");
    assert!(text.contains(&card.masked), "{text}");

    // RAISE with message, detail and hint; context names the statement.
    let iban = &secrets[7];
    let phone = &secrets[5];
    let e = via
        .batch_execute(&format!(
            "do $$ begin raise exception 'refund to % failed', '{}' \
               using detail = 'account {}', hint = 'call {}'; end $$",
            email.value, iban.value, phone.value
        ))
        .await
        .expect_err("raise exception");
    assert_eq!(db_code(&e).as_deref(), Some("P0001"));
    let d = e.as_db_error().unwrap();
    assert_eq!(d.message(), format!("refund to {} failed", email.masked));
    assert_eq!(
        d.detail(),
        Some(format!("account {}", iban.masked).as_str())
    );
    assert_eq!(d.hint(), Some(format!("call {}", phone.masked).as_str()));

    // A notice (NoticeResponse) in the middle of a session.
    via.batch_execute(&format!(
        "do $$ begin raise notice 'customer % paid with %', '{}', '{}'; end $$",
        email.value, card.value
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + LIMIT;
    let notice = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, notices.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => break n,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => panic!("no notice within {LIMIT:?}"),
        }
    };
    assert_eq!(
        notice.message(),
        format!("customer {} paid with {}", email.masked, card.masked)
    );
    // The session still works and still masks.
    let r = simple_rows(&via, &format!("select card from {t}")).await;
    assert_eq!(r, vec![vec![Some(card.masked.clone())]]);
}

/// Text-like types in binary result format (what tokio-postgres asks for):
/// every column holding a card or an e-mail must come back without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_like_types_are_masked_in_binary_and_text_results() {
    let pg = Pg::shared();
    let secrets = secrets();
    let (card, email) = (&secrets[0].value, &secrets[3].value);
    pg.psql_super(
        &pg.app_db,
        &[
            "create extension if not exists citext",
            "create extension if not exists hstore",
        ],
    )
    .assert_success("create extensions");
    let t = "mk_types";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; drop type if exists {t}_contact; \
             drop domain if exists {t}_note; \
             create domain {t}_note as text; \
             create type {t}_contact as (email text, card text); \
             create table {t} (id int, v_text text, v_varchar varchar(80), v_bpchar char(60), \
               v_name name, v_json json, v_jsonb jsonb, v_text_arr text[], \
               v_varchar_arr varchar(80)[], v_citext citext, v_domain {t}_note, \
               v_composite {t}_contact, v_hstore hstore)"
        ))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let both = format!("{email} {card}");
    direct
        .execute(
            &format!(
                "insert into {t} values (1, $1::text, $1::text, $1::text, $1::text, json_build_object('c', $2::text, 'e', $3::text), \
                 jsonb_build_object('c', $2::text, 'e', $3::text), array[$2::text, $3::text], \
                 array[$2::text, $3::text]::varchar(80)[], $1::text::citext, $1::text::{t}_note, row($3::text, $2::text)::{t}_contact, hstore('c', $2::text) || hstore('e', $3::text))"
            ),
            &[&both, card, email],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let sql = format!("select * from {t}");
    let mut problems = Vec::new();

    let rows = step("binary select", via.query(&sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    for (i, c) in rows[0].columns().iter().enumerate() {
        let raw = rows[0].get::<_, Raw>(i).0.unwrap_or_default();
        let l = leaks(&raw, &secrets);
        if !l.is_empty() {
            problems.push(format!(
                "binary result, column {} ({}): unmasked {l:?} in {:?}",
                c.name(),
                c.type_(),
                String::from_utf8_lossy(&raw)
            ));
        }
    }
    for row in simple_rows(&via, &sql).await {
        for (i, v) in row.iter().enumerate() {
            let v = v.as_deref().unwrap_or_default();
            let l = leaks(v.as_bytes(), &secrets);
            if !l.is_empty() {
                problems.push(format!("text result, column {i}: unmasked {l:?} in {v:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The default profile's name rules (`*password*`, `*api_key*`,
/// `*secret*`, …) reach inside JSON values: a `jsonb` or `json` column, or
/// JSON in a text column, comes back with the string values of matching
/// members masked, in text and binary results, still valid JSON (parsed
/// here), and every other member as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_named_members_of_json_values_are_masked() {
    let pg = Pg::shared();
    let t = "mk_json";
    let direct = pg.direct().await;
    let doc = r#"{"service": "billing", "db_password": "hunter2-Prod", "retries": 3,
                  "nested": {"api_key": "k-12345", "region": "eu"}, "tags": ["password", "x"]}"#;
    let note = r#"{"client_secret": "abc\"123", "user": "bob"}"#;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; \
             create table {t} (id int, config jsonb, body json, note text); \
             insert into {t} values (1, $${doc}$$, $${doc}$$, $${note}$$)"
        ))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let sql = format!("select config, body, note from {t}");
    let check = |how: &str, col: usize, text: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(text).unwrap_or_else(|e| {
            panic!(
                "{how}, column {col}: not JSON ({e}): {:?}",
                String::from_utf8_lossy(text)
            )
        });
        if col < 2 {
            assert_eq!(v["db_password"], "************", "{how} {col}: {v}");
            assert_eq!(v["nested"]["api_key"], "*******", "{how} {col}: {v}");
            assert_eq!(v["nested"]["region"], "eu", "{how} {col}: {v}");
            assert_eq!(v["service"], "billing", "{how} {col}: {v}");
            assert_eq!(v["retries"], 3, "{how} {col}: {v}");
            assert_eq!(v["tags"][0], "password", "{how} {col}: {v}");
        } else {
            // (Every byte between the quotes, the escape's too.)
            assert_eq!(v["client_secret"], "********", "{how} {col}: {v}");
            assert_eq!(v["user"], "bob", "{how} {col}: {v}");
        }
    };
    for row in simple_rows(&via, &sql).await {
        for (i, v) in row.iter().enumerate() {
            check("text", i, v.as_deref().unwrap_or_default().as_bytes());
        }
    }
    let rows = step("binary select", via.query(&sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    for i in 0..3 {
        let raw = rows[0].get::<_, Raw>(i).0.unwrap_or_default();
        // (Binary jsonb is a version byte, then the text.)
        let text = if i == 0 { &raw[1..] } else { &raw[..] };
        check("binary", i, text);
    }
    // The originals are still there for a direct client.
    let d = simple_rows(&direct, &sql).await;
    assert!(d[0][0].as_deref().unwrap().contains("hunter2-Prod"));
}

// ---------------------------------------------- static config: profiles

fn pii_profile(extra_columns: &str) -> String {
    format!(
        r#"
columns:
  - {{ column: ssn, action: {{ keep_last: 4 }} }}
  - {{ column: 'secret_*', action: mask }}
  - {{ column: email, action: hash }}
  - {{ column: internal_notes, action: 'null' }}
  - {{ column: salary, action: mask }}
  - {{ column: cust_ref, action: hash }}
  - {{ column: card_int, action: {{ keep_last: 4 }} }}
  - {{ column: seen_at, action: 'null' }}
  - {{ column: placed_at, action: hash }}
  - {{ column: placed_tail, action: {{ keep_last: 6 }} }}
{extra_columns}
hash_key: '{HASH_KEY}'
"#
    )
}

/// Connection `app` masked with [`pii_profile`], for `agent1` (group
/// `bots`).
fn pii_config(pg: &Pg, key: &ApiKey) -> GatewayConfig {
    GatewayConfig::new()
        .pg_connection_masked("app", pg, "pii")
        .masking_profile("pii", &pii_profile(""))
        .identity_key("agent1", &key.verifier, &["bots"])
        .grant(&["app"], &[], &["bots"])
}

async fn seed_people(pg: &Pg, t: &str) {
    let c = pg.direct().await;
    c.batch_execute(&format!(
        "drop table if exists {t}; \
         create table {t} (id int primary key, ssn text unique, secret_answer text, email text, \
                           internal_notes text, salary int, note text); \
         insert into {t} values \
           (1, '123456789', 'my first pet was Rex', 'alice.smith@example.com', \
               'VIP, handle with care', 120000, 'card 4111 1111 1111 1111'), \
           (2, '987-65-4321', 'Z\u{fc}rich', 'bob@example.org', 'none', 95000, 'clean note'), \
           (3, null, null, 'alice.smith@example.com', null, null, null)"
    ))
    .await
    .unwrap_or_else(|e| panic!("seed {t}: {}", err_text(&e)));
}

/// A gateway with the `pii` profile over [`seed_people`]'s table `t`, and
/// a raw protocol session through it (identity agent1, connection app).
async fn pii_wire_session(t: &str) -> (Gateway, sluice_tests::wire::Session) {
    let (pg, key) = (Pg::shared(), ApiKey::shared());
    seed_people(pg, t).await;
    let gw = Gateway::start_with(&pii_config(pg, key));
    let s = sluice_tests::wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    (gw, s)
}

/// [`pii_wire_session`] under the built-in `default` profile (`ssn` keeps
/// its last four characters, `secret_answer` is masked whole).
async fn default_wire_session(t: &str) -> (Gateway, sluice_tests::wire::Session) {
    let (pg, key) = (Pg::shared(), ApiKey::shared());
    seed_people(pg, t).await;
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, key));
    let s = sluice_tests::wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    (gw, s)
}

/// What the `pii` profile must return for [`seed_people`]'s rows (id, ssn,
/// secret_answer, email, internal_notes, salary, note). `salary` is an
/// `int` masked in its text form, so the client gets it as `text`.
fn people_masked() -> Vec<TextRow> {
    let s = |v: &str| Some(v.to_string());
    vec![
        vec![
            s("1"),
            s("*****6789"),
            s("********************"),
            s(&hmac_hex(HASH_KEY, "alice.smith@example.com")),
            None,
            s("******"),
            s("card **** **** **** 1111"),
        ],
        vec![
            s("2"),
            s("*******4321"),
            // Every byte of the 7-byte UTF-8 value.
            s("*******"),
            s(&hmac_hex(HASH_KEY, "bob@example.org")),
            None,
            s("*****"),
            s("clean note"),
        ],
        vec![
            s("3"),
            None,
            None,
            s(&hmac_hex(HASH_KEY, "alice.smith@example.com")),
            None,
            None,
            None,
        ],
    ]
}

/// [`seed_people`]'s rows of `sql` are `want` by the simple and by the
/// extended protocol.
async fn assert_people(c: &Client, what: &str, sql: &str, want: &[TextRow]) {
    assert_rows(&format!("{what}, simple"), &simple_rows(c, sql).await, want);
    assert_rows(
        &format!("{what}, extended"),
        &people_extended(c, sql).await,
        want,
    );
}

/// The same rows read with the extended protocol (binary), as text.
async fn people_extended(c: &Client, sql: &str) -> Vec<TextRow> {
    let rows = step(sql, c.query(sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
    rows.iter()
        .map(|r| {
            vec![
                Some(r.get::<_, i32>(0).to_string()),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            ]
        })
        .collect()
}

/// Column rules follow the stored column, not the name a query gives it:
/// the gateway reads the target's `pg_attribute` at login, and
/// RowDescription names each plain column's table and attribute, through
/// aliases, table aliases, subqueries and CTEs, in both protocols. A table
/// created after a read is resolved at the next login once a session has
/// seen a result from it (the read continued with the relations created
/// since); the reads are counted; `column_origins: false`
/// goes back to result names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_follow_the_stored_column_under_aliases() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_alias";
    let late = "mk_alias_late";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!("drop view if exists {t}_v"))
        .await
        .unwrap();
    seed_people(pg, t).await;
    direct
        .batch_execute(&format!(
            "drop table if exists {late}; \
             create or replace view {t}_v as select id, ssn from {t}"
        ))
        .await
        .unwrap();
    let cfg = pii_config(pg, key)
        // (One core: the second session below finds the first one's read.)
        .workers(1);
    let gw = Gateway::start_with(&cfg);
    let c = gw.agent().await;
    let cols = "id, ssn, secret_answer, email, internal_notes, salary, note";
    let renamed = "id as a, ssn as b, secret_answer as c, email as \"Contact\", \
                   internal_notes as e, salary as f, note as g";
    let want = people_masked();
    for sql in [
        format!("select {renamed} from {t} order by id"),
        format!(
            "select p.id, p.ssn as x1, p.secret_answer as x2, p.email as x3, \
             p.internal_notes as x4, p.salary as x5, p.note from {t} p order by p.id"
        ),
        format!("select * from (select {renamed} from {t}) s order by a"),
        format!("with q as (select {cols} from {t}) select {renamed} from q order by a"),
    ] {
        assert_people(&c, &sql, &sql, &want).await;
    }
    // RETURNING names its columns' origins too; a view that keeps a
    // column's name is a stored column of that name.
    for sql in [
        format!("update {t} set note = note where id = 2 returning ssn as x"),
        format!("select v.ssn as x from {t}_v v where id = 2"),
    ] {
        assert_eq!(
            simple_rows(&c, &sql).await,
            vec![vec![Some("*******4321".to_string())]],
            "{sql}"
        );
    }

    // A table created after this session's read: a result from it marks
    // the read stale, and the next login reads the catalog again.
    direct
        .batch_execute(&format!(
            "create table {late} (id int, secret_pin text); \
             insert into {late} values (1, 'pin-4242')"
        ))
        .await
        .unwrap();
    let sql = format!("select secret_pin as p from {late}");
    simple_rows(&c, &sql).await;
    // (A read is kept for at least a second, stale or not.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c2 = gw.agent().await;
    for round in 0..2 {
        assert_eq!(
            simple_rows(&c2, &sql).await,
            vec![vec![Some("********".to_string())]],
            "round {round}"
        );
    }
    let m = gw.metrics();
    let read = |read| {
        m.get(
            "sluice_column_catalog_reads_total",
            &[("outcome", "ok"), ("read", read)],
        )
    };
    let failed = m.get(
        "sluice_column_catalog_reads_total",
        &[("outcome", "failed")],
    );
    assert!(
        read("whole") == 1.0 && read("continued") == 1.0 && failed == 0.0,
        "{}",
        m.lines_for("sluice_column_catalog_reads_total")
    );

    // Off: result names only (the detectors still scan every text value).
    let off = Gateway::start_with(&cfg.clone().limit("column_origins", false));
    let c3 = off.agent().await;
    let rows = simple_rows(
        &c3,
        &format!("select ssn as b, note as g from {t} order by id"),
    )
    .await;
    assert_eq!(rows[0][0].as_deref(), Some("123456789"));
    assert_eq!(rows[0][1].as_deref(), Some("card **** **** **** 1111"));
    let m = off.metrics();
    assert_eq!(m.get("sluice_column_catalog_reads_total", &[]), 0.0);
}

/// Column rules follow views that rename or compute: at login the gateway
/// also reads the stored queries of the views (and materialized views)
/// over ruled columns, so a view column that shows a ruled column under
/// another name takes its rule, a computed view column (an expression, a
/// UNION, a whole row) the strongest rule its view reads, a statement
/// that computes from such a view column the rule of its source, and one
/// that reads a whole row as a value (`p::text`) its table's, and a call
/// of a function whose body reads a ruled column that column's; through
/// views of views, in both protocols, and for a view created after the
/// read (from the next login on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_follow_views_that_rename_or_compute() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_views";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop materialized view if exists {t}_mv; drop table if exists {t} cascade; \
             drop table if exists {t}_j cascade; drop type if exists {t}_ty; \
             drop table if exists {t}_o cascade; \
             drop function if exists {t}_answer(int), {t}_tax(int), {t}_outer(int), {t}_all(int) cascade"
        ))
        .await
        .unwrap();
    seed_people(pg, t).await;
    direct
        .batch_execute(&format!(
            "create view {t}_v1 as select id, ssn as tax_id, upper(secret_answer) as hint, \
                    note, email as contact from {t}; \
             create view {t}_v2 as select tax_id as t2, hint || '' as h2, note as n2 from {t}_v1; \
             create materialized view {t}_mv as select id, ssn as s from {t}; \
             create view {t}_u as select ssn as x from {t} union all select note from {t}; \
             create view {t}_w as select id, p::text as r from {t} p; \
             create function {t}_answer(i int) returns text language sql stable \
               as $$ select secret_answer from {t} where id = i $$; \
             create function {t}_tax(i int) returns text language plpgsql stable \
               as $f$ begin return (select ssn from {t} where id = i); end $f$; \
             create view {t}_fv as select id, {t}_answer(id) as a from {t}; \
             create view {t}_rn as select id, secret_answer as hint2 from {t}; \
             alter view {t}_rn rename column hint2 to foo; \
             create type {t}_ty as (secret_q text, n int); \
             create table {t}_j (id int, profile jsonb, info {t}_ty); \
             insert into {t}_j values (1, '{{\"secret_q\": \"blue\"}}', row('green', 1)); \
             create view {t}_jv as select profile->>'secret_q' as k, (info).secret_q as f from {t}_j; \
             create function {t}_outer(i int) returns text language sql stable \
               as $$ select {t}_answer(i) $$; \
             create function {t}_all(i int) returns setof {t} language sql stable \
               as $$ select * from {t} where id = i $$; \
             create table {t}_o (id int, person int); insert into {t}_o values (1, 2); \
             create view {t}_ov as select id, {t}_answer(person) as a from {t}_o"
        ))
        .await
        .unwrap();
    let cfg = pii_config(pg, key).workers(1);
    let gw = Gateway::start_with(&cfg);
    let c = gw.agent().await;
    let s = |v: &str| Some(v.to_string());
    let bob = hmac_hex(HASH_KEY, "bob@example.org");
    let cases: Vec<(String, TextRow)> = vec![
        // Renamed (keep_last 4 of `ssn`, hash of `email`), computed from
        // `secret_answer` (mask: the view reads `ssn` and `secret_answer`,
        // and mask is the stronger), and an unruled column as it is.
        (
            format!("select tax_id, hint, note, contact from {t}_v1 where id = 2"),
            vec![s("*******4321"), s("*******"), s("clean note"), s(&bob)],
        ),
        // A view of the view.
        (
            format!("select t2, h2, n2 from {t}_v2 where n2 = 'clean note'"),
            vec![s("*******4321"), s("*******"), s("clean note")],
        ),
        (
            format!("select s from {t}_mv where id = 2"),
            vec![s("*******4321")],
        ),
        // A UNION of `ssn` and `note`: every value takes `ssn`'s rule.
        (
            format!("select x from {t}_u where x = 'clean note'"),
            vec![s("******note")],
        ),
        // A whole row holds `internal_notes`, whose rule is `null`.
        (format!("select r from {t}_w where id = 2"), vec![None]),
        // A statement computing from a view column computes from its
        // source; one computing from an unruled view column is left alone.
        (
            format!("select upper(tax_id) from {t}_v1 where id = 2"),
            vec![s("*******4321")],
        ),
        (
            format!("select upper(note) from {t}_v1 where id = 2"),
            vec![s("CLEAN NOTE")],
        ),
        // A whole row read as a value in an expression holds every column
        // (`internal_notes`'s rule is `null`); a qualifier does not.
        (
            format!("select p::text from {t} p where id = 2"),
            vec![None],
        ),
        (
            format!("select upper(p.note) from {t} p where p.id = 2"),
            vec![s("CLEAN NOTE")],
        ),
        // A function whose body reads a ruled column returns it under that
        // column's rule, also through a view.
        (format!("select {t}_answer(2)"), vec![s("*******")]),
        (format!("select {t}_tax(2)"), vec![s("*******4321")]),
        (
            format!("select a from {t}_fv where id = 2"),
            vec![s("*******")],
        ),
        // A computed column takes the stronger of its result name's rule
        // (`ssn`: keep_last 4) and what it is computed from (mask).
        (
            format!("select substr(secret_answer, 1, 5) as ssn from {t} where id = 2"),
            // (`Züric`: six bytes.)
            vec![s("******")],
        ),
        // Whole rows: `p.*`, after a comma in the FROM list.
        (
            format!("select concat(p.*) from {t}_o o, {t} p where p.id = 2"),
            vec![None],
        ),
        // A function calling one that reads a ruled column; one returning
        // whole rows (`select *`); a view over an unruled table calling one.
        (format!("select {t}_outer(2)"), vec![s("*******")]),
        (format!("select f::text from {t}_all(2) f"), vec![None]),
        (format!("select a from {t}_ov"), vec![s("*******")]),
        // A view over a table with no ruled column: a JSON key, a field of
        // a composite value.
        (
            format!("select k, f from {t}_jv"),
            vec![s("****"), s("*****")],
        ),
        // A column renamed since: statements use its new name.
        (
            format!("select upper(foo) from {t}_rn where id = 2"),
            vec![s("*******")],
        ),
        // `x` of the UNION view is `ssn`'s; another `x` is not.
        (
            format!("select upper(x) from {t}_u where x like '%4321'"),
            vec![s("*******4321")],
        ),
        (
            format!("select upper(x) from (select note as x from {t} where id = 2) q"),
            vec![s("CLEAN NOTE")],
        ),
    ];
    for (sql, want) in &cases {
        assert_eq!(
            simple_rows(&c, sql).await,
            vec![want.clone()],
            "{sql}, simple"
        );
        let rows = step(sql, c.query(sql.as_str(), &[]))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        let got: Vec<TextRow> = rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|k| r.get::<_, Option<String>>(k))
                    .collect()
            })
            .collect();
        assert_eq!(got, vec![want.clone()], "{sql}, extended");
    }

    // A view created after this core's read: from the next login on.
    direct
        .batch_execute(&format!(
            "create view {t}_late as select ssn as late_tax from {t}"
        ))
        .await
        .unwrap();
    let sql = format!("select late_tax from {t}_late where late_tax like '%4321'");
    simple_rows(&c, &sql).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c2 = gw.agent().await;
    assert_eq!(
        simple_rows(&c2, &sql).await,
        vec![vec![s("*******4321")]],
        "{sql}, next login"
    );
    drop((c, c2));
    direct
        .batch_execute(&format!(
            "drop materialized view {t}_mv; drop table {t} cascade; \
             drop table {t}_j cascade; drop type {t}_ty; drop table {t}_o cascade; \
             drop function if exists {t}_answer(int), {t}_tax(int), {t}_outer(int), {t}_all(int)"
        ))
        .await
        .unwrap();
}

/// A new database `db` owned by the application role, set up by the
/// superuser with `sql` (a REVOKE, the tables).
fn locked_database(pg: &Pg, db: &str, sql: &[&str]) {
    pg.psql_super(
        "postgres",
        &[
            &format!("DROP DATABASE IF EXISTS {db}"),
            &format!("CREATE DATABASE {db} OWNER {}", pg.app_user),
        ],
    )
    .assert_success("create database");
    pg.psql_super(db, sql).assert_success("revoke and seed");
}

/// One core, connection `locked` to database `db` as the application
/// role, for `agent1` (group `bots`), default profile.
fn locked_gateway(pg: &Pg, key: &ApiKey, db: &str) -> Gateway {
    Gateway::start_with(&locked_config(pg, key, db))
}

/// `agent1`'s session through `gw` to connection `locked`.
async fn locked_client(gw: &Gateway, key: &ApiKey) -> Client {
    sluice_tests::connect(&gw.config("agent1", &key.key, "locked"))
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), gw.log()))
}

/// [`locked_gateway`]'s configuration.
fn locked_config(pg: &Pg, key: &ApiKey, db: &str) -> GatewayConfig {
    GatewayConfig::new()
        .workers(1)
        .connection(
            "locked",
            "127.0.0.1",
            pg.port,
            db,
            &pg.app_user,
            Some(&pg.app_password),
        )
        .identity_key("agent1", &key.verifier, &["bots"])
        .grant(&["locked"], &[], &["bots"])
}

/// A target that refuses the catalog query (here: `pg_attribute` not
/// readable by the gateway's role in that database) leaves sessions working,
/// with rules by result names, a warning and a failed read counted; the read
/// is not tried again at every login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_catalog_read_leaves_rules_by_result_name() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "mk_origins_refused";
    locked_database(
        pg,
        db,
        &[
            "REVOKE SELECT ON pg_catalog.pg_attribute FROM PUBLIC",
            &format!(
                "CREATE TABLE creds (id int, api_secret text); \
                 INSERT INTO creds VALUES (1, 'zq81-ALPHA-omega'); \
                 ALTER TABLE creds OWNER TO {}",
                pg.app_user
            ),
        ],
    );
    let gw = locked_gateway(pg, key, db);
    for round in 0..2 {
        let c = sluice_tests::connect(&gw.config("agent1", &key.key, "locked"))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}\n{}", err_text(&e), gw.log()));
        let rows = simple_rows(&c, "select api_secret, api_secret as k, id from creds").await;
        assert_eq!(
            rows,
            vec![vec![
                Some("****************".to_string()),
                Some("zq81-ALPHA-omega".to_string()),
                Some("1".to_string())
            ]],
            "round {round}"
        );
    }
    let m = gw.metrics();
    assert_eq!(
        m.get(
            "sluice_column_catalog_reads_total",
            &[("outcome", "failed")]
        ),
        1.0,
        "{}",
        m.lines_for("sluice_column_catalog_reads_total")
    );
    assert_eq!(
        m.get("sluice_column_catalog_reads_total", &[("outcome", "ok")]),
        0.0
    );
    let log = gw.log();
    assert!(
        log.contains("the target refused the column catalog query")
            && log.contains("permission denied"),
        "{log}"
    );
}

/// The view read was refused `failed` times in all, counted and warned.
fn assert_view_read_refused(gw: &Gateway, failed: f64) {
    let m = gw.metrics();
    assert_eq!(
        m.get(
            "sluice_column_catalog_reads_total",
            &[("outcome", "failed")]
        ),
        failed,
        "{}",
        m.lines_for("sluice_column_catalog_reads_total")
    );
    let log = gw.log();
    assert!(
        log.contains("the target refused the view read") && log.contains("permission denied"),
        "{log}"
    );
}

/// Successful catalog reads of kind `read` (`whole`, `continued`) so far.
fn ok_reads(gw: &Gateway, read: &str) -> f64 {
    gw.metrics().get(
        "sluice_column_catalog_reads_total",
        &[("outcome", "ok"), ("read", read)],
    )
}

/// A target that refuses the view read (`pg_rewrite` not readable by the
/// gateway's role) keeps the column read: aliases are still followed, view
/// columns match by their own names, and the read counts as failed, with
/// a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_view_read_keeps_the_columns_and_counts_as_failed() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "mk_views_refused";
    locked_database(
        pg,
        db,
        &[
            "REVOKE SELECT ON pg_catalog.pg_rewrite FROM PUBLIC",
            &format!(
                "CREATE TABLE creds (id int, api_secret text); \
                 INSERT INTO creds VALUES (1, 'zq81-ALPHA-omega'); \
                 CREATE VIEW creds_v AS SELECT id, api_secret AS token_value FROM creds; \
                 ALTER TABLE creds OWNER TO {u}; ALTER VIEW creds_v OWNER TO {u}",
                u = pg.app_user
            ),
        ],
    );
    let gw = locked_gateway(pg, key, db);
    let c = locked_client(&gw, key).await;
    let rows = simple_rows(&c, "select api_secret as k from creds").await;
    assert_eq!(rows, vec![vec![Some("****************".to_string())]]);
    let rows = simple_rows(&c, "select token_value from creds_v").await;
    assert_eq!(rows, vec![vec![Some("zq81-ALPHA-omega".to_string())]]);
    assert_view_read_refused(&gw, 1.0);
}

/// The seeded secret of the session-read tests, and its mask.
const SESSION_SECRET: &str = "zq81-ALPHA-omega";
const SESSION_MASKED: &str = "****************";

/// A database of the application role with `creds (id, api_secret)`, and
/// a one-core gateway to it.
fn session_database(pg: &Pg, key: &ApiKey, db: &str) -> Gateway {
    seed_creds(pg, db);
    locked_gateway(pg, key, db)
}

/// [`session_database`] with reads older than `max_age_ms` made again.
fn session_database_aged(pg: &Pg, key: &ApiKey, db: &str, max_age_ms: u64) -> Gateway {
    seed_creds(pg, db);
    let cfg = locked_config(pg, key, db).limit("column_origins_max_age_ms", max_age_ms);
    Gateway::start_with(&cfg)
}

/// A raw wire session through `gw` to the `locked` connection.
async fn locked_wire_session(gw: &Gateway, key: &ApiKey) -> sluice_tests::wire::Session {
    sluice_tests::wire::login(gw.port, "agent1", "locked", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"))
}

/// A database of the application role with `creds (id, api_secret)`.
fn seed_creds(pg: &Pg, db: &str) {
    locked_database(
        pg,
        db,
        &[&format!(
            "CREATE TABLE creds (id int, api_secret text); \
             INSERT INTO creds VALUES (1, '{SESSION_SECRET}'); \
             ALTER TABLE creds OWNER TO {}",
            pg.app_user
        )],
    );
}

/// A session that changes the schema has its columns followed from its
/// next statement on: before that statement the gateway reads the catalog
/// again on the session's connection (its answers never reach the client).
/// Views and functions it creates, outside or inside a transaction block,
/// in both protocols; a view created and read in one Query is masked by
/// what the Query's text names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_follows_the_views_and_functions_it_creates() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = session_database(pg, key, "mk_session_read");
    let c = locked_client(&gw, key).await;
    let masked = vec![vec![Some(SESSION_MASKED.to_string())]];
    let run = |sql: &'static str| {
        let c = &c;
        async move {
            step(sql, c.batch_execute(sql))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)))
        }
    };
    run("create view s_v1 as select id, api_secret as token_value from creds").await;
    assert_eq!(
        simple_rows(&c, "select token_value from s_v1").await,
        masked
    );
    let rows = step("extended", c.query("select token_value from s_v1", &[]))
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), SESSION_MASKED);
    // In a transaction block (read inside a savepoint, the block goes on).
    run("begin").await;
    run("create view s_v2 as select api_secret as t2 from creds").await;
    assert_eq!(simple_rows(&c, "select t2 from s_v2").await, masked);
    run("commit").await;
    assert_eq!(
        simple_rows(&c, "select count(*) from s_v2").await,
        vec![vec![Some("1".to_string())]]
    );
    // The extended protocol alone, in a transaction block.
    run("begin").await;
    step(
        "create",
        c.execute(
            "create view s_v4 as select api_secret as t4 from creds",
            &[],
        ),
    )
    .await
    .unwrap();
    let rows = step("t4", c.query("select t4 from s_v4", &[]))
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), SESSION_MASKED);
    run("commit").await;
    // A function, called through the extended protocol.
    run("create function s_key(i int) returns text language sql \
         as 'select api_secret from creds where id = i'")
    .await;
    let rows = step("function", c.query("select s_key(1)", &[]))
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), SESSION_MASKED);
    // Created and read in one Query: no statement between them.
    assert_eq!(
        simple_rows(
            &c,
            "create view s_v3 as select api_secret as t3 from creds; select t3 from s_v3"
        )
        .await,
        masked
    );
    // A materialized view (its tag is `SELECT 1`).
    run("create materialized view s_m as select api_secret as mt from creds").await;
    assert_eq!(simple_rows(&c, "select mt from s_m").await, masked);
    // Nothing of the reads reached the client: other columns as they are.
    assert_eq!(
        simple_rows(&c, "select id from s_v1").await,
        vec![vec![Some("1".to_string())]]
    );
    // After an extended-protocol COPY FROM STDIN (whose Sync before the
    // data the server never answers), the session still reads after a
    // change.
    let sink = step("copy", c.copy_in("copy creds from stdin"))
        .await
        .unwrap();
    pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"2\tzz\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let before = ok_reads(&gw, "continued");
    run("create view s_v5 as select id, api_secret as t5 from creds").await;
    assert_eq!(
        simple_rows(&c, "select t5 from s_v5 where id = 1").await,
        masked
    );
    assert_eq!(ok_reads(&gw, "continued"), before + 1.0);
    // A driver's one-write request (Parse, Bind, Describe, Execute, Sync
    // on the unnamed statement and portal) gets the read in front too.
    run("create view s_v6 as select id, api_secret as t6 from creds").await;
    let rows = step(
        "typed",
        c.query_typed("select t6 from s_v6 where id = 1", &[]),
    )
    .await
    .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), SESSION_MASKED);
    assert_eq!(ok_reads(&gw, "continued"), before + 2.0);
    // (Its Describe of the statement comes after the Bind: the portal's
    // rows still get the statement's rules.)
    let rows = step(
        "typed plain",
        c.query_typed("select api_secret from creds where id = 1", &[]),
    )
    .await
    .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), SESSION_MASKED);
    // What a rolled-back block read is read again, whole, after it.
    let wholes = ok_reads(&gw, "whole");
    run("begin").await;
    run("create view s_rb as select id, api_secret as rb from creds").await;
    assert_eq!(
        simple_rows(&c, "select rb from s_rb where id = 1").await,
        masked
    );
    run("rollback").await;
    assert_eq!(
        simple_rows(&c, "select id from s_v1 where id = 1").await,
        vec![vec![Some("1".to_string())]]
    );
    assert_eq!(ok_reads(&gw, "whole"), wholes + 1.0);
    let m = gw.metrics();
    let ok = m.get(
        "sluice_column_catalog_reads_total",
        &[("outcome", "ok"), ("read", "continued")],
    );
    assert!(
        ok >= 4.0,
        "{}",
        m.lines_for("sluice_column_catalog_reads_total")
    );
}

/// A session's own read that the server refuses inside a transaction
/// block does not abort the block (it ran in a savepoint rolled back
/// after it); the refusal is counted and warned like a login's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_session_read_leaves_the_transaction_usable() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "mk_session_refused";
    let gw = session_database(pg, key, db);
    let c = locked_client(&gw, key).await;
    // Readable at login, refused from now on.
    pg.psql_super(db, &["REVOKE SELECT ON pg_catalog.pg_rewrite FROM PUBLIC"])
        .assert_success("revoke");
    c.batch_execute("begin").await.unwrap();
    c.batch_execute("create view r_v as select id, api_secret as tv from creds")
        .await
        .unwrap();
    // The view read was refused: the view's columns match by their own
    // names (as after a refused login read).
    assert_eq!(
        simple_rows(&c, "select id, tv from r_v").await,
        vec![vec![
            Some("1".to_string()),
            Some(SESSION_SECRET.to_string())
        ]]
    );
    assert_eq!(
        simple_rows(&c, "select api_secret from creds").await,
        vec![vec![Some(SESSION_MASKED.to_string())]]
    );
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        simple_rows(&c, "select count(*) from r_v").await,
        vec![vec![Some("1".to_string())]]
    );
    // (The read in the block, and the whole one after it: both refused.)
    assert_view_read_refused(&gw, 2.0);
}

/// A session read after the session's own schema change that the server
/// refuses (`pg_attribute` revoked after login): the session's text
/// columns stay masked whole (fail closed), and the read is tried again a
/// second later, not only at the age limit (here: never), so once the
/// target allows it the columns are as usual again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_read_after_an_own_change_is_tried_again() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "mk_session_refused_retry";
    let gw = session_database_aged(pg, key, db, 0);
    let c = locked_client(&gw, key).await;
    let one = vec![vec![Some("1".to_string())]];
    assert_eq!(simple_rows(&c, "select id::text from creds").await, one);
    pg.psql_super(
        db,
        &["REVOKE SELECT ON pg_catalog.pg_attribute FROM PUBLIC"],
    )
    .assert_success("revoke");
    c.batch_execute("create view f_v as select id, api_secret as fv from creds")
        .await
        .unwrap();
    let masked = vec![vec![Some("*".to_string())]];
    assert_eq!(simple_rows(&c, "select id::text from creds").await, masked);
    pg.psql_super(db, &["GRANT SELECT ON pg_catalog.pg_attribute TO PUBLIC"])
        .assert_success("grant");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        simple_rows(&c, "select id::text from creds").await,
        one,
        "{}",
        gw.log()
    );
    assert_eq!(
        simple_rows(&c, "select fv from f_v").await,
        vec![vec![Some(SESSION_MASKED.to_string())]]
    );
}

/// A view another session creates is followed by a session already open:
/// the statement that first reads it sees a relation newer than the
/// session's read, whose text-like columns take the strongest name rule
/// (fail closed); the next one, at least a second after the last read,
/// reads again first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_follows_a_view_created_elsewhere() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "mk_session_other";
    let gw = session_database(pg, key, db);
    let c = locked_client(&gw, key).await;
    assert_eq!(
        simple_rows(&c, "select api_secret from creds").await,
        vec![vec![Some(SESSION_MASKED.to_string())]]
    );
    pg.psql_super(
        db,
        &[&format!(
            "CREATE VIEW o_v AS SELECT api_secret AS ov FROM creds; \
             GRANT SELECT ON o_v TO {}",
            pg.app_user
        )],
    )
    .assert_success("create view");
    let masked = vec![vec![Some(SESSION_MASKED.to_string())]];
    assert_eq!(simple_rows(&c, "select ov from o_v").await, masked);
    let before = ok_reads(&gw, "continued");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(simple_rows(&c, "select ov from o_v").await, masked);
    assert_eq!(ok_reads(&gw, "continued"), before + 1.0, "{}", gw.log());
}

/// A session's own read goes only between whole frames: a Query whose
/// header arrives in two reads (after a schema change made a read due)
/// reaches the target whole, and the read goes before the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_read_never_splits_a_client_frame() {
    use sluice_tests::wire::query_bytes;
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = session_database(pg, key, "mk_session_split");
    let mut s = locked_wire_session(&gw, key).await;
    let masked = vec![vec![Some(SESSION_MASKED.to_string())]];
    for (k, cut) in [1usize, 3, 5].into_iter().enumerate() {
        rows_ok(
            s.simple_query(&format!(
                "create view w_v{k} as select api_secret as wv from creds"
            ))
            .await,
        );
        let q = query_bytes(&format!("select wv from w_v{k}"));
        s.raw.send(&q[..cut]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.raw.send(&q[cut..]).await.unwrap();
        assert_eq!(rows_ok(s.read_result().await), masked, "cut {cut}");
        assert_eq!(
            rows_ok(s.simple_query(&format!("select wv from w_v{k}")).await),
            masked,
            "cut {cut}"
        );
    }
}

/// Statements behind a schema change of the session's own, before a read
/// can go (the same Query): a view replaced in place keeps its relation,
/// so only the change itself tells that `label` now shows `api_secret`.
/// Until the read, every text-like column takes the strongest name rule;
/// after it, the view's rule, and other columns are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_behind_an_own_schema_change_fail_closed_until_read() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = session_database(pg, key, "mk_session_unread");
    let c = locked_client(&gw, key).await;
    c.batch_execute("create view r_v as select id, id::text as label from creds")
        .await
        .unwrap();
    let one = vec![vec![Some("1".to_string())]];
    assert_eq!(simple_rows(&c, "select label from r_v").await, one);
    let masked = vec![vec![Some(SESSION_MASKED.to_string())]];
    // A view replaced in place, then read in the same Query; a union of
    // its column, and a plain column, too.
    let rows = simple_rows(
        &c,
        "create or replace view r_v as select id, api_secret as label from creds; \
         select label from r_v; \
         select label from r_v union all select 'x'; \
         select id::text from creds",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec![Some(SESSION_MASKED.to_string())],
            vec![Some(SESSION_MASKED.to_string())],
            vec![Some("*".to_string())],
            vec![Some("*".to_string())],
        ]
    );
    // The read went before the next statement.
    assert_eq!(simple_rows(&c, "select label from r_v").await, masked);
    assert_eq!(simple_rows(&c, "select id::text from creds").await, one);
    // (The union's column computes from the view's `label`, which the
    // read now knows shows `api_secret`.)
    assert_eq!(
        simple_rows(&c, "select label from r_v union all select 'x'").await,
        vec![
            vec![Some(SESSION_MASKED.to_string())],
            vec![Some("*".to_string())]
        ]
    );
}

/// The same statement as the one before, pipelined right behind the
/// session's own `CREATE OR REPLACE VIEW` in one write (no read can go
/// between): its description and text are those of the last result, and
/// the plan kept from it must not stand in for the fail-closed one (it
/// returned the secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_plan_does_not_outlive_an_own_schema_change() {
    use sluice_tests::wire::query_bytes;
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = session_database(pg, key, "mk_session_unread_kept");
    let mut s = locked_wire_session(&gw, key).await;
    rows_ok(
        s.simple_query("create view k_v as select id, id::text as label from creds")
            .await,
    );
    // (Sent behind another Query, as the one below is: its text reads
    // the same.)
    let mut b = query_bytes("select 1");
    b.extend(query_bytes("select label from k_v"));
    s.raw.send(&b).await.unwrap();
    rows_ok(s.read_result().await);
    let one = vec![vec![Some("1".to_string())]];
    assert_eq!(rows_ok(s.read_result().await), one);
    let before = (ok_reads(&gw, "continued"), ok_reads(&gw, "whole"));
    let mut b =
        query_bytes("create or replace view k_v as select id, api_secret as label from creds");
    b.extend(query_bytes("select label from k_v"));
    s.raw.send(&b).await.unwrap();
    rows_ok(s.read_result().await);
    let got = rows_ok(s.read_result().await);
    assert_eq!(
        (ok_reads(&gw, "continued"), ok_reads(&gw, "whole")),
        before,
        "no read went between"
    );
    assert_eq!(got, vec![vec![Some(SESSION_MASKED.to_string())]]);
}

/// The rows of a raw session's result, or a panic with its error.
fn rows_ok(
    r: Result<sluice_tests::wire::Rows, sluice_tests::wire::ErrorFields>,
) -> sluice_tests::wire::Rows {
    r.unwrap_or_else(|e| panic!("{}: {}", e.code(), e.message()))
}

/// A `COPY … FROM STDIN` that fails before copying, then a stray Sync that
/// the server answers with a ReadyForQuery of its own: the session's
/// account of what the server owes stays right, so the read due after it
/// waits for the statement still running and the session goes on (it
/// ended with 08P01, "answered out of place", when that Sync went
/// uncounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_sync_after_a_failed_copy_keeps_the_session_in_step() {
    use sluice_tests::wire::{query_bytes, sync_bytes};
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = session_database(pg, key, "mk_session_stray_sync");
    let mut s = locked_wire_session(&gw, key).await;
    let before = ok_reads(&gw, "continued");
    // (The view makes a read due; it is created in the same write, after
    // the last moment a read could go.)
    let mut b = query_bytes("create view m_v as select api_secret as mv from creds");
    b.extend(query_bytes("copy nosuch from stdin"));
    b.extend(sync_bytes());
    b.extend(query_bytes(
        "select mv, pg_sleep(1)::text from m_v union all select 'zz', '' from pg_sleep(0)",
    ));
    s.raw.send(&b).await.unwrap();
    assert!(s.read_result().await.is_ok());
    let copy = s.read_result().await.expect_err("copy of a missing table");
    assert_eq!(copy.code(), "42P01");
    // The stray Sync's.
    assert_eq!(
        rows_ok(s.read_result().await),
        Vec::<Vec<Option<String>>>::new()
    );
    // The SELECT still sleeps: the next Query, with its read due, waits
    // for it. (The SELECT went behind the view's creation, before a read
    // could: its text columns are masked whole, `zz` too.)
    s.raw
        .send(&query_bytes("select mv from m_v"))
        .await
        .unwrap();
    let masked = Some(SESSION_MASKED.to_string());
    assert_eq!(
        rows_ok(s.read_result().await),
        vec![
            vec![masked.clone(), Some(String::new())],
            vec![Some("**".to_string()), Some(String::new())]
        ]
    );
    assert_eq!(rows_ok(s.read_result().await), vec![vec![masked]]);
    assert_eq!(
        rows_ok(s.simple_query("select 1").await),
        vec![vec![Some("1".to_string())]]
    );
    assert_eq!(ok_reads(&gw, "continued"), before + 1.0, "{}", gw.log());
    assert!(!gw.log().contains("answered out of place"), "{}", gw.log());
}

/// A read that falls due inside a transaction block (here: older than the
/// age limit) waits for the block's end: a read would take the block's
/// snapshot, and `SET TRANSACTION` must still work after `BEGIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_due_in_a_transaction_block_waits_for_its_end() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = session_database_aged(pg, key, "mk_session_block", 300);
    let c = locked_client(&gw, key).await;
    let before = ok_reads(&gw, "whole");
    c.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.batch_execute("set transaction isolation level serializable")
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    assert_eq!(
        simple_rows(&c, "select current_setting('transaction_isolation')").await,
        vec![vec![Some("serializable".to_string())]]
    );
    assert_eq!(
        simple_rows(&c, "select api_secret from creds").await,
        vec![vec![Some(SESSION_MASKED.to_string())]]
    );
    c.batch_execute("commit").await.unwrap();
    assert_eq!(ok_reads(&gw, "whole"), before);
    // Outside the block the read goes.
    assert_eq!(
        simple_rows(&c, "select api_secret from creds").await,
        vec![vec![Some(SESSION_MASKED.to_string())]]
    );
    assert_eq!(ok_reads(&gw, "whole"), before + 1.0, "{}", gw.log());
}

/// [`people_masked`] as COPY text (`\\N` for NULL, tabs) or CSV (empty
/// for NULL) lines, of the columns `cols` (indexes).
fn people_copy(cols: &[usize], csv: bool) -> String {
    let mut out = String::new();
    for row in people_masked() {
        let f: Vec<String> = cols
            .iter()
            .map(|&i| match &row[i] {
                Some(v) => v.clone(),
                None if csv => String::new(),
                None => "\\N".to_string(),
            })
            .collect();
        out.push_str(&f.join(if csv { "," } else { "\t" }));
        out.push('\n');
    }
    out
}

/// Column rules apply to `COPY … TO STDOUT` as to a SELECT: before the
/// COPY the gateway has the target describe (never run) the query it runs,
/// so each field gets its stored column's rule, through the table form,
/// a column list, a query with aliases, CSV, several statements in one
/// Query (psql) and the extended protocol (tokio-postgres). A COPY whose
/// columns cannot be described (its table is created in the same Query) has
/// every field masked whole; a COPY that fails gets its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_apply_to_copy_to_stdout() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_copy_rules";
    seed_people(pg, t).await;
    // A generated column, which `COPY table TO` leaves out (known from the
    // catalog read at login, so created before the gateway starts).
    pg.direct()
        .await
        .batch_execute(&format!(
            "drop table if exists {t}_gen; \
             create table {t}_gen (id int, secret_code text, \
               code_len int generated always as (length(secret_code)) stored, note text); \
             insert into {t}_gen (id, secret_code, note) values (1, 'abcd', 'n')"
        ))
        .await
        .unwrap();
    let cfg = pii_config(pg, key);
    let gw = Gateway::start_with(&cfg);
    let c = gw.agent().await;
    let all: Vec<usize> = (0..7).collect();
    let cases = [
        (format!("COPY {t} TO STDOUT"), people_copy(&all, false)),
        (
            format!("COPY public.{t} (id, ssn, email, salary) TO STDOUT WITH (FORMAT csv)"),
            people_copy(&[0, 1, 3, 5], true),
        ),
        (
            format!(
                "COPY (SELECT p.id, p.ssn AS a, p.secret_answer AS b, p.internal_notes AS c, \
                 p.note AS d FROM {t} p ORDER BY p.id) TO STDOUT"
            ),
            people_copy(&[0, 1, 2, 4, 6], false),
        ),
    ];
    for (sql, want) in &cases {
        let got = copy_out(&c, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        assert_eq!(String::from_utf8_lossy(&got), *want, "extended: {sql}");
        let via = psql(&via_url(&gw), &["-c", sql], None);
        via.assert_success("psql COPY through the gateway");
        assert_eq!(via.stdout, *want, "psql: {sql}");
    }
    let sql = format!("COPY {t}_gen TO STDOUT");
    let got = copy_out(&c, &sql).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "1\t****\tn\n", "{sql}");
    // Several statements in one Query, the COPY not first.
    // Several statements in one Query: a COPY that is not the first is not
    // described (statements before it could change what it reads), so its
    // fields are masked whole.
    let sql = format!("SELECT 1 AS one; COPY (SELECT id, ssn FROM {t} ORDER BY id) TO STDOUT");
    let via = psql(&via_url(&gw), &["-At", "-c", &sql], None);
    via.assert_success("psql, two statements");
    assert_eq!(
        via.stdout, "1\n*\t*********\n*\t***********\n*\t\\N\n",
        "{sql}"
    );
    // With `standard_conforming_strings` off (reported by the server),
    // `'\'` does not end a string: the gateway reads the text as the
    // server does, and the COPY that the string hides from a reader that
    // did not know is a later statement, masked whole.
    let sql = format!(
        "SELECT '\\'; COPY (SELECT 1) TO STDOUT; SELECT '; COPY {t} (id, secret_answer) TO STDOUT"
    );
    let via = psql(
        &via_url(&gw),
        &[
            "-At",
            "-c",
            "SET standard_conforming_strings = off",
            "-c",
            &sql,
        ],
        None,
    );
    via.assert_success("psql, standard_conforming_strings off");
    assert!(
        via.stdout.contains("*\t********************\n") && !via.stdout.contains("Rex"),
        "{sql}: {}",
        via.stdout
    );
    // NULL AS the value itself: text format writes the two alike, so the
    // field is masked as a value (it was passed on as a NULL, in clear).
    let sql = format!(
        "COPY (SELECT id, secret_answer FROM {t} WHERE id = 1) TO STDOUT \
         (NULL 'my first pet was Rex')"
    );
    let got = copy_out(&c, &sql).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        "1\t********************\n",
        "{sql}"
    );
    // A mask character that is the delimiter or the CSV quote: the fields
    // masking changes are written anew, escaped or quoted (a raw `*` split
    // the row).
    for (opts, want) in [
        ("(DELIMITER '*')", format!("1*{}\n", "\\*".repeat(20))),
        (
            "(FORMAT csv, QUOTE '*')",
            format!("1,*{}*\n", "**".repeat(20)),
        ),
    ] {
        let sql = format!("COPY (SELECT id, secret_answer FROM {t} WHERE id = 1) TO STDOUT {opts}");
        let got = copy_out(&c, &sql).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want, "{sql}");
    }
    // An `E'…'` string continued after a newline keeps its backslash
    // escapes (`E'x'` then `'\''` is one string, `x'`): read as a plain
    // string, the rest of the COPY's query hid behind a comment and
    // `secret_answer` went out in clear. Also as a SELECT. (Both computed
    // columns take the rule of the ruled name the text mentions.)
    for sql in [
        format!(
            "COPY (SELECT E'x'\n'\\'' AS id, 'y' --') TO STDOUT;\n\
             || secret_answer FROM {t} ORDER BY id) TO STDOUT"
        ),
        format!(
            "SELECT E'x'\n'\\'' AS id, 'y' --' FROM {t};\n|| secret_answer FROM {t} ORDER BY id"
        ),
    ] {
        let via = psql(&via_url(&gw), &["-At", "-c", &sql], None);
        via.assert_success("psql, a continued E string");
        assert!(
            via.stdout.starts_with("**") && !via.stdout.contains("Rex"),
            "{sql}: {}",
            via.stdout
        );
    }
    // The session goes on after COPYs (nothing of the describes reaches
    // the client).
    assert_people(
        &c,
        "after COPY",
        &format!("select id, ssn, secret_answer, email, internal_notes, salary, note from {t} order by id"),
        &people_masked(),
    )
    .await;

    // A COPY that fails gets its own error, in both protocols.
    let bad = format!("COPY (SELECT nope FROM {t}) TO STDOUT");
    let e = copy_out(&c, &bad).await.expect_err("a bad COPY fails");
    assert_eq!(
        e.code(),
        Some(&SqlState::UNDEFINED_COLUMN),
        "{}",
        err_text(&e)
    );
    let e = c.simple_query(&bad).await.expect_err("a bad COPY fails");
    assert_eq!(
        e.code(),
        Some(&SqlState::UNDEFINED_COLUMN),
        "{}",
        err_text(&e)
    );
    assert_eq!(
        simple_rows(&c, "select 2").await,
        vec![vec![Some("2".to_string())]]
    );
    // In a transaction block too (where the COPY itself would only say that
    // the transaction is aborted after the failed describe).
    for extended in [false, true] {
        c.batch_execute("BEGIN").await.unwrap();
        let e = if extended {
            copy_out(&c, &bad).await.expect_err("a bad COPY fails")
        } else {
            c.simple_query(&bad).await.expect_err("a bad COPY fails")
        };
        assert_eq!(
            e.code(),
            Some(&SqlState::UNDEFINED_COLUMN),
            "extended {extended}: {}",
            err_text(&e)
        );
        c.batch_execute("ROLLBACK").await.unwrap();
    }

    // Not describable (the table is created by the same Query): every
    // field masked whole, counted under `column:unresolved_copy`.
    let sql = format!(
        "CREATE TEMP TABLE {t}_tmp AS SELECT id, note FROM {t}; \
         COPY (SELECT * FROM {t}_tmp ORDER BY id) TO STDOUT"
    );
    let via = psql(&via_url(&gw), &["-c", &sql], None);
    via.assert_success("psql, COPY of a table created in the same Query");
    assert_eq!(
        via.stdout, "SELECT 3\n*\t************************\n*\t**********\n*\t\\N\n",
        "{sql}"
    );
    let m = gw.metrics();
    assert_eq!(
        m.get(
            "sluice_masked_values_total",
            &[("rule", "column:unresolved_copy")]
        ),
        15.0,
        "{}",
        m.lines_for("sluice_masked_values_total")
    );
    // `standard_conforming_strings` switched off by an Execute answered
    // (Flush) before the next Parse: PostgreSQL reports the change only at
    // the next ReadyForQuery, so the next text is read both ways (it was
    // read with the old setting: `'a\'` closed, the rest a comment).
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes};
    let mut s = sluice_tests::wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    let mut b = parse_bytes(
        "",
        "select set_config('standard_conforming_strings', 'off', false)",
    );
    b.extend(bind_bytes("", ""));
    b.extend(execute_bytes("", false));
    b.extend([b'H', 0, 0, 0, 4]);
    s.raw.send(&b).await.unwrap();
    while !matches!(s.raw.read_msg().await.tag, b'C' | b'E') {}
    let sql = format!("select 'a\\' -- ', upper(secret_answer) as x from {t} where id = 1 --'\n");
    let mut b = parse_bytes("", &sql);
    b.extend(bind_bytes("", ""));
    b.extend(describe_bytes(b'P', ""));
    b.extend(execute_bytes("", true));
    s.raw.send(&b).await.unwrap();
    let r = format!("{:?}", s.read_result().await);
    assert!(
        !r.contains("REX") && r.contains("********************"),
        "{r}"
    );
    // Statement names alike in their first 63 bytes are one name to the
    // server: the Close of `…2` closes `…1`, whose text the gateway must
    // not keep for the Parse of `…2` that takes the name.
    use sluice_tests::wire::sync_bytes;
    let (x, y) = (
        format!("{}1", "s".repeat(63)),
        format!("{}2", "s".repeat(63)),
    );
    let mut b = parse_bytes(&x, "select 'hello'::text as x");
    b.extend(sync_bytes());
    s.raw.send(&b).await.unwrap();
    while s.raw.read_msg().await.tag != b'Z' {}
    let mut close = vec![b'C'];
    close.extend_from_slice(&((4 + 1 + y.len() + 1) as u32).to_be_bytes());
    close.push(b'S');
    close.extend_from_slice(y.as_bytes());
    close.push(0);
    close.extend(sync_bytes());
    s.raw.send(&close).await.unwrap();
    while s.raw.read_msg().await.tag != b'Z' {}
    let mut b = parse_bytes(
        &y,
        &format!("select secret_answer || '' as x from {t} where id = 1"),
    );
    b.extend(sync_bytes());
    s.raw.send(&b).await.unwrap();
    while s.raw.read_msg().await.tag != b'Z' {}
    let mut b = bind_bytes("", &x);
    b.extend(describe_bytes(b'P', ""));
    b.extend(execute_bytes("", true));
    s.raw.send(&b).await.unwrap();
    let r = format!("{:?}", s.read_result().await);
    assert!(
        !r.contains("Rex") && r.contains("********************"),
        "{r}"
    );
}

/// The statement a computed column comes from is followed where its text
/// is not the Query's own: SQL-level prepared statements (also across the
/// namespace they share with protocol statements, and after a refused
/// PREPARE), cursors, a Query pipelined ahead of a Describe, a
/// `standard_conforming_strings` change pipelined ahead, a Query or Parse
/// split across reads; a text the gateway cannot follow (columns renamed
/// by an alias list) takes the strongest name rule (`internal_notes`'s
/// `null` here). JSON keys extracted by name and `bytea` results count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computed_columns_follow_prepared_statements_cursors_and_pipelines() {
    use sluice_tests::wire::{
        bind_bytes, describe_bytes, execute_bytes, login, parse_bytes, query_bytes, sync_bytes,
    };
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_derived2";
    seed_people(pg, t).await;
    pg.direct()
        .await
        .batch_execute(&format!(
            "drop table if exists {t}_j; create table {t}_j (id int, profile jsonb); \
             insert into {t}_j values (1, '{{\"secret_pin\": \"4242-xyz\", \"name\": \"Ann\"}}')"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&pii_config(pg, key));
    let mut s = login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    const MASKED: &str = "********************";
    let none = Vec::<Vec<Option<String>>>::new;
    let one = |v: Option<&str>| vec![vec![v.map(str::to_string)]];
    let upper = format!("select upper(secret_answer) from {t} where id = 1");
    macro_rules! check {
        ($what:expr, $got:expr, $want:expr) => {
            let got = $got.unwrap_or_else(|e| panic!("{}: {}", $what, e.message()));
            assert_eq!(got, $want, "{}", $what);
        };
    }

    // A cursor declared in one Query, fetched in the next.
    check!("begin", s.simple_query("begin").await, none());
    check!(
        "declare",
        s.simple_query(&format!("declare c1 cursor for {upper}"))
            .await,
        none()
    );
    check!(
        "fetch",
        s.simple_query("fetch all from c1").await,
        one(Some(MASKED))
    );
    check!("commit", s.simple_query("commit").await, none());
    // A PREPARE that the server refuses leaves the first statement.
    check!(
        "prepare",
        s.simple_query(&format!("prepare q1 as {upper}")).await,
        none()
    );
    let refused = s.simple_query("prepare q1 as select 'x'").await;
    assert_eq!(refused.unwrap_err().code(), "42P05");
    check!(
        "execute q1",
        s.simple_query("execute q1").await,
        one(Some(MASKED))
    );
    // A protocol statement run by SQL EXECUTE, and a SQL one by Bind.
    let mut b = parse_bytes("s1", &upper);
    b.extend(sync_bytes());
    s.raw.send(&b).await.unwrap();
    check!("parse s1", s.read_result().await, none());
    check!(
        "execute s1",
        s.simple_query("execute s1").await,
        one(Some(MASKED))
    );
    check!(
        "prepare q2",
        s.simple_query(&format!("prepare q2 as {upper}")).await,
        none()
    );
    let mut b = bind_bytes("", "q2");
    b.extend(describe_bytes(b'P', ""));
    b.extend(execute_bytes("", true));
    s.raw.send(&b).await.unwrap();
    check!("bind q2", s.read_result().await, one(Some(MASKED)));
    // A Query with a portal Describe sent right behind it.
    let mut b = query_bytes(&upper);
    b.extend(describe_bytes(b'P', ""));
    b.extend(sync_bytes());
    s.raw.send(&b).await.unwrap();
    check!(
        "query, then describe",
        s.read_result().await,
        one(Some(MASKED))
    );
    assert_eq!(s.read_result().await.unwrap_err().code(), "34000");
    // standard_conforming_strings switched off by the Query ahead: the
    // next text is read both ways.
    let mut b = query_bytes("set standard_conforming_strings = off");
    b.extend(query_bytes(&format!(
        "select '\\'' || upper(secret_answer) || '' from {t} where id = 1"
    )));
    s.raw.send(&b).await.unwrap();
    check!("set", s.read_result().await, none());
    check!(
        "select after set",
        s.read_result().await,
        one(Some(&format!("*{MASKED}")))
    );
    check!(
        "set on",
        s.simple_query("set standard_conforming_strings = on").await,
        none()
    );
    // A Query or Parse split across reads is read once whole.
    let plain = format!("select upper(note) from {t} where id = 2");
    for (sql, want) in [(&upper, MASKED), (&plain, "CLEAN NOTE")] {
        let q = query_bytes(sql);
        s.raw.send(&q[..19]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.raw.send(&q[19..]).await.unwrap();
        check!("split query", s.read_result().await, one(Some(want)));
        let mut b = parse_bytes("", sql);
        b.extend(bind_bytes("", ""));
        b.extend(describe_bytes(b'P', ""));
        b.extend(execute_bytes("", true));
        // (Cut inside the name's NUL and the text.)
        for cut in [5, 30] {
            s.raw.send(&b[..cut]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.raw.send(&b[cut..]).await.unwrap();
            check!("split parse", s.read_result().await, one(Some(want)));
        }
    }
    // A Query longer than the relay's first read.
    let long = format!(
        "select {} upper(secret_answer) from {t} where id = 1",
        " ".repeat(20_000)
    );
    check!("long query", s.simple_query(&long).await, one(Some(MASKED)));
    // A statement name the gateway cannot read (`U&"…"`) runs an unknown
    // statement: the strongest rule.
    check!(
        "execute U&",
        s.simple_query("execute U&\"\\0071\\0031\"").await,
        one(None)
    );
    // A DEALLOCATE that never ran, then a refused PREPARE: the old text.
    check!(
        "prepare q3",
        s.simple_query(&format!("prepare q3 as {upper}")).await,
        none()
    );
    let failed = s.simple_query("select 1/0; deallocate q3").await;
    assert_eq!(failed.unwrap_err().code(), "22012");
    let refused = s.simple_query("prepare q3 as select 'x'::text").await;
    assert_eq!(refused.unwrap_err().code(), "42P05");
    check!(
        "execute q3",
        s.simple_query("execute q3").await,
        one(Some(MASKED))
    );
    // A protocol statement that EXECUTEs a SQL one runs whatever that is
    // when it is bound: unreadable.
    check!(
        "prepare q4",
        s.simple_query("prepare q4 as select 'x'::text").await,
        none()
    );
    let mut b = parse_bytes("s4", "execute q4");
    b.extend(sync_bytes());
    s.raw.send(&b).await.unwrap();
    check!("parse s4", s.read_result().await, none());
    let redo = format!("deallocate q4; prepare q4 as {upper}");
    check!("redefine q4", s.simple_query(&redo).await, none());
    let mut b = bind_bytes("", "s4");
    b.extend(describe_bytes(b'P', ""));
    b.extend(execute_bytes("", true));
    s.raw.send(&b).await.unwrap();
    check!("bind s4", s.read_result().await, one(None));
    // A Parse answered after a SQL PREPARE of the same name was sent: the
    // name may hold either.
    let mut b = parse_bytes("q5", &format!("select upper(note) from {t} where id = 1"));
    b.extend(sync_bytes());
    b.extend(query_bytes(&format!(
        "deallocate q5; prepare q5 as {upper}"
    )));
    s.raw.send(&b).await.unwrap();
    check!("parse q5", s.read_result().await, none());
    check!("redefine q5", s.read_result().await, none());
    check!(
        "execute q5",
        s.simple_query("execute q5").await,
        one(Some(MASKED))
    );
    // A statement only ever described through a portal, then run again
    // without any Describe (as a client that kept that description may):
    // the plain ruled column is masked by its rule.
    let plain_secret = format!("select secret_answer from {t} where id = 1");
    let mut b = parse_bytes("s6", &plain_secret);
    b.extend(bind_bytes("p6", "s6"));
    b.extend(describe_bytes(b'P', "p6"));
    b.extend(execute_bytes("p6", true));
    s.raw.send(&b).await.unwrap();
    let first = "********************".to_string();
    check!(
        "described portal",
        s.read_result().await,
        vec![vec![Some(first.clone())]]
    );
    let mut b = bind_bytes("", "s6");
    b.extend(execute_bytes("", true));
    s.raw.send(&b).await.unwrap();
    check!(
        "no describe",
        s.read_result().await,
        vec![vec![Some(first)]]
    );
    // A SQL cursor described and executed as a portal.
    check!(
        "begin",
        s.simple_query(&format!("begin; declare c2 cursor for {upper}"))
            .await,
        none()
    );
    let mut b = describe_bytes(b'P', "c2");
    b.extend(execute_bytes("c2", true));
    s.raw.send(&b).await.unwrap();
    check!("portal c2", s.read_result().await, one(Some(MASKED)));
    check!("commit", s.simple_query("commit").await, none());
    // One Query each:
    // - columns renamed by an alias list: the strongest rule;
    // - a key extracted from JSON (named in any of five ways), a
    //   Unicode-escaped name, a bytea;
    // - FROM inside a call; a subquery whose first column is a call is no
    //   alias list; unruled computed columns are untouched.
    let cases = [
        (
            format!("select upper(z) from {t} as p(a, b, z) where a = 1"),
            None,
        ),
        (
            format!("select profile->>'secret_pin' from {t}_j"),
            Some("********"),
        ),
        (
            format!("select profile['secret_pin'] #>> '{{}}' from {t}_j"),
            Some("********"),
        ),
        (
            format!("select profile->>E'secret\\x5fpin' from {t}_j"),
            Some("********"),
        ),
        (
            format!("select jsonb_extract_path_text(profile, 'secret_pin') from {t}_j"),
            Some("********"),
        ),
        (
            format!("select profile#>>'{{\"secret_pin\"}}' from {t}_j"),
            Some("********"),
        ),
        (
            format!("select upper(U&\"secret\\005fanswer\") from {t} where id = 1"),
            Some(MASKED),
        ),
        (
            format!("select convert_to(secret_answer, 'UTF8') from {t} where id = 2"),
            Some("****************"),
        ),
        (
            format!("select trim(both from secret_answer) from {t} where id = 1"),
            Some(MASKED),
        ),
        (
            format!("select upper(x) from (select lower(note) as x from {t} where id = 2) q"),
            Some("CLEAN NOTE"),
        ),
        (
            format!("select upper(note) from {t} where id = 2"),
            Some("CLEAN NOTE"),
        ),
    ];
    for (sql, want) in &cases {
        check!(sql, s.simple_query(sql).await, one(*want));
    }
    // A key or path passed as a parameter (extended protocol): its words
    // count as a literal's.
    let c = sluice_tests::connect(&gw.config("agent1", &key.key, "app"))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let by_param = [
        (
            format!("select profile->>$1 from {t}_j"),
            "secret_pin",
            "********",
        ),
        (format!("select profile->>$1 from {t}_j"), "name", "Ann"),
        (
            format!("select jsonb_extract_path_text(profile, $1) from {t}_j"),
            "secret_pin",
            "********",
        ),
        (
            format!("select profile #>> $1::text::text[] from {t}_j"),
            "{secret_pin}",
            "********",
        ),
    ];
    for (sql, param, want) in &by_param {
        let rows = step(sql, c.query(sql.as_str(), &[param]))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        assert_eq!(rows[0].get::<_, String>(0), *want, "{sql} with {param}");
        // (Parse, Bind, then the statement's Describe: query_typed.)
        let rows = step(sql, c.query_typed(sql.as_str(), &[(param, Type::TEXT)]))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        assert_eq!(
            rows[0].get::<_, String>(0),
            *want,
            "typed {sql} with {param}"
        );
    }
}

/// Columns computed from ruled columns (an expression, a UNION) have no
/// stored column in their RowDescription and a name of their own; they take
/// the strongest rule among the ruled names their statement mentions, when
/// their type is text-like, in both protocols and in COPY. Counts and other
/// non-text results are left alone; a statement that mentions no ruled
/// name keeps its computed columns; one that mentions a ruled name only in
/// its WHERE clause masks its computed text columns too (the documented
/// cost of reading names rather than expressions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_apply_to_computed_columns() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_derived";
    seed_people(pg, t).await;
    pg.direct()
        .await
        .batch_execute(&format!(
            "drop table if exists {t}_notes; create table {t}_notes (note text); \
             insert into {t}_notes values ('n1')"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&pii_config(pg, key));
    let c = gw.agent().await;
    let s = |v: &str| Some(v.to_string());
    let bob = hmac_hex(HASH_KEY, "bob@example.org");
    let cases: Vec<(String, Vec<TextRow>)> = vec![
        (
            format!("select upper(secret_answer) as x from {t} where id = 1"),
            vec![vec![s("********************")]],
        ),
        (
            format!("select ssn || '' from {t} where id = 2"),
            vec![vec![s("*******4321")]],
        ),
        (
            format!("select coalesce(\"EMAIL\", 'none') from (select email as \"EMAIL\" from {t}) q where false union all select coalesce(email, 'none') from {t} where id = 2"),
            vec![vec![s(&bob)]],
        ),
        (
            format!(
                "select ssn from {t} where id = 1 union all \
                 select ssn from {t} where id = 2 order by 1"
            ),
            vec![vec![s("*****6789")], vec![s("*******4321")]],
        ),
        (
            format!("select internal_notes || '!' as n from {t} where id = 1"),
            vec![vec![None]],
        ),
        (
            format!("select upper(x) from (select secret_answer as x from {t}) q where x like 'my%'"),
            vec![vec![s("********************")]],
        ),
        // A whole row holds every column: the strongest of their rules
        // (`internal_notes`'s `null`).
        (format!("select p from {t} p where id = 2"), vec![vec![None]]),
        // … also through attribute notation (`p.concat` is `concat(p)`),
        // and as `TABLE t` in a subquery or CTE (`SELECT * FROM t`).
        (format!("select p.concat as x from {t} p where id = 2"), vec![vec![None]]),
        (format!("select q::text from (table {t}) q where id = 2"), vec![vec![None]]),
        (
            format!("with q as (table {t}) select q::text from q where id = 2"),
            vec![vec![None]],
        ),
        (
            format!("select p./**/concat as x from {t} p where id = 2"),
            vec![vec![None]],
        ),
        (
            format!("select p.record_send as x from {t} p where id = 2"),
            vec![vec![None]],
        ),
        (
            format!("select (select p::text from {t} p where id = 2)"),
            vec![vec![None]],
        ),
        (
            format!("with q as materialized (select * from {t}) select q::text from q where id = 2"),
            vec![vec![None]],
        ),
        (
            format!("select count(ssn), max(salary) + 1 as m from {t}"),
            vec![vec![s("2"), s("120001")]],
        ),
        (
            format!("select upper(note) from {t} where id = 2"),
            vec![vec![s("CLEAN NOTE")]],
        ),
        (
            format!("select upper(note) from {t} where ssn = '987-65-4321'"),
            // (`ssn`'s rule: keep the last four.)
            vec![vec![s("******NOTE")]],
        ),
    ];
    for (sql, want) in &cases {
        assert_rows(&format!("{sql}, simple"), &simple_rows(&c, sql).await, want);
        let rows = step(sql, c.query(sql.as_str(), &[]))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        let got: Vec<TextRow> = rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| match *r.columns()[i].type_() {
                        tokio_postgres::types::Type::INT8 => {
                            r.get::<_, Option<i64>>(i).map(|v| v.to_string())
                        }
                        tokio_postgres::types::Type::INT4 => {
                            r.get::<_, Option<i32>>(i).map(|v| v.to_string())
                        }
                        // (Text, or a whole row's binary form, as bytes.)
                        _ => r
                            .get::<_, Raw>(i)
                            .0
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                    })
                    .collect()
            })
            .collect();
        assert_rows(&format!("{sql}, extended"), &got, want);
    }
    // `LOCK TABLE` in the same Query reads no relation whole, and `TABLE t`
    // reads only `t` whole: an unruled computed column stays as it is.
    // (DDL there masks the Query's statements whole by design: a schema
    // change not read yet.)
    let row = |v: &str| vec![Some(v.to_string())];
    for (sql, want) in [
        (
            format!("select upper(note) from {t} where id = 2 union all table {t}_notes"),
            vec![row("CLEAN NOTE"), row("n1")],
        ),
        (
            format!("table {t}_notes; select upper(note) from {t} where id = 2"),
            vec![row("n1"), row("CLEAN NOTE")],
        ),
        (
            format!(
                "begin; lock table {t} in share mode; select upper(note) from {t} where id = 2; commit"
            ),
            vec![row("CLEAN NOTE")],
        ),
    ] {
        assert_eq!(simple_rows(&c, &sql).await, want, "{sql}");
    }
    // COPY of a query: the describe the gateway runs before it reads the
    // query's text too.
    let sql = format!("copy (select upper(secret_answer), id from {t} where id = 1) to stdout");
    let out = copy_out(&c, &sql).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "********************\t1\n");
    // psql (simple protocol): a statement prepared in SQL in one Query and
    // run in later ones, whose text does not name the column.
    let url = via_url(&gw);
    let prepare = format!("prepare q as select concat('x', secret_answer) from {t} where id = 2");
    let o = psql(
        &url,
        &["-At", "-c", &prepare, "-c", "execute q", "-c", "execute q"],
        None,
    );
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(o.stdout, "PREPARE\n********\n********\n", "psql");
    let m = gw.metrics();
    assert!(
        m.get("sluice_masked_values_total", &[("rule", "column:secret_*")]) >= 4.0,
        "{}",
        m.lines_for("sluice_masked_values_total")
    );
}

/// Column rules of a custom profile: keep_last, mask, hash (keyed: equal
/// values give equal hashes, stable across queries, sessions and gateway
/// processes with the same `hash_key`), null, and rules on non-text columns
/// (applied to the text form, the column shown as text; in binary results
/// too, so a hashed integer key joins across protocols); detectors still
/// run on the other columns; a unique violation on a ruled column masks
/// the whole key value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_keep_last_mask_hash_and_null() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_people";
    seed_people(pg, t).await;
    let cfg = pii_config(pg, key);
    let gw = Gateway::start_with(&cfg);
    let gw2 = Gateway::start_with(&cfg);
    let sql = format!(
        "select id, ssn, secret_answer, email, internal_notes, salary, note from {t} order by id"
    );
    let want = people_masked();
    for (g, name) in [
        (&gw, "gateway 1"),
        (&gw, "gateway 1 again"),
        (&gw2, "gateway 2"),
    ] {
        let c = g.agent().await;
        for round in 0..2 {
            assert_people(&c, &format!("{name}, round {round}"), &sql, &want).await;
        }
    }
    // Equal values, equal hashes: a join on the hashed column still works.
    let c = gw.agent().await;
    let r = simple_rows(
        &c,
        &format!("select email, count(*) from {t} group by email order by 2 desc, 1"),
    )
    .await;
    assert_eq!(
        r[0],
        vec![
            Some(hmac_hex(HASH_KEY, "alice.smith@example.com")),
            Some("2".into())
        ]
    );

    // Rules on an int (hash), an int8 (keep_last) and a timestamptz (null),
    // by both protocols: the client is told `text` for the first two, and
    // a hashed integer gives the same hash in text and binary results.
    let typed = format!(
        "select id as cust_ref, 4111111111111111::int8 + id - 1 as card_int, \
                now() as seen_at, id from {t} order by id"
    );
    let want_typed = |id: i64| {
        vec![
            Some(hmac_hex(HASH_KEY, &id.to_string())),
            Some(format!("************{}", 1110 + id)),
            None,
            Some(id.to_string()),
        ]
    };
    assert_rows(
        "typed rules, simple",
        &simple_rows(&c, &typed).await,
        &(1..=3).map(want_typed).collect::<Vec<_>>(),
    );
    let st = c.prepare(&typed).await.unwrap();
    let types: Vec<_> = st.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        [Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::INT4],
        "types the client is told"
    );
    let rows = c.query(&st, &[]).await.unwrap();
    let got: Vec<TextRow> = rows
        .iter()
        .map(|r| {
            vec![
                r.get(0),
                r.get(1),
                r.get::<_, Option<std::time::SystemTime>>(2)
                    .map(|_| "a time".to_string()),
                Some(r.get::<_, i32>(3).to_string()),
            ]
        })
        .collect();
    assert_rows(
        "typed rules, extended (binary)",
        &got,
        &(1..=3).map(want_typed).collect::<Vec<_>>(),
    );

    // A timestamptz under a rule reads in the session's TimeZone in binary
    // results too, as in text results: the gateway follows the TimeZone the
    // server reports (at startup and after a SET), so a hashed time is the
    // same whichever format the client asked for.
    let times = "select timestamptz '2024-07-01 12:00:00+00' as placed_at, \
                 timestamptz '2024-01-15 12:00:00.25+00' as placed_tail";
    // (The second column keeps its last 6 characters.)
    let zoned = |at: &str, tail: &str| {
        let (masked, kept) = tail.split_at(tail.len() - 6);
        vec![vec![
            Some(hmac_hex(HASH_KEY, at)),
            Some(format!("{}{kept}", "*".repeat(masked.len()))),
        ]]
    };
    let binary = |rows: Vec<Row>| -> Vec<TextRow> {
        rows.iter().map(|r| vec![r.get(0), r.get(1)]).collect()
    };
    c.batch_execute("set TimeZone = 'America/New_York'")
        .await
        .unwrap();
    let want = zoned("2024-07-01 08:00:00-04", "2024-01-15 07:00:00.25-05");
    assert_rows("session zone, simple", &simple_rows(&c, times).await, &want);
    assert_rows(
        "session zone, extended (binary)",
        &binary(c.query(times, &[]).await.unwrap()),
        &want,
    );
    // A zone set at startup, as a POSIX offset (`+05:30` is west of
    // Greenwich there, and in PostgreSQL).
    let mut cfg = gw.agent_config();
    cfg.options("-c TimeZone=+05:30");
    let c2 = connect(&cfg).await.unwrap();
    let want = zoned("2024-07-01 06:30:00-05:30", "2024-01-15 06:30:00.25-05:30");
    assert_rows(
        "startup zone, simple",
        &simple_rows(&c2, times).await,
        &want,
    );
    assert_rows(
        "startup zone, extended (binary)",
        &binary(c2.query(times, &[]).await.unwrap()),
        &want,
    );

    // A unique violation on `ssn` quotes the bare number: masked whole.
    let e = c
        .execute(
            &format!("insert into {t} (id, ssn) values (9, $1)"),
            &[&"123456789"],
        )
        .await
        .expect_err("duplicate ssn accepted");
    assert_eq!(db_code(&e).as_deref(), Some("23505"));
    let detail = e
        .as_db_error()
        .unwrap()
        .detail()
        .unwrap_or_default()
        .to_string();
    assert!(!detail.contains("123456789"), "{detail}");
    assert!(detail.contains("Key (ssn)=(*********)"), "{detail}");

    let m = gw.metrics();
    for rule in [
        "column:ssn",
        "column:email",
        "column:secret_*",
        "column:salary",
        "column:cust_ref",
        "column:card_int",
        "column:seen_at",
    ] {
        assert!(
            m.get("sluice_masked_values_total", &[("rule", rule)]) > 0.0,
            "{rule}: {}",
            m.lines_for("sluice_masked_values_total")
        );
    }
}

/// A group granted `unmasked: true` sees the originals; another identity
/// on the same connection sees them masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_grant_sees_originals_while_others_see_masks() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_unmasked";
    seed(pg, t, &secrets).await;
    let key = ApiKey::shared();
    let auditor = ApiKey::generate();
    let gw = Gateway::start_with(
        &GatewayConfig::standard(pg, key)
            .identity_key("auditor", &auditor.verifier, &["auditors"])
            .grant_unmasked(&["app"], &[], &["auditors"]),
    );
    let agent = gw.agent().await;
    let aud = connect(&gw.config("auditor", &auditor.key, "app"))
        .await
        .unwrap_or_else(|e| panic!("auditor: {}", err_text(&e)));
    let direct = pg.direct().await;
    let sql = format!("select id, kind, value, sentence, n, created from {t} order by id");
    let d = simple_rows(&direct, &sql).await;
    assert_rows("auditor, simple", &simple_rows(&aud, &sql).await, &d);
    assert_rows(
        "agent1, simple",
        &simple_rows(&agent, &sql).await,
        &masked_rows(&d, &secrets),
    );
    let d = query_raw_rows(&direct, &sql).await;
    assert_rows("auditor, extended", &query_raw_rows(&aud, &sql).await, &d);
    assert_rows(
        "agent1, extended",
        &query_raw_rows(&agent, &sql).await,
        &masked_raw_rows(&d, &secrets),
    );
    let copy = format!("copy {t} to stdout csv");
    let d = copy_out(&direct, &copy).await.unwrap();
    assert_bytes("auditor, COPY", &copy_out(&aud, &copy).await.unwrap(), &d);
    assert_bytes(
        "agent1, COPY",
        &copy_out(&agent, &copy).await.unwrap(),
        &masked_bytes(&d, &secrets),
    );
}

/// `masking_profile: none` (and a profile with `enabled: false`) return
/// the originals; a connection without the setting uses the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_profile_none_returns_originals() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_none";
    seed(pg, t, &secrets).await;
    let key = ApiKey::shared();
    let gw = Gateway::start_with(
        &GatewayConfig::new()
            .pg_connection_masked("app", pg, "none")
            .pg_connection_masked("app_off", pg, "off")
            .pg_connection("app_default", pg)
            .masking_profile("off", "enabled: false")
            .identity_key("agent1", &key.verifier, &["bots"])
            .grant(&["app", "app_off", "app_default"], &[], &["bots"]),
    );
    let direct = pg.direct().await;
    let sql = format!("select id, kind, value, sentence, n, created from {t} order by id");
    let copy = format!("copy {t} to stdout csv");
    let (ds, dx, dc) = (
        simple_rows(&direct, &sql).await,
        query_raw_rows(&direct, &sql).await,
        copy_out(&direct, &copy).await.unwrap(),
    );
    for (conn, masked) in [("app", false), ("app_off", false), ("app_default", true)] {
        let c = connect(&gw.config("agent1", &key.key, conn))
            .await
            .unwrap_or_else(|e| panic!("{conn}: {}", err_text(&e)));
        let (ws, wx, wc) = if masked {
            (
                masked_rows(&ds, &secrets),
                masked_raw_rows(&dx, &secrets),
                masked_bytes(&dc, &secrets),
            )
        } else {
            (ds.clone(), dx.clone(), dc.clone())
        };
        assert_rows(
            &format!("{conn}, simple"),
            &simple_rows(&c, &sql).await,
            &ws,
        );
        assert_rows(
            &format!("{conn}, extended"),
            &query_raw_rows(&c, &sql).await,
            &wx,
        );
        assert_bytes(
            &format!("{conn}, COPY"),
            &copy_out(&c, &copy).await.unwrap(),
            &wc,
        );
    }
}

/// `sluice_masked_values_total{rule=…}` counts each masked value once, for
/// rows (simple and extended), COPY output and error texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_metric_counts_by_rule() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_metric";
    seed(pg, t, &secrets).await;
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let mut per_rule: Vec<(&str, f64)> = Vec::new();
    for s in &secrets {
        match per_rule.iter_mut().find(|(r, _)| *r == s.rule) {
            Some((_, n)) => *n += 1.0,
            None => per_rule.push((s.rule, 1.0)),
        }
    }
    let mut problems = Vec::new();
    let mut check = |what: &str, times: f64| {
        let m = gw.metrics();
        for (rule, n) in &per_rule {
            let got = m.get("sluice_masked_values_total", &[("rule", rule)]);
            if got != n * times {
                problems.push(format!(
                    "after {what}: rule {rule}: {got}, expected {}",
                    n * times
                ));
            }
        }
        let total = m.get("sluice_masked_values_total", &[]);
        let all: f64 = per_rule.iter().map(|(_, n)| n * times).sum();
        if total != all {
            problems.push(format!(
                "after {what}: total {total}, expected {all}:\n{}",
                m.lines_for("sluice_masked_values_total")
            ));
        }
    };
    check("nothing", 0.0);
    let q = format!("select value from {t} order by id");
    simple_rows(&via, &q).await;
    check("a simple query", 1.0);
    query_raw_rows(&via, &format!("select sentence from {t} order by id")).await;
    check("an extended query", 2.0);
    copy_out(
        &via,
        &format!("copy (select value from {t} order by id) to stdout"),
    )
    .await
    .unwrap();
    check("COPY TO STDOUT", 3.0);
    // The error text below holds every secret once (read from the table:
    // written in the block's text, their ruled words would have the
    // message masked whole, under the name rule).
    let e = via
        .simple_query(&format!(
            "do $$ declare r text; begin \
             select string_agg(value, ' ; ' order by id) into r from {t}; \
             raise exception '%', r; end $$"
        ))
        .await
        .expect_err("raise");
    assert!(leaks(err_text(&e).as_bytes(), &secrets).is_empty());
    check("an error", 4.0);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Rows larger than the read buffer (8 KiB) and than `max_buffer_bytes`
/// (128 KiB): the frame is held until whole, then masked; secrets at the
/// start, the middle and the end of big cells; many mid-size rows so that
/// frames split across reads at every kind of offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_larger_than_the_read_buffer_are_masked() {
    let pg = Pg::shared();
    let secrets = secrets();
    let card = &secrets[0].value;
    let email = &secrets[3].value;
    let t = "mk_big";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; create table {t} (id int primary key, body text)"
        ))
        .await
        .unwrap();
    let mut bodies: Vec<String> = vec![
        format!("{} card {card}", "x".repeat(200_000)),
        format!("{card} {} {email}", "y".repeat(300_000)),
        format!("{} {card} {}", "z".repeat(500_000), "w".repeat(500_000)),
    ];
    for i in 0..300usize {
        let s = &secrets[i % secrets.len()].value;
        let pad = (i * 37) % 2900;
        bodies.push(format!(
            "{} {s} {}",
            "a".repeat(pad),
            "b".repeat(2900 - pad)
        ));
    }
    let ins = direct
        .prepare(&format!("insert into {t} values ($1, $2)"))
        .await
        .unwrap();
    for (i, b) in bodies.iter().enumerate() {
        direct.execute(&ins, &[&(i as i32), b]).await.unwrap();
    }
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    let sql = format!("select id, body from {t} order by id");
    let want = masked_rows(&simple_rows(&direct, &sql).await, &secrets);
    let got = simple_rows(&via, &sql).await;
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (g[1].as_deref().unwrap(), w[1].as_deref().unwrap());
        assert_bytes(&format!("simple, row {i}"), g.as_bytes(), w.as_bytes());
    }
    let want = masked_raw_rows(&query_raw_rows(&direct, &sql).await, &secrets);
    let got = query_raw_rows(&via, &sql).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_bytes(
            &format!("extended, row {i}"),
            g[1].0.as_deref().unwrap(),
            w[1].0.as_deref().unwrap(),
        );
    }
    let copy = format!("copy (select id, body from {t} order by id) to stdout");
    let d = copy_out(&direct, &copy).await.unwrap();
    assert_bytes(
        "COPY",
        &copy_out(&via, &copy).await.unwrap(),
        &masked_bytes(&d, &secrets),
    );
}

/// The smallest buffers the config allows (1 KiB): nearly every data frame
/// arrives split; all protocols still mask exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_buffers_split_frames_and_still_mask() {
    let pg = Pg::shared();
    let secrets = secrets();
    let t = "mk_tiny";
    seed(pg, t, &secrets).await;
    let gw = Gateway::start_with(
        &GatewayConfig::standard(pg, ApiKey::shared())
            .limit("buffer_bytes", 1024)
            .limit("max_buffer_bytes", 1024),
    );
    let via = gw.agent().await;
    let direct = pg.direct().await;
    // Rows of ~1.5 KiB: wider than the buffer.
    let sql = format!(
        "select id, repeat(kind, 200) as pad, value, sentence, repeat(coalesce(sentence, '-'), 20) as long \
         from {t} order by id"
    );
    for _ in 0..2 {
        assert_rows(
            "simple",
            &simple_rows(&via, &sql).await,
            &masked_rows(&simple_rows(&direct, &sql).await, &secrets),
        );
        assert_rows(
            "extended",
            &query_raw_rows(&via, &sql).await,
            &masked_raw_rows(&query_raw_rows(&direct, &sql).await, &secrets),
        );
        let copy = format!("copy ({sql}) to stdout csv");
        assert_bytes(
            "COPY",
            &copy_out(&via, &copy).await.unwrap(),
            &masked_bytes(&copy_out(&direct, &copy).await.unwrap(), &secrets),
        );
    }
}

// --------------------------------------------------------- control plane

fn profile_doc(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: sluice.dev/v1\nkind: MaskingProfile\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

fn connection_doc(name: &str, pg: &Pg, profile: Option<&str>) -> String {
    let mut d = cp::connection_yaml(name, pg);
    if let Some(p) = profile {
        d.push_str(&format!("  maskingProfile: {p}\n"));
    }
    d
}

fn agent_docs(key: &ApiKey) -> String {
    [
        cp::api_key_yaml("agent1-key", "agent1", &key.verifier, &["bots"]),
        cp::policy_yaml("bots-app", &["app"], &[], &["bots"]),
    ]
    .join("---\n")
}

fn start_node(cp: &ControlPlane, name: &str) -> Gateway {
    cp::node(&[cp.url()], name, NODE, true).unwrap_or_else(|e| panic!("node {name}: {e}"))
}

/// An embedded control plane with `docs` applied (at version `.4`), one
/// node that applied them, and `agent1`'s session through it to
/// connection `app`.
async fn cp_session(key: &ApiKey, docs: &[String]) -> (ControlPlane, Admin, Gateway, Client, i64) {
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin.apply(&docs.join("---\n")).await.version;
    let node = start_node(&cp, "m1");
    admin.wait_applied(1, v1, LIMIT).await;
    let c = connect(&node.config("agent1", &key.key, "app"))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    (cp, admin, node, c, v1)
}

/// Rows of [`seed_cp`]: (id, ssn, nickname, note).
async fn seed_cp(pg: &Pg, t: &str) {
    pg.direct()
        .await
        .batch_execute(&format!(
            "drop table if exists {t}; \
             create table {t} (id int, ssn text, nickname text, note text); \
             insert into {t} values (1, '123456789', 'Sparky', 'card 4111 1111 1111 1111'), \
                                    (2, '555667777', 'Rex', 'clean')"
        ))
        .await
        .unwrap();
}

fn cp_rows(rows: &[[Option<&str>; 4]]) -> Vec<TextRow> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.map(str::to_string)).collect())
        .collect()
}

/// The rows read on `c` with a simple query and with the prepared
/// statement `st` (prepared earlier on the same session).
async fn cp_read(c: &Client, st: &tokio_postgres::Statement, sql: &str) -> [Vec<TextRow>; 2] {
    let simple = simple_rows(c, sql).await;
    let prepared = step("prepared", c.query(st, &[]))
        .await
        .unwrap_or_else(|e| panic!("prepared: {}", err_text(&e)))
        .iter()
        .map(|r| {
            vec![
                Some(r.get::<_, i32>(0).to_string()),
                r.get(1),
                r.get(2),
                r.get(3),
            ]
        })
        .collect();
    [simple, prepared]
}

#[track_caller]
fn assert_cp(what: &str, got: &[Vec<TextRow>; 2], want: &[TextRow]) {
    assert_rows(&format!("{what} (simple query)"), &got[0], want);
    assert_rows(
        &format!("{what} (statement prepared earlier)"),
        &got[1],
        want,
    );
}

/// Through the control plane: a MaskingProfile and a Connection using it;
/// a new version of the profile (one more column rule) and a switch of the
/// Connection's `maskingProfile` apply to the next statement of a session
/// that is already open, prepared statements included (keeping the column
/// types their Describe told the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_profile_changes_apply_to_the_next_statement() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_cp_change";
    seed_cp(pg, t).await;
    let ssn_rule = "columns:\n  - {column: ssn, action: {keep_last: 4}}\n";
    let (_cp, mut admin, node, c, v1) = cp_session(
        key,
        &[
            profile_doc("pii", ssn_rule),
            profile_doc(
                "strict",
                "columns:\n  - {column: 'nick*', action: 'null'}\n",
            ),
            connection_doc("app", pg, Some("pii")),
            agent_docs(key),
        ],
    )
    .await;
    let sql = format!("select id, ssn, nickname, note from {t} order by id");
    let st = c.prepare(&sql).await.unwrap();
    let masked_note = Some("card **** **** **** 1111");
    assert_cp(
        "profile pii v1",
        &cp_read(&c, &st, &sql).await,
        &cp_rows(&[
            [Some("1"), Some("*****6789"), Some("Sparky"), masked_note],
            [Some("2"), Some("*****7777"), Some("Rex"), Some("clean")],
        ]),
    );

    // A new version of the profile adds a rule for `nickname`.
    let v2 = admin
        .apply(&profile_doc(
            "pii",
            &format!("{ssn_rule}  - {{column: nickname, action: mask}}\n"),
        ))
        .await
        .version;
    assert!(v2 > v1);
    admin.wait_applied(1, v2, LIMIT).await;
    assert_cp(
        "profile pii v2 (nickname rule added)",
        &cp_read(&c, &st, &sql).await,
        &cp_rows(&[
            [Some("1"), Some("*****6789"), Some("******"), masked_note],
            [Some("2"), Some("*****7777"), Some("***"), Some("clean")],
        ]),
    );

    // The Connection switches to another profile.
    let v3 = admin
        .apply(&connection_doc("app", pg, Some("strict")))
        .await
        .version;
    admin.wait_applied(1, v3, LIMIT).await;
    assert_cp(
        "connection switched to profile strict",
        &cp_read(&c, &st, &sql).await,
        &cp_rows(&[
            [Some("1"), Some("123456789"), None, masked_note],
            [Some("2"), Some("555667777"), None, Some("clean")],
        ]),
    );

    // … and to no masking at all.
    let v4 = admin
        .apply(&connection_doc("app", pg, Some("none")))
        .await
        .version;
    admin.wait_applied(1, v4, LIMIT).await;
    assert_cp(
        "connection switched to none",
        &cp_read(&c, &st, &sql).await,
        &cp_rows(&[
            [
                Some("1"),
                Some("123456789"),
                Some("Sparky"),
                Some("card 4111 1111 1111 1111"),
            ],
            [Some("2"), Some("555667777"), Some("Rex"), Some("clean")],
        ]),
    );

    // Back to `pii`, now hashing the int `id`. A statement described
    // before keeps the types the client was told: `id` is an int4 to it,
    // which a hash would not parse as, so it gets NULL. Described from now
    // on, `id` is text and holds the hash, by either protocol.
    let id_rule = format!(
        "{ssn_rule}  - {{column: id, action: hash}}\n  - {{column: doc, action: hash}}\nhash_key: '{HASH_KEY}'\n"
    );
    let v5 = admin
        .apply(
            &[
                profile_doc("pii", &id_rule),
                connection_doc("app", pg, Some("pii")),
            ]
            .join("---\n"),
        )
        .await
        .version;
    admin.wait_applied(1, v5, LIMIT).await;
    let ids = |rows: Vec<Row>| -> Vec<Option<String>> {
        rows.iter()
            .map(|r| match r.columns()[0].type_() {
                &Type::INT4 => r.get::<_, Option<i32>>(0).map(|v| v.to_string()),
                _ => r.get(0),
            })
            .collect()
    };
    let hashed = |id: &str| Some(hmac_hex(HASH_KEY, id));
    let old = ids(c.query(&st, &[]).await.unwrap());
    assert_eq!(old, [None, None], "statement prepared before the id rule");
    let st2 = c.prepare(&sql).await.unwrap();
    assert_eq!(st2.columns()[0].type_(), &Type::TEXT);
    assert_eq!(
        ids(c.query(&st2, &[]).await.unwrap()),
        [hashed("1"), hashed("2")]
    );
    let simple: Vec<_> = simple_rows(&c, &sql)
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(simple, [hashed("1"), hashed("2")]);
    // A jsonb column under a rule, described now (as text), run after the
    // rule is gone.
    let jsql = format!("select id, to_jsonb(note) as doc from {t} order by id");
    let st3 = c.prepare(&jsql).await.unwrap();
    assert_eq!(st3.columns()[1].type_(), &Type::TEXT);
    // The rule is dropped: the statement whose `id` the client takes for
    // text gets the number as text, not the bytes of a binary int4.
    let v6 = admin.apply(&profile_doc("pii", ssn_rule)).await.version;
    admin.wait_applied(1, v6, LIMIT).await;
    assert_eq!(
        ids(c.query(&st2, &[]).await.unwrap()),
        [Some("1".to_string()), Some("2".to_string())]
    );
    // The jsonb it takes for text comes as JSON text (not jsonb's binary
    // form), still scanned by the detectors.
    let docs: Vec<Option<String>> = c
        .query(&st3, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    assert_eq!(
        docs,
        [
            masked_note.map(|n| format!("\"{n}\"")),
            Some("\"clean\"".to_string())
        ]
    );
    assert_eq!(
        node.metrics().get("sluice_snapshots_rejected_total", &[]),
        0.0
    );
}

/// A session that started unmasked (`maskingProfile: none`) gets masking
/// from its next statement when the Connection switches to a profile,
/// statements it prepared before the switch included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_switch_from_none_masks_the_open_session() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_cp_from_none";
    seed_cp(pg, t).await;
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin
        .apply(
            &[
                profile_doc(
                    "pii",
                    "columns:\n  - {column: ssn, action: {keep_last: 4}}\n",
                ),
                connection_doc("app", pg, Some("none")),
                agent_docs(key),
            ]
            .join("---\n"),
        )
        .await
        .version;
    let node = start_node(&cp, "m2");
    admin.wait_applied(1, v1, LIMIT).await;
    let c = connect(&node.config("agent1", &key.key, "app"))
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let sql = format!("select id, ssn, nickname, note from {t} order by id");
    let st = c.prepare(&sql).await.unwrap();
    assert_cp(
        "connection with none",
        &cp_read(&c, &st, &sql).await,
        &cp_rows(&[
            [
                Some("1"),
                Some("123456789"),
                Some("Sparky"),
                Some("card 4111 1111 1111 1111"),
            ],
            [Some("2"), Some("555667777"), Some("Rex"), Some("clean")],
        ]),
    );
    let v2 = admin
        .apply(&connection_doc("app", pg, Some("pii")))
        .await
        .version;
    admin.wait_applied(1, v2, LIMIT).await;
    let want = cp_rows(&[
        [
            Some("1"),
            Some("*****6789"),
            Some("Sparky"),
            Some("card **** **** **** 1111"),
        ],
        [Some("2"), Some("*****7777"), Some("Rex"), Some("clean")],
    ]);
    // The prepared statement first: it is the first statement after the switch.
    let prepared: Vec<TextRow> = c
        .query(&st, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            vec![
                Some(r.get::<_, i32>(0).to_string()),
                r.get(1),
                r.get(2),
                r.get(3),
            ]
        })
        .collect();
    let simple = simple_rows(&c, &sql).await;
    let again = cp_read(&c, &st, &sql).await;
    // A statement prepared after the switch.
    let st2 = c.prepare(&sql).await.unwrap();
    let fresh = cp_read(&c, &st2, &sql).await;
    let results = [
        ("simple query after the switch", &simple),
        (
            "statement prepared before the switch, first execution after it",
            &prepared,
        ),
        ("simple query, again", &again[0]),
        ("statement prepared before the switch, again", &again[1]),
        ("statement prepared after the switch", &fresh[1]),
    ];
    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, got)| **got != want)
        .map(|(what, got)| format!("{what}:\n  got  {got:?}\n  want {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A Policy with `unmasked: true` shows originals to its group; turning
/// it off masks that group's open session from its next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_unmasked_policy() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let auditor = ApiKey::generate();
    let t = "mk_cp_unmasked";
    seed_cp(pg, t).await;
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let auditors = |unmasked: bool| {
        format!(
            "{}  unmasked: {unmasked}\n",
            cp::policy_yaml("auditors-app", &["app"], &[], &["auditors"])
        )
    };
    let v1 = admin
        .apply(
            &[
                connection_doc("app", pg, None),
                agent_docs(key),
                cp::api_key_yaml("auditor-key", "auditor", &auditor.verifier, &["auditors"]),
                auditors(true),
            ]
            .join("---\n"),
        )
        .await
        .version;
    let node = start_node(&cp, "m3");
    admin.wait_applied(1, v1, LIMIT).await;
    let agent = connect(&node.config("agent1", &key.key, "app"))
        .await
        .unwrap();
    let aud = connect(&node.config("auditor", &auditor.key, "app"))
        .await
        .unwrap();
    let sql = format!("select id, ssn, nickname, note from {t} order by id");
    let original = cp_rows(&[
        [
            Some("1"),
            Some("123456789"),
            Some("Sparky"),
            Some("card 4111 1111 1111 1111"),
        ],
        [Some("2"), Some("555667777"), Some("Rex"), Some("clean")],
    ]);
    // The default profile: detectors, and keep-last-4 on `ssn` columns.
    let masked = cp_rows(&[
        [
            Some("1"),
            Some("*****6789"),
            Some("Sparky"),
            Some("card **** **** **** 1111"),
        ],
        [Some("2"), Some("*****7777"), Some("Rex"), Some("clean")],
    ]);
    assert_rows("auditor", &simple_rows(&aud, &sql).await, &original);
    assert_rows("agent1", &simple_rows(&agent, &sql).await, &masked);
    let v2 = admin.apply(&auditors(false)).await.version;
    admin.wait_applied(1, v2, LIMIT).await;
    assert_rows(
        "auditor after unmasked: false",
        &simple_rows(&aud, &sql).await,
        &masked,
    );
}

/// An invalid MaskingProfile is refused at apply, naming the field path,
/// by the YAML path (`sluicectl apply`) and by the server itself; so is a
/// Connection naming a profile that does not exist. Nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_refuses_invalid_masking_profiles_naming_the_field() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_cp_invalid";
    seed_cp(pg, t).await;
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let good = profile_doc(
        "pii",
        "columns:\n  - {column: ssn, action: {keep_last: 4}}\n",
    );
    let v1 = admin
        .apply(
            &[
                good,
                connection_doc("app", pg, Some("pii")),
                agent_docs(key),
            ]
            .join("---\n"),
        )
        .await
        .version;
    let node = start_node(&cp, "m4");
    admin.wait_applied(1, v1, LIMIT).await;

    let cases = [
        (
            "columns:\n  - {column: ssn, action: squash}\n",
            "spec.columns[0].action",
        ),
        (
            "columns:\n  - {column: ssn, action: {keep_last: 0}}\n",
            "columns[0].action.keep_last",
        ),
        ("detectors: {e_mail: true}\n", "spec.detectors"),
        ("format: {mask_char: x}\n", "format.mask_char"),
        (
            "custom_regexes:\n  - {name: r, pattern: '('}\n",
            "custom_regexes[0].pattern",
        ),
        ("hash_key: short\n", "hash_key"),
    ];
    let mut problems = Vec::new();
    for (spec, field) in cases {
        let doc = profile_doc("pii", spec);
        // The YAML path, as sluicectl sends it.
        let out = cp.ctl(&["apply", "-f", "-"], Some(doc.as_bytes()));
        if out.success() || !out.stderr.contains(field) {
            problems.push(format!(
                "sluicectl apply of `{spec}`: {} (want a refusal naming {field}): {}{}",
                out.status, out.stdout, out.stderr
            ));
        }
        match admin.try_apply(&doc).await {
            Ok(r) => problems.push(format!("apply of `{spec}` accepted: {r:?}")),
            Err(e) if !e.message().contains(field) => problems.push(format!(
                "apply of `{spec}`: refusal does not name {field}: {}",
                e.message()
            )),
            Err(_) => {}
        }
    }
    // The server itself, given a resource no client checked.
    let raw = |json: &str| proto::Resource {
        api_version: proto::API_VERSION.into(),
        kind: "MaskingProfile".into(),
        name: "pii".into(),
        spec: Some(Spec::MaskingProfile(proto::MaskingProfileSpec {
            json: json.into(),
        })),
        revision: 0,
    };
    for (json, field) in [
        (
            r#"{"columns":[{"column":"ssn","action":"squash"}]}"#,
            "columns[0].action",
        ),
        (
            r#"{"columns":[{"column":"ssn","action":{"keep_last":0}}]}"#,
            "columns[0].action.keep_last",
        ),
    ] {
        match admin.apply_resources(vec![raw(json)]).await {
            Ok(r) => problems.push(format!("server accepted {json}: {r:?}")),
            Err(e) => {
                if e.code() != tonic::Code::InvalidArgument || !e.message().contains(field) {
                    problems.push(format!(
                        "server refusal of {json} does not name {field}: {} {}",
                        e.code(),
                        e.message()
                    ));
                }
            }
        }
    }
    // A Connection naming a profile that does not exist.
    match admin
        .try_apply(&connection_doc("app", pg, Some("ghost")))
        .await
    {
        Ok(r) => problems.push(format!("maskingProfile: ghost accepted: {r:?}")),
        Err(e) if !e.message().contains("spec.maskingProfile") => problems.push(format!(
            "maskingProfile: ghost refused without naming spec.maskingProfile: {}",
            e.message()
        )),
        Err(_) => {}
    }
    // Nothing changed: same version, the node still masks with v1.
    assert_eq!(admin.version().await.snapshot_version, v1);
    let c = connect(&node.config("agent1", &key.key, "app"))
        .await
        .unwrap();
    let r = simple_rows(&c, &format!("select ssn from {t} order by id")).await;
    assert_eq!(
        r,
        vec![
            vec![Some("*****6789".into())],
            vec![Some("*****7777".into())]
        ]
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Client encodings whose multi-byte characters contain ASCII bytes (SJIS,
/// BIG5, GBK…) cannot be masked reliably: with masking on, a session asking
/// for one at startup is refused, and a session switching to one with SET
/// is ended before any result in that encoding goes out (0A000). A session
/// that sees results unmasked may use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ascii_unsafe_client_encodings_are_refused_while_masking() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let auditor = ApiKey::generate();
    let gw = Gateway::start_with(
        &GatewayConfig::standard(pg, key)
            .identity_key("auditor", &auditor.verifier, &["auditors"])
            .grant_unmasked(&["app"], &[], &["auditors"]),
    );
    // At startup (psql honours PGCLIENTENCODING).
    let mut c = std::process::Command::new("psql");
    c.env("PGCLIENTENCODING", "SJIS")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PSQLRC", "/dev/null")
        .args(["-X", "-c", "select 1", &via_url(&gw)]);
    let out = process::run(&mut c, None, Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "psql with SJIS was let in: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("client_encoding SJIS cannot be used while results are masked"),
        "{}",
        out.stderr
    );
    // UTF8 and LATIN1 are fine.
    let mut c = std::process::Command::new("psql");
    c.env("PGCLIENTENCODING", "LATIN1")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PSQLRC", "/dev/null")
        .args(["-X", "-At", "-c", "select 'ann@example.com'", &via_url(&gw)]);
    let out = process::run(&mut c, None, Duration::from_secs(60));
    out.assert_success("psql with LATIN1");
    assert!(!out.stdout.contains("ann@example.com"), "{}", out.stdout);

    // Mid-session: SET client_encoding ends the session at once.
    let agent = gw.agent().await;
    agent.simple_query("select 1").await.unwrap();
    let e = agent
        .simple_query("set client_encoding to 'BIG5'; select 'ann@example.com'")
        .await
        .expect_err("session went on in BIG5");
    assert_eq!(db_code(&e).as_deref(), Some("0A000"), "{}", err_text(&e));
    assert!(
        err_text(&e).contains("client_encoding BIG5"),
        "{}",
        err_text(&e)
    );
    assert!(
        agent.simple_query("select 1").await.is_err(),
        "session still open"
    );
    // The other sessions are not affected; an unmasked session may switch.
    let aud = connect(&gw.config("auditor", &auditor.key, "app"))
        .await
        .unwrap_or_else(|e| panic!("auditor: {}", err_text(&e)));
    aud.simple_query("set client_encoding to 'SJIS'")
        .await
        .unwrap();
    aud.simple_query("set client_encoding to 'UTF8'")
        .await
        .unwrap();
    let rows = simple_rows(&aud, "select 'ann@example.com'").await;
    assert!(format!("{rows:?}").contains("ann@example.com"));
    let other = gw.agent().await;
    other.simple_query("select 1").await.unwrap();
}

/// PostgreSQL 14 and later report a new client encoding only at the end of
/// the Query, so the rows of a statement after `SET client_encoding` in
/// the same Query reach the gateway in that encoding before it knows: a
/// character whose last byte is a letter (SJIS `カ`, BIG5 `乙`) or a digit
/// (GB18030 `😀`) right before a card does not hide it there. The session
/// is then ended as before (0A000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_before_an_unannounced_encoding_switch_are_masked() {
    use sluice_tests::wire::query_bytes;
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let card = "4111111111111111";
    // (Made before the gateway starts, so that its catalog read knows it:
    // a newer table's columns take the strongest name rule.)
    let t = "mk_enc_rows";
    pg.direct()
        .await
        .batch_execute(&format!(
            "drop table if exists {t}; create table {t} (id int, note text); \
             insert into {t} values (1, 'カ{card} ok'), (2, 'password=aЬhunter2 end')"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, key));
    for (enc, ch) in [("SJIS", "カ"), ("BIG5", "乙"), ("GB18030", "😀")] {
        let mut s = sluice_tests::wire::login(gw.port, "agent1", "app", &key.key)
            .await
            .unwrap_or_else(|e| panic!("login: {e:?}"));
        let sql =
            format!("set client_encoding to '{enc}'; select '{ch}' || '{card}' || ' ok' as v");
        s.raw.send(&query_bytes(&sql)).await.unwrap();
        let mut msgs = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), s.raw.read_msg())
                .await
                .unwrap_or_else(|_| panic!("{enc}: no answer after {msgs:?}"));
            let end = matches!(m.tag, b'E' | b'Z');
            msgs.push(m);
            if end {
                break;
            }
        }
        let rows: Vec<String> = msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        assert_eq!(rows.len(), 1, "{enc}: {msgs:?}");
        assert!(
            !rows[0].contains(card) && rows[0].contains("************1111 ok"),
            "{enc}: {rows:?}"
        );
        let e = msgs.last().unwrap();
        assert_eq!(e.tag, b'E', "{enc}: {msgs:?}");
        assert!(
            String::from_utf8_lossy(&e.body).contains(&format!("client_encoding {enc}")),
            "{enc}: {}",
            String::from_utf8_lossy(&e.body)
        );
    }
    // A switch undone before the Query ends is never reported (a local
    // setting, a rolled-back SET): the session goes on, and only the
    // scan protects the rows sent meanwhile. SJIS `Ь` (84 5D) would end a
    // named value early. (The values come from a table: a ruled word in
    // the statement would mask its computed columns whole.)
    let mut s = sluice_tests::wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    for sql in [
        format!(
            "select set_config('client_encoding', 'SJIS', true) as e, note from {t} order by id"
        ),
        format!(
            "begin; set local client_encoding to 'SJIS'; select note from {t} order by id; commit"
        ),
    ] {
        s.raw.send(&query_bytes(&sql)).await.unwrap();
        let msgs = wire_answer(&mut s).await;
        let rows: Vec<String> = msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        assert_eq!(rows.len(), 2, "{sql}: {msgs:?}");
        assert!(
            !rows[0].contains(card) && rows[0].contains("************1111 ok"),
            "{sql}: {rows:?}"
        );
        assert!(!rows[1].contains("hunter2"), "{sql}: {rows:?}");
        assert!(!msgs.iter().any(|m| m.tag == b'E'), "{sql}: {msgs:?}");
    }
}

/// COPY TO with custom delimiters and quotes: fields are split where
/// PostgreSQL split them, so a card between two numbers joined by the
/// delimiter is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_with_custom_delimiters_masks_every_field() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, key));
    let c = gw.agent().await;
    let card = "4111111111111111";
    for opts in [
        "(delimiter '-')",
        "with delimiter as '-'",
        "(format csv, delimiter '-', quote '''')",
        "(format csv, delimiter ' ')",
    ] {
        let sql = format!("copy (select 1234, '{card}', 5678) to stdout {opts}");
        let out = copy_out(&c, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains(card), "{sql}: {text}");
        // The other fields and the delimiters are untouched.
        assert!(
            text.starts_with("1234") && text.trim_end().ends_with("5678"),
            "{sql}: {text}"
        );
    }
    // Split at the wrong byte, four separate 4-digit fields joined by the
    // delimiter read as one card number and were masked; split where
    // PostgreSQL split them, they are left alone.
    for opts in ["(delimiter ' ')", "(format csv, delimiter ' ')"] {
        let sql = format!("copy (select 4111, 1111, 1111, 1111) to stdout {opts}");
        let out = copy_out(&c, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "4111 1111 1111 1111\n",
            "{sql}"
        );
    }
    // The mask character as the delimiter: a masked value is written
    // anew with its `*`s escaped, so the row keeps its two fields.
    let sql = "copy (select 1, 'mail alice.smith@example.com now') to stdout (delimiter '*')";
    let out = copy_out(&c, sql).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("alice.smith"), "{text}");
    let b = text.as_bytes();
    let fields = (0..b.len())
        .filter(|&i| b[i] == b'*' && (i == 0 || b[i - 1] != b'\\'))
        .count();
    assert!(text.starts_with("1*mail ") && fields == 1, "{text}");
    // … in the HEADER row too (a column name the detectors mask).
    let sql = "copy (select 1 as \"alice.smith@example.com\", 2 as b) to stdout \
               (format csv, header, delimiter '*')";
    let out = copy_out(&c, sql).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with('"') && header.ends_with("\"*b") && !header.contains("alice"),
        "{text}"
    );
    // A value masked into the NULL string (`NULL '**'`) is written so that
    // it still reads as a value (it loaded as NULL).
    for (opts, want) in [
        ("(format csv, null '**')", "\"**\",2\n"),
        ("(null '**')", "\\**\t2\n"),
    ] {
        let sql = format!("copy (select 'ab'::text as secret_b, 2) to stdout {opts}");
        let out = copy_out(&c, &sql).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), want, "{sql}");
    }
    // PostgreSQL writes `\` before each delimiter character in the data,
    // and the client picks the delimiter: a token cut by one went out in
    // clear (`ghp\_…`, `Bearer\ …`, a URL's password before `\@`).
    let ghp = "ghp_Xq7Lm2Pz9Rt4Vw8Ny3Kb6Hd1Fs5Gj0Ce2UaQ";
    let bearer = "abcDEF123456ghiJKL7890mnopQR";
    for (delimiter, value, secret) in [
        ('_', format!("ci {ghp}"), &ghp[4..]),
        ('Q', format!("ci {ghp}"), &ghp[4..39]),
        (' ', format!("Authorization: Bearer {bearer}"), bearer),
        (
            '@',
            "postgres://app:s3cretPass@db/x".to_string(),
            "s3cretPass",
        ),
    ] {
        let sql = format!("copy (select 1, '{value}') to stdout (delimiter '{delimiter}')");
        let out = copy_out(&c, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e)));
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains(secret), "{sql}: {text}");
        // Still two fields: one delimiter without a `\` before it (a
        // masked escaped character is mask characters over both bytes).
        let b = text.as_bytes();
        let fields = (0..b.len())
            .filter(|&i| b[i] == delimiter as u8 && (i == 0 || b[i - 1] != b'\\'))
            .count();
        assert!(text.starts_with(&format!("1{delimiter}")), "{sql}: {text}");
        assert_eq!(fields, 1, "{sql}: {text}");
    }
}

/// The frames of one answer, up to its ReadyForQuery.
async fn wire_answer(s: &mut sluice_tests::wire::Session) -> Vec<sluice_tests::wire::Msg> {
    let mut out = Vec::new();
    loop {
        let m = s.raw.read_msg().await;
        let done = m.tag == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

/// Data reaches the client in more than rows: a notification's payload
/// and channel (a burst of large ones, split across the gateway's reads),
/// a setting the session set from data (ParameterStatus), a FunctionCall's
/// result (psql's `\lo_export` reads large objects so, through `loread`;
/// another function's result is NULL under a name rule), a column name,
/// and the name fields of an error that `RAISE … USING` filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_settings_function_results_and_error_names_are_masked() {
    use sluice_tests::wire::query_bytes;
    let pg = Pg::shared();
    let card = "4111111111111111";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "create or replace function mk_fc_card() returns text language sql \
             as $$ select '{card}'::text $$"
        ))
        .await
        .unwrap();
    let oid: u32 = direct
        .query_one("select 'mk_fc_card'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let mut s = sluice_tests::wire::login(gw.port, "agent1", "app", &ApiKey::shared().key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    let leaked = |msgs: &[sluice_tests::wire::Msg]| -> Vec<String> {
        msgs.iter()
            .filter(|m| String::from_utf8_lossy(&m.body).contains(card))
            .map(|m| format!("{}: {}", m.tag_char(), String::from_utf8_lossy(&m.body)))
            .collect()
    };
    // 40 notifications of ~7 KB each, in one transaction: delivered
    // together at its commit, many of them across read boundaries.
    let note = format!("paid with {card}, ").repeat(250);
    let sql = format!(
        "listen mk_big; listen \"{card}\"; begin; \
         select pg_notify('mk_big', i || '{note}') from generate_series(1, 40) i; \
         notify \"{card}\", 'x'; commit"
    );
    s.raw.send(&query_bytes(&sql)).await.unwrap();
    let mut msgs = wire_answer(&mut s).await;
    let notes = msgs.iter().filter(|m| m.tag == b'A').count();
    // (The commit's notifications may follow its ReadyForQuery.)
    while msgs.iter().filter(|m| m.tag == b'A').count() < 41 {
        let m = tokio::time::timeout(Duration::from_secs(10), s.raw.read_msg())
            .await
            .unwrap_or_else(|_| panic!("{notes} notifications, then none"));
        msgs.push(m);
    }
    assert_eq!(leaked(&msgs), Vec::<String>::new());
    let masked = msgs
        .iter()
        .filter(|m| m.tag == b'A' && String::from_utf8_lossy(&m.body).contains("************1111"))
        .count();
    assert_eq!(masked, 41);

    // A column named by data (dynamic SQL can make one).
    s.raw
        .send(&query_bytes(&format!("select 1 as \"{card}\"")))
        .await
        .unwrap();
    let msgs = wire_answer(&mut s).await;
    assert!(msgs
        .iter()
        .any(|m| m.tag == b'T' && String::from_utf8_lossy(&m.body).contains("************1111")));
    assert_eq!(leaked(&msgs), Vec::<String>::new());

    let sql = format!("select set_config('application_name', '{card}', false)");
    s.raw.send(&query_bytes(&sql)).await.unwrap();
    let msgs = wire_answer(&mut s).await;
    assert!(msgs.iter().any(|m| m.tag == b'S'
        && String::from_utf8_lossy(&m.body).contains("application_name\0************1111")));
    assert_eq!(leaked(&msgs), Vec::<String>::new());

    // FunctionCall: oid, no argument formats, text arguments, a result
    // in `format`.
    let call = |oid: u32, args: &[&[u8]], format: i16| {
        let mut b = oid.to_be_bytes().to_vec();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(args.len() as i16).to_be_bytes());
        for a in args {
            b.extend_from_slice(&(a.len() as i32).to_be_bytes());
            b.extend_from_slice(a);
        }
        b.extend_from_slice(&format.to_be_bytes());
        let mut f = vec![b'F'];
        f.extend_from_slice(&((b.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(&b);
        f
    };
    let value = async |s: &mut sluice_tests::wire::Session, f: Vec<u8>| {
        s.raw.send(&f).await.unwrap();
        let msgs = wire_answer(s).await;
        let v = msgs
            .iter()
            .find(|m| m.tag == b'V')
            .expect("a FunctionCallResponse");
        (v.body[..4] != [0xff; 4]).then(|| v.body[4..].to_vec())
    };
    assert_eq!(value(&mut s, call(oid, &[], 0)).await, None);
    s.raw.send(&query_bytes("begin")).await.unwrap();
    wire_answer(&mut s).await;
    let sql = format!("select lo_from_bytea(0, convert_to('{card}', 'UTF8'))");
    s.raw.send(&query_bytes(&sql)).await.unwrap();
    let lo = wire_answer(&mut s).await;
    let lo = lo.iter().find(|m| m.tag == b'D').expect("a large object");
    // (lo_open with INV_READ, then loread of its descriptor, binary.)
    let fd = value(&mut s, call(952, &[&lo.body[6..], b"262144"], 0)).await;
    let data = value(&mut s, call(954, &[&fd.unwrap(), b"100"], 1)).await;
    assert_eq!(data.as_deref(), Some(&b"************1111"[..]));
    s.raw.send(&query_bytes("rollback")).await.unwrap();
    wire_answer(&mut s).await;

    let sql = format!(
        "do $$ begin raise exception 'boom' using column = '{card}', table = '{card}', \
         schema = '{card}', datatype = '{card}', constraint = '{card}'; end $$"
    );
    s.raw.send(&query_bytes(&sql)).await.unwrap();
    let msgs = wire_answer(&mut s).await;
    let e = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .expect("an ErrorResponse");
    assert_eq!(
        String::from_utf8_lossy(&e.body)
            .matches("************1111")
            .count(),
        5,
        "{}",
        String::from_utf8_lossy(&e.body)
    );
    assert_eq!(leaked(&msgs), Vec::<String>::new());
}

/// The ParameterStatus messages of the login reach the client before any
/// statement: a setting defaulted from data (`ALTER DATABASE … SET
/// application_name`, a role's default) comes masked there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_settings_are_masked() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let db = "mk_login_settings";
    let card = "4111111111111111";
    locked_database(pg, db, &[]);
    pg.psql_super(
        "postgres",
        &[&format!(
            "ALTER DATABASE {db} SET application_name = '{card}'"
        )],
    )
    .assert_success("database default");
    let gw = locked_gateway(pg, key, db);
    let s = locked_wire_session(&gw, key).await;
    let app = s.params.iter().find(|(k, _)| k == "application_name");
    assert_eq!(
        app.map(|(_, v)| v.as_str()),
        Some("************1111"),
        "{:?}",
        s.params
    );
    assert!(
        gw.metrics()
            .get("sluice_masked_values_total", &[("rule", "payment_card")])
            >= 1.0
    );
}

/// Built-in functions that run a query given as text (the XML export
/// functions, `ts_stat`) read columns the statement never names: their
/// text-like results take the profile's strongest name rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_run_a_query_given_as_text_are_masked() {
    let pg = Pg::shared();
    let t = "mk_runs_text";
    let secret = "zq81-hunter2-xyz";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; create table {t} (id int, api_secret text); \
             insert into {t} values (1, '{secret}')"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    for sql in [
        format!("select query_to_xml('select * from {t}', true, false, '')"),
        format!("select table_to_xml('{t}', true, false, '')::text"),
        format!(
            "select unnest(xpath('//x/text()', query_to_xml('select api_sec' || 'ret as x from {t}', \
             true, false, '')))::text"
        ),
        format!("select word from ts_stat('select to_tsvector(api_secret) from {t}')"),
    ] {
        // (Sanity: directly, the value is there.)
        let direct_rows = simple_rows(&direct, &sql).await;
        assert!(format!("{direct_rows:?}").contains("hunter2"), "{sql}: {direct_rows:?}");
        let rows = simple_rows(&via, &sql).await;
        assert!(!format!("{rows:?}").contains("hunter2"), "{sql}: {rows:?}");
        // The extended protocol, as text.
        let wrapped = format!("select x::text from ({sql}) q(x)");
        let rows: Vec<String> = via
            .query(wrapped.as_str(), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!rows.is_empty() && !format!("{rows:?}").contains("hunter2"), "{sql}: {rows:?}");
    }
}

/// Errors and notices quote values that no detector knows: a cast error
/// quotes the ruled value it could not read, a constraint violation lists
/// the whole failing row, `RAISE` prints what the block read. Statements
/// that name no ruled column keep their messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_notices_do_not_quote_ruled_values() {
    let pg = Pg::shared();
    let t = "mk_err_ruled";
    let secret = "zq81-hunter2-xyz";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; \
             create table {t} (id int, api_secret text unique, note text not null, n int check (n > 0)); \
             insert into {t} values (1, '{secret}', 'x', 1)"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let (via, mut notices) = connect_with_messages(&gw.agent_config()).await.unwrap();
    for sql in [
        format!("select api_secret::int from {t}"),
        format!("select 1 from {t} where (select api_secret from {t} limit 1)::date > now()"),
        format!("update {t} set note = null"),
        format!("update {t} set n = 0"),
        format!("select ('\"' || api_secret)::int from {t}"),
        format!("insert into {t} select 2, api_secret, 'y', 1 from {t}"),
        format!("do $$ begin assert false, (select api_secret from {t} limit 1); end $$"),
        format!(
            "do $$ declare r text; begin select api_secret into r from {t} where id = 1; \
             raise exception 'v=%', r using detail = 'd=' || r, hint = 'h=' || r; end $$"
        ),
    ] {
        let err = via.simple_query(&sql).await.expect_err(&sql);
        let text = format!("{:?}", err.as_db_error().expect("a server error"));
        assert!(!text.contains("hunter2"), "{sql}: {text}");
    }
    via.simple_query(&format!(
        "do $$ declare r text; begin select api_secret into r from {t} where id = 1; \
         raise notice 'v=%', r; end $$"
    ))
    .await
    .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match notices.recv().await {
                Some(AsyncMessage::Notice(n)) => return n,
                Some(_) => continue,
                None => panic!("no notice"),
            }
        }
    })
    .await
    .expect("a notice");
    assert!(
        note.message().starts_with("***") && !note.message().contains("hunter2"),
        "{note:?}"
    );
    // Unruled statements keep their messages.
    let err = via
        .simple_query(&format!("select id from {t} where note = 'x' and 1/0 = 1"))
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().message(), "division by zero");
    let err = via.simple_query("select 'abc'::int").await.unwrap_err();
    assert!(err_text(&err).contains("\"abc\""), "{}", err_text(&err));
    // The extended protocol without a Describe (Parse, Bind, Execute).
    use sluice_tests::wire::{bind_bytes, execute_bytes, parse_bytes};
    let mut s = sluice_tests::wire::login(gw.port, "agent1", "app", &ApiKey::shared().key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    let mut req = parse_bytes("", &format!("select api_secret::int from {t}"));
    req.extend(bind_bytes("", ""));
    req.extend(execute_bytes("", true));
    s.raw.send(&req).await.unwrap();
    let msgs = wire_answer(&mut s).await;
    let e = msgs.iter().find(|m| m.tag == b'E').expect("an error");
    let text = String::from_utf8_lossy(&e.body);
    assert!(
        text.contains("integer: \"****") && !text.contains("hunter2"),
        "{text}"
    );
}

/// Messages that echo a value without double quotes, for statements that
/// name a ruled column: the context of a JSON error, the detail of an XML
/// one (libxml prints the input line), a `Key (…)=(…)` detail of a column
/// no rule names, PL/pgSQL's `print_strict_params` detail, and messages
/// that end with a name parsed from the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_echo_ruled_values_unquoted_are_masked() {
    let pg = Pg::shared();
    let t = "mk_err_unq";
    let secret = "zq81_hunter2_xyz";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}, {t}_k; \
             create table {t} (id int, api_secret text); \
             insert into {t} values (1, '{secret}'); \
             create table {t}_k (name text primary key); \
             insert into {t}_k values ('{secret}'); \
             create or replace function {t}_f(t text) returns int language plpgsql as $$ \
             #print_strict_params on\n declare r int; begin \
             select id into strict r from {t} where api_secret = t and id > 5; return r; end $$"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let via = gw.agent().await;
    for sql in [
        format!("select api_secret::json from {t}"),
        format!("select ('{{\"a\": ' || api_secret || '}}')::jsonb from {t}"),
        format!("select xmlparse(document api_secret) from {t}"),
        format!("select api_secret::regoper from {t}"),
        format!("select ('a.b.c.' || api_secret)::regclass from {t}"),
        format!("select ('a.b.c.' || api_secret)::regtype from {t}"),
        format!("insert into {t}_k select api_secret from {t}"),
        format!("select {t}_f(api_secret) from {t}"),
        // SQL run from text names what it read, unquoted.
        format!("select query_to_xml('select ' || api_secret || '()', true, false, '') from {t}"),
        format!(
            "select query_to_xml('select t.' || api_secret || ' from {t} t', true, false, '') \
             from {t}"
        ),
    ] {
        // (Sanity: directly, the error has the value.)
        let e = direct.simple_query(&sql).await.expect_err(&sql);
        let text = format!("{:?}", e.as_db_error().expect("a server error"));
        assert!(text.contains("hunter2"), "{sql}: {text}");
        let e = via.simple_query(&sql).await.expect_err(&sql);
        let text = format!("{:?}", e.as_db_error().expect("a server error"));
        assert!(!text.contains("hunter2"), "{sql}: {text}");
    }
    // A type error keeps its operator (no value in it).
    let e = via
        .simple_query(&format!("select 1 from {t} where api_secret = 1"))
        .await
        .unwrap_err();
    assert!(
        err_text(&e).contains("operator does not exist: text = integer"),
        "{}",
        err_text(&e)
    );
    // Statements that name no ruled column keep these messages.
    let e = via.simple_query("select 'abc'::json").await.unwrap_err();
    assert!(
        format!("{:?}", e.as_db_error().unwrap()).contains("JSON data, line 1: abc"),
        "{}",
        err_text(&e)
    );
}

/// A new column rule reaches aliases once the session's catalog read is
/// for it; until then (an open transaction defers the read) every
/// text-like column takes the strongest name rule, so an alias of the
/// newly ruled column is not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rule_is_not_escaped_by_an_alias_before_the_catalog_is_read() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_cp_alias";
    seed_cp(pg, t).await;
    let ssn_rule = "columns:\n  - {column: ssn, action: {keep_last: 4}}\n";
    let (_cp, mut admin, _node, c, _) = cp_session(
        key,
        &[
            profile_doc("pii", ssn_rule),
            connection_doc("app", pg, Some("pii")),
            agent_docs(key),
        ],
    )
    .await;
    let sql = format!("select nickname as n, nickname, ssn as s from {t} order by id");
    c.batch_execute("begin").await.unwrap();
    assert_eq!(
        simple_rows(&c, &sql).await[0],
        vec![
            Some("Sparky".into()),
            Some("Sparky".into()),
            Some("*****6789".into())
        ]
    );
    let v2 = admin
        .apply(&profile_doc(
            "pii",
            &format!("{ssn_rule}  - {{column: nickname, action: mask}}\n"),
        ))
        .await
        .version;
    admin.wait_applied(1, v2, LIMIT).await;
    // In the transaction (no read yet): the alias too.
    let rows = simple_rows(&c, &sql).await;
    assert_eq!(
        rows[0][..2],
        [Some("******".into()), Some("******".into())],
        "{rows:?}"
    );
    c.batch_execute("commit").await.unwrap();
    // After it, the read for the new rules: aliases as the rules say.
    let deadline = Instant::now() + LIMIT;
    loop {
        let rows = simple_rows(&c, &sql).await;
        if rows[0]
            == [
                Some("******".into()),
                Some("******".into()),
                Some("*****6789".into()),
            ]
        {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Card numbers kept in number columns (`numeric(16)`, `bigint`) or cast
/// to one (`pan::bigint`) are masked too, in text and binary results: the
/// masked digits become `0`, so the value stays a number its client can
/// read. Ids of other lengths are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_in_number_columns_are_masked() {
    let pg = Pg::shared();
    let t = "mk_num_cards";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; \
             create table {t} (id bigint, pan numeric(16), pan8 bigint, pan_text text); \
             insert into {t} values (4111111111111111003, 4111111111111111, 5555555555554444, \
             '4111111111111111')"
        ))
        .await
        .unwrap();
    let gw = Gateway::start_with(&GatewayConfig::standard(pg, ApiKey::shared()));
    let c = gw.agent().await;
    let sql = format!("select id, pan, pan8, pan_text::bigint as cast from {t}");
    let rows = simple_rows(&c, &sql).await;
    assert_eq!(
        rows[0],
        vec![
            Some("4111111111111111003".into()),
            Some("0000000000001111".into()),
            Some("0000000000004444".into()),
            Some("0000000000001111".into()),
        ]
    );
    // Binary (tokio-postgres reads results in binary).
    let sql = format!("select id, pan8, pan_text::bigint, pan::text as pan from {t}");
    let r = c.query(sql.as_str(), &[]).await.unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 4111111111111111003);
    assert_eq!(r[0].get::<_, i64>(1), 4444);
    assert_eq!(r[0].get::<_, i64>(2), 1111);
    assert_eq!(r[0].get::<_, String>(3), "************1111");
    // A binary int8[] (its elements).
    let sql = format!("select array[id, pan8] from {t}");
    let r = c.query(sql.as_str(), &[]).await.unwrap();
    assert_eq!(r[0].get::<_, Vec<i64>>(0), vec![4111111111111111003, 4444]);
    // Binary ranges and multiranges (their bounds).
    let sql = format!(
        "select int8range(pan8, pan8 + 1), numrange(pan, pan + 1), \
         int8multirange(int8range(id, id + 1), int8range(pan8, pan8 + 1)) from {t}"
    );
    let r = c.query(sql.as_str(), &[]).await.unwrap();
    for i in 0..3 {
        let Raw(Some(v)) = r[0].get::<_, Raw>(i) else {
            panic!("NULL range");
        };
        assert!(
            !v.windows(8).any(|w| w == 5555555555554444i64.to_be_bytes()),
            "{i}: {v:?}"
        );
        // (numeric 4111111111111111: groups 4111 1111 1111 1111. The
        // upper bounds, a card plus one, fail Luhn: no card.)
        let groups = [0x10, 0x0f, 0x04, 0x57, 0x04, 0x57, 0x04, 0x57];
        assert!(!v.windows(8).any(|w| w == groups), "{i}: {v:?}");
    }
    // Text and CSV COPY: digits zeroed, so the fields still load.
    let sql = format!("copy (select id, pan8, pan from {t}) to stdout");
    let out = String::from_utf8(copy_out(&c, &sql).await.unwrap()).unwrap();
    assert_eq!(
        out,
        "4111111111111111003\t0000000000004444\t0000000000001111\n"
    );
    let sql = format!("copy {t} (pan8, pan) to stdout (format csv)");
    let out = String::from_utf8(copy_out(&c, &sql).await.unwrap()).unwrap();
    assert_eq!(out, "0000000000004444,0000000000001111\n");
    // … quoted (FORCE_QUOTE, or a delimiter the value holds), or with the
    // `\` text format writes before a delimiter character (`-`).
    for (sql, want) in [
        (
            format!("copy {t} (pan8, pan) to stdout (format csv, force_quote *)"),
            "\"0000000000004444\",\"0000000000001111\"\n",
        ),
        (
            format!("copy (select -pan8, -pan from {t}) to stdout (format csv, delimiter '-')"),
            "\"-0000000000004444\"-\"-0000000000001111\"\n",
        ),
        (
            format!("copy (select -pan8, -pan from {t}) to stdout (delimiter '-')"),
            "\\-0000000000004444-\\-0000000000001111\n",
        ),
        // (A quote or escape character the value holds is doubled inside
        // quotes: `-` of a negative number, a digit. The fields are
        // written anew, quoted as PostgreSQL quotes them.)
        (
            format!("copy (select -pan8, -pan from {t}) to stdout (format csv, quote '-')"),
            "---0000000000004444-,---0000000000001111-\n",
        ),
        (
            format!(
                "copy (select -pan8, -pan from {t}) to stdout \
                 (format csv, force_quote *, escape '-')"
            ),
            "\"--0000000000004444\",\"--0000000000001111\"\n",
        ),
        (
            format!("copy {t} (pan8, pan) to stdout (format csv, quote '4')"),
            "4000000000000444444444,400000000000011114\n",
        ),
    ] {
        let out = String::from_utf8(copy_out(&c, &sql).await.unwrap()).unwrap();
        assert_eq!(out, want, "{sql}");
    }
    // Binary COPY: the int8 field in place.
    let sql = format!("copy (select id, pan8 from {t}) to stdout (format binary)");
    let out = copy_out(&c, &sql).await.unwrap();
    let find = |v: i64| out.windows(8).any(|w| w == v.to_be_bytes());
    assert!(!find(5555555555554444) && find(4444) && find(4111111111111111003));
    // … and an int8[] field's elements.
    let sql = format!("copy (select array[id, pan8] from {t}) to stdout (format binary)");
    let out = copy_out(&c, &sql).await.unwrap();
    let find = |v: i64| out.windows(8).any(|w| w == v.to_be_bytes());
    assert!(!find(5555555555554444) && find(4444) && find(4111111111111111003));
}

/// A new snapshot that lands while a result is being sent (the client's
/// next request, sent before the result ends, picks it up) keeps the
/// column rules of that result: the rows after it were read with the
/// detectors alone, and a ruled nickname went out in clear after any
/// configuration change (each snapshot compiles its profiles anew). A
/// group whose `unmasked` is taken away mid-result gets the rules from
/// there on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_during_a_result_keeps_its_column_rules() {
    use sluice_tests::wire::query_bytes;
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let auditor = ApiKey::generate();
    let t = "mk_cp_midresult";
    let direct = pg.direct().await;
    direct
        .batch_execute(&format!(
            "drop table if exists {t}; create table {t} (id int, nickname text); \
             insert into {t} select i, 'Sparky' from generate_series(1, 3000) i"
        ))
        .await
        .unwrap();
    let nick = "columns:\n  - {column: nickname, action: mask}\n";
    let auditors = |unmasked: bool| {
        format!(
            "{}  unmasked: {unmasked}\n",
            cp::policy_yaml("auditors-app", &["app"], &[], &["auditors"])
        )
    };
    let cp = ControlPlane::on(Backend::Embedded, vec![]);
    let mut admin = Admin::connect(&cp.url()).await;
    let v1 = admin
        .apply(
            &[
                profile_doc("pii", nick),
                connection_doc("app", pg, Some("pii")),
                agent_docs(key),
                cp::api_key_yaml("auditor-key", "auditor", &auditor.verifier, &["auditors"]),
                auditors(true),
            ]
            .join("---\n"),
        )
        .await
        .version;
    let node = start_node(&cp, "m9");
    admin.wait_applied(1, v1, LIMIT).await;
    // The rows stop half way, on an advisory lock the test holds.
    let sql = format!(
        "select nickname, case when id = 1500 then pg_advisory_lock(4242)::text end as w from {t}"
    );
    let phases: [(&str, &ApiKey, String); 2] = [
        (
            "agent1",
            key,
            // (Any change: each snapshot compiles its profiles anew.)
            cp::api_key_yaml(
                "other-key",
                "other",
                &ApiKey::generate().verifier,
                &["others"],
            ),
        ),
        ("auditor", &auditor, auditors(false)),
    ];
    for (who, k, change) in phases {
        let mut s = sluice_tests::wire::login(node.port, who, "app", &k.key)
            .await
            .unwrap_or_else(|e| panic!("login {who}: {e:?}"));
        direct
            .batch_execute("select pg_advisory_lock(4242)")
            .await
            .unwrap();
        s.raw.send(&query_bytes(&sql)).await.unwrap();
        let mut msgs = Vec::new();
        while msgs
            .iter()
            .filter(|m: &&sluice_tests::wire::Msg| m.tag == b'D')
            .count()
            < 10
        {
            msgs.push(s.raw.read_msg().await);
        }
        let v = admin.apply(&change).await.version;
        admin.wait_applied(1, v, LIMIT).await;
        // The next request picks the new snapshot up.
        s.raw.send(&query_bytes("select 1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        direct
            .batch_execute("select pg_advisory_unlock(4242)")
            .await
            .unwrap();
        let mut zs = 0;
        while zs < 2 {
            let m = s.raw.read_msg().await;
            zs += usize::from(m.tag == b'Z');
            msgs.push(m);
        }
        let rows: Vec<&sluice_tests::wire::Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
        assert_eq!(rows.len(), 3001, "{who}");
        let clear = rows
            .iter()
            .skip(if who == "auditor" { 1500 } else { 0 })
            .filter(|m| String::from_utf8_lossy(&m.body).contains("Sparky"))
            .count();
        assert_eq!(clear, 0, "{who}: rows with the nickname in clear");
    }
}

/// Rows of `bytes` (extended-protocol messages ending in a Sync) on `s`.
async fn wire_rows(s: &mut sluice_tests::wire::Session, bytes: &[u8]) -> sluice_tests::wire::Rows {
    s.raw.send(bytes).await.unwrap();
    s.read_result()
        .await
        .unwrap_or_else(|e| panic!("extended: {e}"))
}

/// A protocol statement described once and then replaced by SQL (`PREPARE`
/// shares the namespace of protocol statements: `DEALLOCATE s; PREPARE s
/// AS …`, a Close then a `PREPARE`, dynamic SQL in a `DO` block, also sent
/// before the Describe is answered) is not read with its old description
/// when a Bind runs it without a Describe: its int columns there had no
/// scan at all, and the card of a `note` went out in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_replaced_by_sql_is_not_read_with_its_old_description() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes, sync_bytes};
    let t = "mk_replaced_stmt";
    let (_gw, mut s) = pii_wire_session(t).await;
    let new = format!("select note, id::text, email from {t} order by id");
    let described = |name: &str| {
        [
            parse_bytes(name, "select 1, 2, 3"),
            describe_bytes(b'S', name),
            sync_bytes(),
        ]
        .concat()
    };
    let run = |name: &str| [bind_bytes("", name), execute_bytes("", true)].concat();
    let close = |name: &str| {
        let mut b = vec![b'C'];
        b.extend_from_slice(&((name.len() + 6) as u32).to_be_bytes());
        b.push(b'S');
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend(sync_bytes());
        b
    };
    let mut got = Vec::new();
    // DEALLOCATE and PREPARE.
    wire_rows(&mut s, &described("mk_s1")).await;
    s.simple_query(&format!("deallocate mk_s1; prepare mk_s1 as {new}"))
        .await
        .unwrap();
    got.push((
        "deallocate, prepare",
        wire_rows(&mut s, &run("mk_s1")).await,
    ));
    // A protocol Close, then PREPARE.
    wire_rows(&mut s, &described("mk_s2")).await;
    wire_rows(&mut s, &close("mk_s2")).await;
    s.simple_query(&format!("prepare mk_s2 as {new}"))
        .await
        .unwrap();
    got.push(("close, prepare", wire_rows(&mut s, &run("mk_s2")).await));
    // Dynamic SQL.
    wire_rows(&mut s, &described("mk_s3")).await;
    s.simple_query(&format!(
        "do $$ begin execute 'deallocate mk_s3'; execute 'prepare mk_s3 as {new}'; end $$"
    ))
    .await
    .unwrap();
    got.push(("dynamic SQL", wire_rows(&mut s, &run("mk_s3")).await));
    // All in one write: the Describe is answered after the PREPARE is sent.
    let all = [
        described("mk_s4"),
        sluice_tests::wire::query_bytes(&format!("deallocate mk_s4; prepare mk_s4 as {new}")),
        run("mk_s4"),
    ]
    .concat();
    s.raw.send(&all).await.unwrap();
    for _ in 0..2 {
        s.read_result().await.unwrap();
    }
    got.push(("pipelined", s.read_result().await.unwrap()));
    for (what, rows) in got {
        assert_eq!(rows.len(), 3, "{what}");
        let note = rows[0][0].as_deref().unwrap_or_default();
        assert!(
            !note.contains("4111"),
            "{what}: the card of a note in clear: {rows:?}"
        );
    }
}

/// Rows of a statement run with no Describe (a raw client that knows its
/// result types: Parse, Bind, Execute; a SQL cursor executed as a portal;
/// a statement replaced by SQL since its Describe) take, in every column,
/// the rule their statement's text gives a computed column: the ruled
/// names it mentions. They were read with the detectors alone, so a ruled
/// column went out in clear to any client that left the Describe out.
/// A statement that names no ruled column still gets the detectors only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_without_a_describe_take_their_statements_rule() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes, sync_bytes};
    let t = "mk_no_describe";
    let (_gw, mut s) = pii_wire_session(t).await;
    let run = |name: &str, sql: &str| {
        [
            parse_bytes(name, sql),
            bind_bytes("", name),
            execute_bytes("", true),
        ]
        .concat()
    };
    let clear = [
        "my first pet was Rex",
        "alice.smith@example.com",
        "123456789",
    ];
    let mut got = Vec::new();
    let sql = format!("select secret_answer, email, ssn from {t} order by id");
    got.push((
        "Parse, Bind, Execute",
        wire_rows(&mut s, &run("", &sql)).await,
    ));
    s.simple_query(&format!(
        "begin; declare mk_c cursor for select secret_answer, email, ssn from {t} order by id"
    ))
    .await
    .unwrap();
    got.push((
        "a cursor executed as a portal",
        wire_rows(&mut s, &execute_bytes("mk_c", true)).await,
    ));
    s.simple_query("commit").await.unwrap();
    let described = [
        parse_bytes("mk_r", "select 1, 2, 3"),
        describe_bytes(b'S', "mk_r"),
        sync_bytes(),
    ]
    .concat();
    wire_rows(&mut s, &described).await;
    s.simple_query(&format!("deallocate mk_r; prepare mk_r as {sql}"))
        .await
        .unwrap();
    got.push((
        "a statement replaced since its Describe",
        wire_rows(
            &mut s,
            &[bind_bytes("", "mk_r"), execute_bytes("", true)].concat(),
        )
        .await,
    ));
    for (what, rows) in &got {
        assert_eq!(rows.len(), 3, "{what}");
        let shown: Vec<&str> = rows[0].iter().flatten().map(String::as_str).collect();
        let leaked: Vec<&&str> = clear.iter().filter(|v| shown.contains(v)).collect();
        assert!(leaked.is_empty(), "{what}: {leaked:?} in clear: {rows:?}");
    }
    // No ruled name: the detectors only.
    let rows = wire_rows(
        &mut s,
        &run("", &format!("select note from {t} order by id")),
    )
    .await;
    assert_eq!(rows[0][0].as_deref(), Some("card **** **** **** 1111"));
    assert_eq!(rows[1][0].as_deref(), Some("clean note"));
}

/// Rows of a statement never described, in binary format: the columns'
/// types are unknown, so a column taking its statement's rule cannot be
/// masked as text (an `int8`'s eight bytes made asterisks decode as
/// another number, with no error): it is NULL, as a ruled binary value of
/// a type the gateway does not read is. Unruled statements' binary values
/// are left to the detectors, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rows_without_a_describe_are_null_under_a_rule_not_garbled() {
    use sluice_tests::wire::{bind_binary_bytes, execute_bytes, parse_bytes};
    let t = "mk_no_describe_bin";
    let (_gw, mut s) = pii_wire_session(t).await;
    let run = |sql: &str| {
        [
            parse_bytes("", sql),
            bind_binary_bytes("", ""),
            execute_bytes("", true),
        ]
        .concat()
    };
    let rows = wire_rows(
        &mut s,
        &run(&format!("select id::int8, ssn from {t} order by id")),
    )
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        assert_eq!(r, &[None, None], "{rows:?}");
    }
    // No ruled name: the binary int8 comes back as the server sent it.
    let rows = wire_rows(
        &mut s,
        &run(&format!("select id::int8 from {t} order by id")),
    )
    .await;
    let one = String::from_utf8_lossy(&1i64.to_be_bytes()).into_owned();
    assert_eq!(rows[0][0].as_deref(), Some(one.as_str()), "{rows:?}");
}

/// The same with two portals of an undescribed statement bound before
/// either is executed, the first in binary, the second in text: the first
/// one's rows are read with its own Bind's formats, not the last Bind's.
/// Read as text, a `keep_last` column's binary int8 kept its last four
/// bytes (the low 32 bits: the whole number, for most ids) and sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rows_of_an_earlier_portal_without_a_describe_are_null_under_a_rule() {
    use sluice_tests::wire::{bind_binary_bytes, bind_bytes, execute_bytes, parse_bytes};
    let t = "mk_no_describe_bin2";
    let (_gw, mut s) = pii_wire_session(t).await;
    let sql = format!("select ssn::int8 as ssn from {t} where id = 1");
    let bytes = [
        parse_bytes("", &sql),
        bind_binary_bytes("p1", ""),
        bind_bytes("p2", ""),
        execute_bytes("p1", false),
        execute_bytes("p2", true),
    ]
    .concat();
    let rows = wire_rows(&mut s, &bytes).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let low = String::from_utf8_lossy(&123_456_789i64.to_be_bytes()[4..]).into_owned();
    assert!(
        !rows[0][0].as_deref().unwrap_or("").contains(&low),
        "the binary value's low bytes went out: {rows:?}"
    );
    assert_eq!(rows[0], [None], "binary, under a rule: NULL ({rows:?})");
    assert_eq!(rows[1][0].as_deref(), Some("*****6789"), "{rows:?}");
}

/// A Bind whose first read ends inside its portal's name (an agent can
/// send its bytes so): the masker reads the names and result formats when
/// the rest comes, not a Bind of the unnamed portal with no formats. Read
/// so, the binary rows of `p1` (described or not) were read as text under
/// `keep_last` and the int8's low bytes went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rows_of_a_bind_split_inside_its_names_are_masked() {
    use sluice_tests::wire::{
        bind_binary_bytes, describe_bytes, execute_bytes, parse_bytes, sync_bytes,
    };
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_split_bind_names";
    seed_people(pg, t).await;
    // (`keep_last` the strongest rule: what a statement whose text is not
    // known gets.)
    let cfg = GatewayConfig::new()
        .pg_connection_masked("app", pg, "last4")
        .masking_profile(
            "last4",
            "columns:\n  - { column: ssn, action: { keep_last: 4 } }\n",
        )
        .identity_key("agent1", &key.verifier, &["bots"])
        .grant(&["app"], &[], &["bots"]);
    let gw = Gateway::start_with(&cfg);
    let mut s = sluice_tests::wire::login(gw.port, "agent1", "app", &key.key)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    let sql = format!("select ssn::int8 as ssn from {t} where id = 1");
    let low = String::from_utf8_lossy(&123_456_789i64.to_be_bytes()[4..]).into_owned();
    // Undescribed (unnamed statement), then described (`s1`).
    let described = [
        parse_bytes("s1", &sql),
        describe_bytes(b'S', "s1"),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&described).await.unwrap();
    s.read_result()
        .await
        .unwrap_or_else(|e| panic!("describe: {e}"));
    for (stmt, portal) in [("", "p1"), ("s1", "p2"), ("", "")] {
        if stmt.is_empty() {
            s.raw.send(&parse_bytes("", &sql)).await.unwrap();
        }
        let bind = bind_binary_bytes(portal, stmt);
        // (Cut inside the portal's name, or before its NUL.)
        let cut = 5 + portal.len().max(1);
        s.raw.send(&bind[..cut]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rest = [&bind[cut..], &execute_bytes(portal, true)[..]].concat();
        s.raw.send(&rest).await.unwrap();
        let rows = s
            .read_result()
            .await
            .unwrap_or_else(|e| panic!("{stmt:?}/{portal:?}: {e}"));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(
            !rows[0][0].as_deref().unwrap_or("").contains(&low),
            "{stmt:?}/{portal:?}: the binary value's low bytes went out: {rows:?}"
        );
        // Described: its plan, the value printed and masked; else a
        // binary value under a rule is NULL.
        let want = (!stmt.is_empty()).then(|| "*****6789".to_string());
        assert_eq!(rows[0], [want], "{stmt:?}/{portal:?}");
    }
}

/// Statements `s1` (the ssn of row 1) and `s2` (the note of row 2) of
/// [`seed_people`]'s table `t`, parsed and described.
async fn prepare_ssn_and_note(s: &mut sluice_tests::wire::Session, t: &str) {
    use sluice_tests::wire::{describe_bytes, parse_bytes, sync_bytes};
    let described = [
        parse_bytes("s1", &format!("select ssn from {t} where id = 1")),
        parse_bytes("s2", &format!("select note from {t} where id = 2")),
        describe_bytes(b'S', "s1"),
        describe_bytes(b'S', "s2"),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&described).await.unwrap();
    s.read_result()
        .await
        .unwrap_or_else(|e| panic!("describe: {e}"));
}

/// An Execute whose first read ends inside its portal's name: its rows
/// are read with that portal's plan, not with the plan of the portal bound
/// last (here an unruled column of another statement, which let the ssn
/// out whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_an_execute_split_inside_its_portal_name_are_masked() {
    use sluice_tests::wire::{bind_bytes, execute_bytes};
    let t = "mk_split_execute_name";
    let (_gw, mut s) = pii_wire_session(t).await;
    prepare_ssn_and_note(&mut s, t).await;
    let exec = execute_bytes("p1", true);
    // (Cut inside the portal's name.)
    let first = [
        bind_bytes("p1", "s1"),
        bind_bytes("p2", "s2"),
        exec[..6].to_vec(),
    ]
    .concat();
    s.raw.send(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.raw.send(&exec[6..]).await.unwrap();
    let rows = s
        .read_result()
        .await
        .unwrap_or_else(|e| panic!("execute: {e}"));
    assert_eq!(rows, [[Some("*****6789".to_string())]]);
}

/// The same with a Describe of a portal cut inside its name: its
/// description was taken for the unnamed portal's, whose rows (an ssn)
/// were then read with that plan (an unruled column of another statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_split_inside_its_portal_name_describes_that_portal() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes};
    let t = "mk_split_describe_name";
    let (_gw, mut s) = pii_wire_session(t).await;
    prepare_ssn_and_note(&mut s, t).await;
    let describe = describe_bytes(b'P', "p1");
    // (Cut inside the portal's name.)
    let first = [
        bind_bytes("", "s1"),
        bind_bytes("p1", "s2"),
        describe[..7].to_vec(),
    ]
    .concat();
    s.raw.send(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.raw
        .send(&[&describe[7..], &execute_bytes("", true)[..]].concat())
        .await
        .unwrap();
    let rows = s
        .read_result()
        .await
        .unwrap_or_else(|e| panic!("execute: {e}"));
    assert_eq!(rows, [[Some("*****6789".to_string())]]);
}

/// A statement described once and run again without a Describe (a
/// tokio-postgres `Statement`, a pgJDBC server-prepared statement, a
/// pool's statement cache) keeps its description after SQL that cannot
/// replace a prepared statement: a pool's `DISCARD TEMP` / `DISCARD
/// SEQUENCES` on each recycle, or the word "prepare" in a literal. Its rows
/// were read as a statement never described from then on, for the rest of
/// the session: every column took the rule of the ruled names the text
/// mentions, so an unruled text column came back masked and a binary `int4`
/// was masked as if it were text (the client could not decode it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_statement_keeps_its_description_after_sql_that_replaces_none() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_cached_desc";
    seed_people(pg, t).await;
    let gw = Gateway::start_with(&pii_config(pg, key));
    let c = gw.agent().await;
    let st = c
        .prepare(&format!(
            "select id, ssn, note, id::int8 from {t} where id = 2"
        ))
        .await
        .unwrap();
    let read = |r: &tokio_postgres::Row| {
        (
            r.try_get::<_, i32>(0).map_err(|e| err_text(&e)),
            r.try_get::<_, String>(1).map_err(|e| err_text(&e)),
            r.try_get::<_, String>(2).map_err(|e| err_text(&e)),
            r.try_get::<_, i64>(3).map_err(|e| err_text(&e)),
        )
    };
    let want = (
        Ok(2),
        Ok("*******4321".to_string()),
        Ok("clean note".to_string()),
        Ok(2),
    );
    let row = c.query_one(&st, &[]).await.unwrap();
    assert_eq!(read(&row), want, "described");
    for sql in [
        "discard temp",
        "discard sequences; discard plans",
        "select 'time to prepare the report'",
        "select 1 as deallocate",
    ] {
        c.batch_execute(sql).await.unwrap();
        let row = c.query_one(&st, &[]).await.unwrap();
        assert_eq!(read(&row), want, "after {sql:?}");
    }
}

/// A Bind too long to keep whole (an upload of megabytes with a
/// `RETURNING`) keeps its result formats: its rows were read as a
/// statement never described, so the binary `int8` it returned took the
/// rule of the ruled name its text mentions and came back as another
/// number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_bind_keeps_its_result_formats() {
    let pg = Pg::shared();
    let key = ApiKey::shared();
    let t = "mk_long_bind";
    seed_people(pg, t).await;
    let gw = Gateway::start_with(&pii_config(pg, key));
    let c = gw.agent().await;
    let big = "x".repeat(3 << 20);
    let row = c
        .query_one(
            &format!(
                "insert into {t} (id, ssn, note) values (10, '111223333', $1) \
                 returning id::int8, ssn, length(note)"
            ),
            &[&big],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10);
    assert_eq!(row.get::<_, String>(1), "*****3333");
    assert_eq!(row.get::<_, i32>(2), 3 << 20);
}

/// A Describe of a portal whose statement was parsed again after its Bind
/// (the unnamed statement replaced, or a named one closed and parsed
/// anew) describes the old query, which the portal runs: that description
/// was kept as the statement's, so a later Bind of it without a Describe
/// read the new query's rows (a `secret_answer`) as the old one's `int`
/// column, in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_describe_does_not_describe_its_statement_parsed_again() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes};
    let t = "mk_portal_lends";
    let (_gw, mut s) = default_wire_session(t).await;
    let close_s = [b'C', 0, 0, 0, 7, b'S', b's', 0];
    for (name, close) in [("", &[][..]), ("s", &close_s[..])] {
        let batch = [
            parse_bytes(
                name,
                &format!("select id from {t} where id < 3 order by id"),
            ),
            bind_bytes("", name),
            close.to_vec(),
            parse_bytes(
                name,
                &format!("select secret_answer from {t} where id < 3 order by id"),
            ),
            describe_bytes(b'P', ""),
            execute_bytes("", true),
        ]
        .concat();
        s.raw.send(&batch).await.unwrap();
        let rows = s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows, [[Some("1".to_string())], [Some("2".to_string())]]);
        let run = [bind_bytes("", name), execute_bytes("", true)].concat();
        s.raw.send(&run).await.unwrap();
        let rows = s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows,
            [[Some("*".repeat(20))], [Some("*".repeat(7))]],
            "statement {name:?}"
        );
    }
}

/// A SQL cursor executed as a portal under the name of a portal the
/// client bound before (closed by SQL or by a Close, or ended with its
/// transaction) was read with that portal's description: here an `int`
/// column, so the cursor's `secret_answer` went out in clear. Its rows are
/// read as those of a statement never described (the cursor's query
/// gives the rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_under_an_old_portal_name_is_not_read_with_its_description() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes, sync_bytes};
    let t = "mk_cursor_old_portal";
    let (_gw, mut s) = default_wire_session(t).await;
    let prepare = [
        parse_bytes("s", &format!("select id from {t} where id < 3 order by id")),
        describe_bytes(b'S', "s"),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&prepare).await.unwrap();
    s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    let declare = |c: &str| {
        format!("declare {c} cursor for select secret_answer from {t} where id < 3 order by id")
    };
    let close_c2 = [b'C', 0, 0, 0, 8, b'P', b'c', b'2', 0];
    for (c, begin, close, sql) in [
        (
            "c1",
            "begin",
            &[][..],
            format!("close c1; {}", declare("c1")),
        ),
        ("c2", "begin", &close_c2[..], declare("c2")),
        (
            "c3",
            "select 1",
            &[][..],
            format!("begin; {}", declare("c3")),
        ),
    ] {
        s.simple_query(begin).await.unwrap();
        let bound = [bind_bytes(c, "s"), close.to_vec(), sync_bytes()].concat();
        s.raw.send(&bound).await.unwrap();
        s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
        s.simple_query(&sql).await.unwrap();
        s.raw.send(&execute_bytes(c, true)).await.unwrap();
        let rows = s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows,
            [[Some("*".repeat(20))], [Some("*".repeat(7))]],
            "cursor {c}"
        );
        s.simple_query("commit").await.unwrap();
    }
}

/// CopyOutResponses took the COPY requests in the order they were sent,
/// whichever statement had made them: an Execute the client side took for
/// a COPY that ran something else (a COPY statement prepared again by SQL
/// as a SELECT, a cursor declared under a COPY portal's old name) left its
/// request to the next COPY, whose fields were then read with the columns
/// of the other one's query (two unruled text columns here: the ssn and
/// the secret_answer went out in clear). Each request now belongs to the
/// Execute or Query that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_takes_no_other_statements_columns() {
    use sluice_tests::wire::{bind_bytes, execute_bytes, parse_bytes, query_bytes, sync_bytes};
    let t = "mk_copy_other_cols";
    let (_gw, mut s) = default_wire_session(t).await;
    let unruled =
        format!("copy (select note, note as n2 from {t} where id < 3 order by id) to stdout");
    let ruled =
        format!("copy (select ssn, secret_answer from {t} where id < 3 order by id) to stdout");
    let copy_data = |msgs: &[sluice_tests::wire::Msg]| -> String {
        msgs.iter()
            .filter(|m| m.tag == b'd')
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    };
    let until_ready = async |s: &mut sluice_tests::wire::Session| {
        let mut msgs = Vec::new();
        loop {
            let m = s.raw.read_msg().await;
            if m.tag == b'E' {
                panic!("{}", sluice_tests::wire::ErrorFields::parse(&m.body));
            }
            let z = m.tag == b'Z';
            msgs.push(m);
            if z {
                return msgs;
            }
        }
    };
    let want = "*****6789\t********************\n*******4321\t*******\n";
    // A COPY statement prepared again by SQL.
    s.raw
        .send(&[parse_bytes("c", &unruled), sync_bytes()].concat())
        .await
        .unwrap();
    until_ready(&mut s).await;
    s.raw
        .send(&query_bytes("deallocate c; prepare c as select 1"))
        .await
        .unwrap();
    until_ready(&mut s).await;
    let batch = [
        parse_bytes("r", &ruled),
        bind_bytes("p", "c"),
        bind_bytes("pr", "r"),
        execute_bytes("p", false),
        execute_bytes("pr", true),
    ]
    .concat();
    s.raw.send(&batch).await.unwrap();
    assert_eq!(
        copy_data(&until_ready(&mut s).await),
        want,
        "prepared again"
    );
    // A cursor under a COPY portal's name (the portal ended with its
    // transaction).
    s.raw
        .send(
            &[
                parse_bytes("c2", &unruled),
                bind_bytes("q", "c2"),
                sync_bytes(),
            ]
            .concat(),
        )
        .await
        .unwrap();
    until_ready(&mut s).await;
    s.raw
        .send(&query_bytes("begin; declare q cursor for select 1"))
        .await
        .unwrap();
    until_ready(&mut s).await;
    let batch = [
        bind_bytes("qr", "r"),
        execute_bytes("q", false),
        execute_bytes("qr", true),
    ]
    .concat();
    s.raw.send(&batch).await.unwrap();
    assert_eq!(copy_data(&until_ready(&mut s).await), want, "cursor");
}

/// After an error in an extended-protocol message the server skips every
/// message until a Sync, a Query or FunctionCall too, which then gets no
/// ReadyForQuery. Counting one anyway left the masker one ReadyForQuery
/// behind for the rest of the session: a statement's answers were taken
/// for the one before, and a Query's rows were read with the plan of a
/// portal run before it (an `int` column: the secret_answer in clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_server_skips_after_an_error_are_not_awaited() {
    use sluice_tests::wire::{
        bind_bytes, describe_bytes, execute_bytes, parse_bytes, query_bytes, sync_bytes,
    };
    let t = "mk_skipped_requests";
    let (_gw, mut s) = default_wire_session(t).await;
    let prepare = [
        parse_bytes("s", &format!("select id from {t} where id < 3 order by id")),
        describe_bytes(b'S', "s"),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&prepare).await.unwrap();
    s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    // A FunctionCall (`pg_backend_pid`, no arguments, text result).
    let mut call = vec![b'F', 0, 0, 0, 0];
    call.extend_from_slice(&2026u32.to_be_bytes());
    call.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let len = (call.len() - 1) as u32;
    call[1..5].copy_from_slice(&len.to_be_bytes());
    let secret = format!("select secret_answer from {t} where id < 3 order by id");
    let masked = [[Some("*".repeat(20))], [Some("*".repeat(7))]];
    for skipped in [
        query_bytes("select 1"),
        call,
        [query_bytes("select 1"), query_bytes("select 2")].concat(),
    ] {
        // (A Parse that fails, then what the server skips.)
        let failing = [parse_bytes("", "selec 1"), skipped, sync_bytes()].concat();
        s.raw.send(&failing).await.unwrap();
        assert!(s.read_result().await.is_err());
        s.simple_query("select 2").await.unwrap();
        s.raw
            .send(&[bind_bytes("p", "s"), execute_bytes("p", true)].concat())
            .await
            .unwrap();
        s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.simple_query(&secret).await.unwrap(), masked);
    }
}

/// The Syncs sent after an Execute of a COPY FROM STDIN were taken as
/// ignored by the server (as during a copy-in) once the client sent its
/// CopyDone, even when the COPY had failed before its copy-in started:
/// the server answered them, and the statements sent between were taken
/// as answered before they were (a later portal's rows read with the plan
/// of the portal bound last: an `int` column, the secret_answer in clear).
/// They are now counted as after a simple Query's COPY FROM: ignored only
/// once its CopyInResponse comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_after_a_copy_from_that_never_started_are_answered() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes, sync_bytes};
    let t = "mk_copy_in_failed";
    let (_gw, mut s) = default_wire_session(t).await;
    let prepare = [
        parse_bytes("cin", "copy mk_no_such_table from stdin"),
        parse_bytes(
            "sa",
            &format!("select secret_answer from {t} where id < 3 order by id"),
        ),
        parse_bytes(
            "si",
            &format!("select id from {t} where id < 3 order by id"),
        ),
        describe_bytes(b'S', "sa"),
        describe_bytes(b'S', "si"),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&prepare).await.unwrap();
    s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    let copy_done = [b'c', 0, 0, 0, 4];
    let batch = [
        bind_bytes("", "cin"),
        execute_bytes("", true),
        bind_bytes("q", "sa"),
        bind_bytes("r", "si"),
        copy_done.to_vec(),
        execute_bytes("q", true),
    ]
    .concat();
    s.raw.send(&batch).await.unwrap();
    let e = s.read_result().await.unwrap_err();
    assert_eq!(e.code(), "42P01");
    let rows = s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, [[Some("*".repeat(20))], [Some("*".repeat(7))]]);
}

/// A COPY FROM STDIN in a Query or a Parse split across reads was not
/// seen as one (its text was read only when whole, and not for that), so
/// the Syncs the server ignored during its copy-in (one right behind a
/// Parse's Execute, as libpq sends it) were counted as to be answered. The
/// masker then stayed a ReadyForQuery behind for the rest of the session:
/// a Query's rows were read with the plan of a portal run before it (an
/// `int` column, the secret_answer in clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_split_across_reads_keeps_the_session_in_step() {
    use sluice_tests::wire::{
        bind_bytes, describe_bytes, execute_bytes, parse_bytes, query_bytes, sync_bytes,
    };
    let t = "mk_split_copy_in";
    let (_gw, mut s) = default_wire_session(t).await;
    s.simple_query(
        "drop table if exists mk_split_copy_in_sink; create table mk_split_copy_in_sink (a text)",
    )
    .await
    .unwrap();
    let prepare = [
        parse_bytes(
            "si",
            &format!("select id from {t} where id < 3 order by id"),
        ),
        describe_bytes(b'S', "si"),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&prepare).await.unwrap();
    s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    let copy = "copy mk_split_copy_in_sink from stdin";
    let data = [b'd', 0, 0, 0, 6, b'x', b'\n'];
    let done = [b'c', 0, 0, 0, 4];
    let secret = format!("select secret_answer from {t} where id < 3 order by id");
    let masked = [[Some("*".repeat(20))], [Some("*".repeat(7))]];
    let query = query_bytes(copy);
    let parse = [
        parse_bytes("cin", copy),
        bind_bytes("", "cin"),
        execute_bytes("", true),
    ]
    .concat();
    // (Cut inside the text; then a Sync during the copy-in.)
    for (what, msg, after) in [
        (
            "query",
            &query,
            [sync_bytes(), data.to_vec(), done.to_vec()].concat(),
        ),
        (
            "parse",
            &parse,
            [data.to_vec(), done.to_vec(), sync_bytes()].concat(),
        ),
    ] {
        s.raw.send(&msg[..14]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.raw.send(&msg[14..]).await.unwrap();
        loop {
            if s.raw.read_msg().await.tag == b'G' {
                break;
            }
        }
        s.raw.send(&after).await.unwrap();
        s.read_result()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        s.simple_query("select 2").await.unwrap();
        s.raw
            .send(&[bind_bytes("p", "si"), execute_bytes("p", true)].concat())
            .await
            .unwrap();
        s.read_result()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(s.simple_query(&secret).await.unwrap(), masked, "{what}");
    }
}

/// A Describe of a statement sent after a Bind of it gives that portal
/// its description, unless SQL that may prepare the statement again was
/// sent between them: the portal runs the query the name held at its Bind
/// (here a secret_answer, read as the new query's `int` column, in
/// clear). Such a portal's rows are read as a statement never described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_after_sql_that_replaces_the_statement_does_not_describe_an_earlier_bind() {
    use sluice_tests::wire::{bind_bytes, describe_bytes, execute_bytes, parse_bytes, sync_bytes};
    let t = "mk_bind_prepare_describe";
    let (_gw, mut s) = default_wire_session(t).await;
    let prepare = [
        parse_bytes(
            "s",
            &format!("select secret_answer from {t} where id < 3 order by id"),
        ),
        parse_bytes(
            "x",
            &format!(
                "do $$ begin execute 'deallocate s'; \
                 execute 'prepare s as select id from {t} where id < 3 order by id'; end $$"
            ),
        ),
        sync_bytes(),
    ]
    .concat();
    s.raw.send(&prepare).await.unwrap();
    s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    let batch = [
        bind_bytes("q", "x"),
        bind_bytes("p", "s"),
        execute_bytes("q", false),
        describe_bytes(b'S', "s"),
        execute_bytes("p", true),
    ]
    .concat();
    s.raw.send(&batch).await.unwrap();
    let rows = s.read_result().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, [[Some("*".repeat(20))], [Some("*".repeat(7))]]);
}

/// A FunctionCall (the fast-path protocol) runs a function by its oid:
/// `query_to_xml` of a query given as an argument read ruled columns with
/// the detectors alone (the ssn and the secret_answer in clear), where the
/// same call in SQL has them masked. Its result is now a computed value of
/// a statement whose text is not known, of a type not known: under the
/// strongest name rule it is NULL. The large-object functions, which
/// libpq's `lo_*` calls use, keep to the detectors, so a large object
/// still reads back as it was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_results_take_the_strongest_name_rule() {
    let t = "mk_function_call";
    let (_gw, mut s) = default_wire_session(t).await;
    let call = |oid: u32, args: &[&[u8]], binary: bool| {
        let mut b = oid.to_be_bytes().to_vec();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(args.len() as i16).to_be_bytes());
        for a in args {
            b.extend_from_slice(&(a.len() as i32).to_be_bytes());
            b.extend_from_slice(a);
        }
        b.extend_from_slice(&i16::from(binary).to_be_bytes());
        let mut f = vec![b'F'];
        f.extend_from_slice(&((b.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(&b);
        f
    };
    let oid_of = async |s: &mut sluice_tests::wire::Session, f: &str| -> u32 {
        let r = s
            .simple_query(&format!("select '{f}'::regprocedure::oid"))
            .await
            .unwrap();
        r[0][0].as_deref().unwrap().parse().unwrap()
    };
    // (The value; None for NULL.)
    let result = async |s: &mut sluice_tests::wire::Session, f: Vec<u8>| -> Option<Vec<u8>> {
        s.raw.send(&f).await.unwrap();
        let mut v = None;
        loop {
            let m = s.raw.read_msg().await;
            match m.tag {
                b'V' => v = Some((m.body[..4] != [0xff; 4]).then(|| m.body[4..].to_vec())),
                b'E' => panic!("{}", sluice_tests::wire::ErrorFields::parse(&m.body)),
                b'Z' => return v.expect("FunctionCallResponse"),
                _ => {}
            }
        }
    };
    let xml = oid_of(&mut s, "query_to_xml(text,bool,bool,text)").await;
    let q = format!("select ssn, secret_answer from {t} where id < 3");
    let got = result(
        &mut s,
        call(xml, &[q.as_bytes(), b"true", b"false", b""], false),
    )
    .await;
    assert_eq!(got.as_deref().map(String::from_utf8_lossy), None);
    // A large object reads back as stored (lo_open, loread).
    s.simple_query("begin").await.unwrap();
    let lo = s
        .simple_query("select lo_from_bytea(0, 'stored file bytes')")
        .await
        .unwrap();
    let lo: u32 = lo[0][0].as_deref().unwrap().parse().unwrap();
    let fd = result(
        &mut s,
        call(952, &[lo.to_string().as_bytes(), b"262144"], false),
    )
    .await;
    let data = result(&mut s, call(954, &[&fd.unwrap(), b"100"], true)).await;
    assert_eq!(data.as_deref(), Some(&b"stored file bytes"[..]));
    s.simple_query("rollback").await.unwrap();
}

/// Syncs sent during a copy-in are ignored by the server there, and so
/// not counted; but when the COPY then fails on data it refuses, those
/// sent after that data are answered, and how many is not known. Which
/// request the later answers belong to can no longer be told (a Query's
/// rows were read with another statement's text: `upper(secret_answer)`
/// in clear), so the session ends with 08P01 after the COPY's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_sent_inside_a_copy_in_that_fails_end_the_session() {
    use sluice_tests::wire::{bind_bytes, execute_bytes, parse_bytes, query_bytes, sync_bytes};
    let t = "mk_sync_in_copy_in";
    let (gw, mut s) = default_wire_session(t).await;
    s.simple_query(
        "drop table if exists mk_sync_in_copy_in_sink; \
         create table mk_sync_in_copy_in_sink (a int)",
    )
    .await
    .unwrap();
    let copy = "copy mk_sync_in_copy_in_sink from stdin";
    let flush = [b'H', 0, 0, 0, 4];
    let extended = [
        parse_bytes("", copy),
        bind_bytes("", ""),
        execute_bytes("", false),
        flush.to_vec(),
    ]
    .concat();
    let bad_data = [b'd', 0, 0, 0, 6, b'x', b'\n'];
    for (what, start) in [("extended", extended), ("simple", query_bytes(copy))] {
        if what == "simple" {
            s = sluice_tests::wire::login(gw.port, "agent1", "app", &ApiKey::shared().key)
                .await
                .unwrap_or_else(|e| panic!("login: {e:?}"));
        }
        s.raw.send(&start).await.unwrap();
        while s.raw.read_msg().await.tag != b'G' {}
        s.raw
            .send(&[bad_data.to_vec(), sync_bytes()].concat())
            .await
            .unwrap();
        // (Were it to go on: a Query, then one whose computed column takes
        // its text's rule.)
        let more = [
            query_bytes("select 1"),
            query_bytes(&format!("select upper(secret_answer) from {t} order by id")),
        ]
        .concat();
        let _ = s.raw.send(&more).await;
        let closed = s.raw.expect_close(Duration::from_secs(10), what).await;
        let codes: Vec<&str> = closed.errors.iter().map(|e| e.code()).collect();
        assert_eq!(codes, ["22P02", "08P01"], "{what}");
        let shown: Vec<u8> = closed.others.iter().flat_map(|m| m.body.clone()).collect();
        assert!(find(&shown, b"MY FIRST PET").is_none(), "{what}");
    }
}
