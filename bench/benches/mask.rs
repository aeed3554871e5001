//! Masking engine throughput on a realistic result set, one core.
//!
//! Corpus (`dataplane::mask::corpus`): an `orders` table (id, customer,
//! e-mail, phone, address, created_at, total, order ref, status, notes);
//! every row has an e-mail, most a phone, one note in eight quotes a card,
//! SSN, IBAN, key or token. Contenders, all on the same bytes:
//!
//! - `engine/cells`: `Engine::mask_in_place` (default profile) over every
//!   text cell a plan would scan;
//! - `engine/data_rows`: `mask_data_row` over whole DataRow bodies (the
//!   plan skips the int, timestamptz and numeric columns);
//! - `regex_set/cells`: a `regex::bytes::RegexSet` of equivalent patterns,
//!   then each matching pattern's `find_at` loop to rewrite the matches
//!   (what a regex-based masker has to do), without validators;
//! - `*/clean_text`: the same on clean free text (no hits).
//!
//! A second corpus, `notes`: the ~1 KB rows of RESULTS §8
//! (`bench/e2e/mask_overhead.sh`'s `mask_rows`, built by
//! `examples/support/e2e_rows.rs`: a customer with an account number, a
//! contact, an eight-sentence order note with order ids, dates, prices and
//! 32-digit hex references; a card, SSN or IBAN in one row in five),
//! 2000 rows: `engine/notes_cells`, `regex_set/notes_cells` (the text
//! cells) and `engine/notes_rows` (DataRow bodies through a plan).
//!
//! Each iteration masks a fresh copy of the corpus (copy not timed).
//! Throughput is bytes of cell data (or DataRow bodies) per second.

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use dataplane::mask::corpus::{self, Rng};
use dataplane::mask::{mask_data_row, Engine, Hits, Kernel, MaskingProfile, RowPlan};
use std::hint::black_box;
use std::ops::Range;

#[path = "support/mask_common.rs"]
mod common;
use common::{cells, cells_of, clean_cells, RegexMasker};

#[path = "../examples/support/e2e_rows.rs"]
mod e2e_rows;

fn mask(c: &mut Criterion) {
    let mut rng = Rng::new(2026);
    let rows = corpus::orders(&mut rng, 10_000);
    let (buf, ranges) = cells(&rows);
    let (clean, clean_ranges) = clean_cells(&mut rng, 20_000);
    let default = MaskingProfile::default();
    let engine = Engine::compile(&default).unwrap();
    let scalar = Engine::compile_with_kernel(&default, Kernel::Scalar).unwrap();
    let rx = RegexMasker::new();

    // Sanity: the contenders find things in the corpus and nothing in the
    // clean text.
    let count = |f: &dyn Fn(&mut [u8]) -> u32, data: &[u8], rs: &[Range<usize>]| {
        let mut d = data.to_vec();
        rs.iter().map(|r| f(&mut d[r.clone()]) as u64).sum::<u64>()
    };
    let eh = count(&|v| engine.mask_counted(v, &mut Hits::new()), &buf, &ranges);
    let rh = count(&|v| rx.mask(v), &buf, &ranges);
    let ec = count(
        &|v| engine.mask_counted(v, &mut Hits::new()),
        &clean,
        &clean_ranges,
    );
    eprintln!(
        "corpus: {} rows, {} cells, {} bytes; engine hits {eh}, regex hits {rh}; clean text: {} cells, {} bytes, engine hits {ec}; kernel {:?}",
        rows.len(),
        ranges.len(),
        buf.len(),
        clean_ranges.len(),
        clean.len(),
        engine.kernel()
    );

    let mut g = c.benchmark_group("mask");
    g.sample_size(20);
    g.warm_up_time(std::time::Duration::from_secs(1));
    g.measurement_time(std::time::Duration::from_secs(4));

    let run_cells = |g: &mut criterion::BenchmarkGroup<_>,
                     name: &str,
                     data: &[u8],
                     rs: &[Range<usize>],
                     f: &dyn Fn(&mut [u8], &mut Hits) -> u32| {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || data.to_vec(),
                |d| {
                    let mut h = Hits::new();
                    let mut n = 0;
                    for r in rs {
                        n += f(&mut d[r.clone()], &mut h);
                    }
                    black_box(n)
                },
                BatchSize::LargeInput,
            )
        });
    };
    run_cells(&mut g, "engine/cells", &buf, &ranges, &|v, h| {
        engine.mask_counted(v, h)
    });
    run_cells(&mut g, "engine_scalar/cells", &buf, &ranges, &|v, h| {
        scalar.mask_counted(v, h)
    });
    run_cells(&mut g, "regex_set/cells", &buf, &ranges, &|v, _| rx.mask(v));
    run_cells(
        &mut g,
        "engine/clean_text",
        &clean,
        &clean_ranges,
        &|v, h| engine.mask_counted(v, h),
    );
    run_cells(
        &mut g,
        "regex_set/clean_text",
        &clean,
        &clean_ranges,
        &|v, _| rx.mask(v),
    );

    // Whole DataRow bodies through a plan.
    bench_rows(
        &mut g,
        &engine,
        "engine/data_rows",
        &rows,
        corpus::ORDERS_COLUMNS,
    );

    // The notes corpus (RESULTS §8's rows).
    let notes: Vec<Vec<Option<String>>> = (1..=2000).map(e2e_rows::row).collect();
    let (nbuf, nranges) = cells_of(&notes, e2e_rows::COLUMNS);
    let nh = count(
        &|v| engine.mask_counted(v, &mut Hits::new()),
        &nbuf,
        &nranges,
    );
    let nrh = count(&|v| rx.mask(v), &nbuf, &nranges);
    eprintln!(
        "notes corpus: {} rows, {} cells, {} bytes; engine hits {nh}, regex hits {nrh}",
        notes.len(),
        nranges.len(),
        nbuf.len()
    );
    run_cells(&mut g, "engine/notes_cells", &nbuf, &nranges, &|v, h| {
        engine.mask_counted(v, h)
    });
    run_cells(&mut g, "regex_set/notes_cells", &nbuf, &nranges, &|v, _| {
        rx.mask(v)
    });
    bench_rows(
        &mut g,
        &engine,
        "engine/notes_rows",
        &notes,
        e2e_rows::COLUMNS,
    );
    g.finish();
}

/// `mask_data_row` over the DataRow bodies of `rows` (columns `columns`)
/// through a plan; throughput in body bytes.
fn bench_rows(
    g: &mut BenchmarkGroup<'_, WallTime>,
    engine: &Engine,
    name: &str,
    rows: &[Vec<Option<String>>],
    columns: &[(&str, u32)],
) {
    let (bodies, ranges) = common::bodies(rows);
    let mut plan = RowPlan::new();
    plan.describe(engine, &corpus::row_description(columns))
        .unwrap();
    g.throughput(Throughput::Bytes(bodies.len() as u64));
    g.bench_function(name, |b| {
        let mut hits = Hits::new();
        let mut out = Vec::with_capacity(1024);
        b.iter_batched_ref(
            || bodies.clone(),
            |d| {
                for r in &ranges {
                    black_box(
                        mask_data_row(engine, &mut plan, &mut d[r.clone()], &mut hits, &mut out)
                            .unwrap(),
                    );
                }
            },
            BatchSize::LargeInput,
        )
    });
}

/// What a statement's text costs the relay for the rules of computed
/// columns (`dataplane::mask::derived`): every Query and Parse is looked at
/// for SQL-level `PREPARE`/`EXECUTE`; a statement's text is read for ruled
/// names only when a result of it has a computed text-like column.
fn derived(c: &mut Criterion) {
    use dataplane::mask::derived::{derived_rule, sql_commands};
    let engine = Engine::compile(&MaskingProfile::default()).unwrap();
    let mut g = c.benchmark_group("derived");
    let pgbench = b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    g.throughput(Throughput::Bytes(pgbench.len() as u64));
    g.bench_function("sql_commands/pgbench_select", |b| {
        b.iter(|| black_box(sql_commands(black_box(pgbench), false)))
    });
    let agent = b"SELECT c.id, concat(c.first_name, ' ', c.last_name) AS name, \
        lower(c.email) AS email, upper(c.ssn) AS ssn_upper, count(o.id) AS orders, \
        string_agg(o.reference, ', ' ORDER BY o.placed_at) AS refs \
        FROM customers c LEFT JOIN orders o ON o.customer_id = c.id \
        WHERE c.created_at > now() - interval '30 days' AND c.status = 'active' \
        GROUP BY c.id ORDER BY orders DESC LIMIT 50";
    assert!(derived_rule(&engine, agent, false).is_some());
    g.throughput(Throughput::Bytes(agent.len() as u64));
    g.bench_function("derived_rule/agent_report", |b| {
        b.iter(|| black_box(derived_rule(&engine, black_box(agent), false)))
    });
    // The masker's whole bookkeeping of one pgbench statement: the Query
    // as the client sends it, then PostgreSQL's answer (RowDescription of a
    // plain column, DataRow, CommandComplete, ReadyForQuery).
    let mut answer = Vec::new();
    let one = bench::pgbench_select_responses(1);
    answer.extend_from_slice(&one);
    let query = b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0";
    g.throughput(Throughput::Elements(1));
    g.bench_function("masker/pgbench_select_statement", |b| {
        let engine = std::sync::Arc::new(Engine::compile(&MaskingProfile::default()).unwrap());
        let mut m = dataplane::session::masker::TargetMasker::new(engine, 1 << 20);
        let mut buf = answer.clone();
        b.iter(|| {
            m.on_client_frame(b'Q', black_box(query), true, Some(0));
            buf.copy_from_slice(&answer);
            black_box(m.process(&mut buf));
        })
    });
    g.finish();
}

/// What the gateway does with the login's view read
/// (`dataplane::mask::origins`): 200 views over a table with two ruled
/// columns, each the stored query PostgreSQL 15 wrote for `select id, ssn
/// as tax_id, upper(api_secret) as k, name, p as whole from people p where
/// id > 0` (3.5 KB), tokenized and followed.
fn origins(c: &mut Criterion) {
    use dataplane::mask::ColumnOrigins;
    let engine = Engine::compile(&MaskingProfile::default()).unwrap();
    let tree: &[u8] = include_bytes!("../../dataplane/src/mask/testdata/view_contacts.tree");
    let row = |fields: &[&[u8]]| {
        let mut b = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            b.extend_from_slice(&(f.len() as i32).to_be_bytes());
            b.extend_from_slice(f);
        }
        b
    };
    let columns: Vec<Vec<u8>> = ["id", "name", "ssn", "api_secret", "profile"]
        .iter()
        .enumerate()
        .map(|(k, n)| row(&[b"16384", (k + 1).to_string().as_bytes(), n.as_bytes()]))
        .collect();
    let views: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            row(&[
                b"v",
                (20000 + i).to_string().as_bytes(),
                format!("contacts_{i}").as_bytes(),
                b"16384:1,16384:2,16384:3,16384:4",
                tree,
            ])
        })
        .collect();
    let mut g = c.benchmark_group("origins");
    g.throughput(Throughput::Bytes(
        views.iter().map(|v| v.len() as u64).sum(),
    ));
    g.bench_function("view_read/200_views", |b| {
        b.iter(|| {
            let mut o = ColumnOrigins::new();
            for r in &columns {
                o.add_row(r, |n| engine.name_ruled(n)).unwrap();
            }
            for r in &views {
                o.add_view_row(black_box(r)).unwrap();
            }
            o.resolve_views(&engine);
            assert!(o.computed(20199, 3).is_some());
            black_box(o)
        })
    });
    // A statement's text read with that catalog (view column names, table
    // names, functions count): a 300 KB text that repeats names, as a
    // generated report query might; each name is looked up once.
    let mut read = ColumnOrigins::new();
    for r in &columns {
        read.add_row(r, |n| engine.name_ruled(n)).unwrap();
    }
    for r in &views {
        read.add_view_row(r).unwrap();
    }
    read.resolve_views(&engine);
    let mut long = b"select upper(name) from contacts_7 x where false".to_vec();
    while long.len() < 300_000 {
        long.extend_from_slice(b" or tax_id = '' or name = x.name or k = 'a'");
    }
    g.throughput(Throughput::Bytes(long.len() as u64));
    g.bench_function("statement_text/300kb_with_views", |b| {
        b.iter(|| {
            let t = dataplane::mask::derived::Text::new(black_box(&long), Some(false), false);
            black_box(t.rule(&engine, Some(&read)))
        })
    });
    // 200 PL/pgSQL functions of 330 bytes, as `bench/e2e/connect_origins.sh`
    // creates them (`FUNCTIONS=200`).
    let body = b"\n      DECLARE r text;\n      BEGIN\n        SELECT name || ' <' || email || '> ' || \
        city INTO r FROM t1 WHERE id = k;\n        IF r IS NULL THEN RAISE NOTICE 'no customer %', k; \
        END IF;\n        RETURN r;\n      END ";
    let functions: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            row(&[
                b"f",
                (40000 + i).to_string().as_bytes(),
                format!("f{i}").as_bytes(),
                b"",
                body,
            ])
        })
        .collect();
    g.throughput(Throughput::Bytes(
        functions.iter().map(|v| v.len() as u64).sum(),
    ));
    g.bench_function("view_read/200_functions", |b| {
        b.iter(|| {
            let mut o = ColumnOrigins::new();
            for r in &columns {
                o.add_row(r, |n| engine.name_ruled(n)).unwrap();
            }
            for r in &functions {
                o.add_view_row(black_box(r)).unwrap();
            }
            o.resolve_views(&engine);
            black_box(o)
        })
    });
    g.finish();
}

criterion_group!(benches, mask, derived, origins);
criterion_main!(benches);
