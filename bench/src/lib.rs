//! Helpers shared by the criterion benches: realistic protocol streams.

/// Append one tagged message.
pub fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// A DataRow with the given text cells.
pub fn data_row(out: &mut Vec<u8>, cells: &[&[u8]]) {
    let mut body = Vec::new();
    body.extend_from_slice(&(cells.len() as u16).to_be_bytes());
    for c in cells {
        body.extend_from_slice(&(c.len() as u32).to_be_bytes());
        body.extend_from_slice(c);
    }
    msg(out, b'D', &body);
}

/// What a server sends for `pgbench -S` (one row, one int column), repeated.
pub fn pgbench_select_responses(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        msg(
            &mut out,
            b'T',
            b"\0\x01abalance\0\0\0@\x04\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        );
        data_row(&mut out, &[format!("{}", i % 10000).as_bytes()]);
        msg(&mut out, b'C', b"SELECT 1\0");
        msg(&mut out, b'Z', b"I");
    }
    out
}

/// A result set of `rows` rows of about `row_bytes` bytes each (8 columns).
pub fn wide_rows(rows: usize, row_bytes: usize) -> Vec<u8> {
    let cell = vec![b'x'; row_bytes / 8];
    let cells: Vec<&[u8]> = (0..8).map(|_| cell.as_slice()).collect();
    let mut out = Vec::new();
    for _ in 0..rows {
        data_row(&mut out, &cells);
    }
    msg(&mut out, b'C', b"SELECT 1000\0");
    msg(&mut out, b'Z', b"I");
    out
}
