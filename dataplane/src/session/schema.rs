//! Schema changes a session makes itself, told by the tags of the
//! commands it is answered ([`SchemaWatch`]): the session's catalog read
//! (`net::catalog::SessionCatalog`) is read again after them, and until
//! then the masker's column rules fail closed
//! ([`crate::session::masker::TargetMasker`]).

/// What a statement may have changed in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Created relations or functions (newer than the read): the read
    /// continued with them, and the views read again.
    Added,
    /// Altered what the read holds (`ALTER …`, `IMPORT FOREIGN SCHEMA`):
    /// a whole read.
    Altered,
}

/// Tells, from the frames a session's client is sent, whether a statement
/// may have changed what the catalog read knows: the tags of `CREATE …`
/// (but indexes, sequences, roles, databases, statistics, tablespaces) and
/// `SELECT n` with no rows (`CREATE TABLE … AS`, `SELECT … INTO`, `CREATE
/// MATERIALIZED VIEW`: no row sent for its n > 0 rows, or no
/// RowDescription and no Bind in a simple query's answer for n = 0) add;
/// `DO` and `CALL` too (what they did is not told: the views are read
/// again); `ALTER …` (but those and the system) and `IMPORT FOREIGN
/// SCHEMA` alter. The last, row-less part of a portal fetched in parts
/// (after a PortalSuspended) is not a `SELECT n` that adds.
#[derive(Debug, Default)]
pub struct SchemaWatch {
    described: bool,
    rows: bool,
    bound: bool,
    suspended: bool,
}

impl SchemaWatch {
    pub fn frame(&mut self, t: u8, body: &[u8]) -> Option<Change> {
        match t {
            b'T' => self.described = true,
            b'D' => self.rows = true,
            b'2' => self.bound = true,
            b'C' => {
                let tag = body.split(|&b| b == 0).next().unwrap_or_default();
                let changed = self.changes(tag);
                *self = SchemaWatch::default();
                return changed;
            }
            b's' => {
                *self = SchemaWatch::default();
                self.suspended = true;
            }
            b'Z' | b'I' | b'E' => *self = SchemaWatch::default(),
            _ => {}
        }
        None
    }

    fn changes(&self, tag: &[u8]) -> Option<Change> {
        const NOT: [&[u8]; 8] = [
            b"INDEX",
            b"SEQUENCE",
            b"ROLE",
            b"USER",
            b"DATABASE",
            b"SYSTEM",
            b"STATISTICS",
            b"TABLESPACE",
        ];
        let kept = |o: &[u8]| !NOT.iter().any(|n| o.starts_with(n));
        if let Some(o) = tag.strip_prefix(b"CREATE ") {
            return kept(o).then_some(Change::Added);
        }
        if let Some(o) = tag.strip_prefix(b"ALTER ") {
            return kept(o).then_some(Change::Altered);
        }
        if tag.starts_with(b"IMPORT FOREIGN SCHEMA") {
            return Some(Change::Altered);
        }
        // (What a `DO` or `CALL` did is not told: read on, views again.)
        if matches!(tag, b"DO" | b"CALL") {
            return Some(Change::Added);
        }
        let added = match tag.strip_prefix(b"SELECT ") {
            // (The last part of a portal fetched in parts has no rows.)
            _ if self.suspended => false,
            Some(b"0") => !self.described && !self.bound,
            Some(_) => !self.rows,
            None => false,
        };
        added.then_some(Change::Added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_changes_are_told_by_their_tags() {
        let tag = |t: &str| format!("{t}\0").into_bytes();
        let changes = |frames: &[(u8, Vec<u8>)]| {
            let mut w = SchemaWatch::default();
            frames.iter().filter_map(|(t, b)| w.frame(*t, b)).max()
        };
        for t in [
            "CREATE VIEW",
            "CREATE FUNCTION",
            "CREATE TABLE",
            "CREATE SCHEMA",
            "DO",
            "CALL",
        ] {
            assert_eq!(changes(&[(b'C', tag(t))]), Some(Change::Added), "{t}");
        }
        for t in ["ALTER TABLE", "ALTER VIEW", "IMPORT FOREIGN SCHEMA"] {
            assert_eq!(changes(&[(b'C', tag(t))]), Some(Change::Altered), "{t}");
        }
        for t in [
            "CREATE INDEX",
            "CREATE ROLE",
            "ALTER SYSTEM",
            "INSERT 0 1",
            "UPDATE 3",
            "SET",
            "BEGIN",
            "COPY 2",
        ] {
            assert_eq!(changes(&[(b'C', tag(t))]), None, "{t}");
        }
        // `CREATE TABLE … AS`, `CREATE MATERIALIZED VIEW`: `SELECT n`, no rows.
        assert_eq!(changes(&[(b'C', tag("SELECT 3"))]), Some(Change::Added));
        assert_eq!(changes(&[(b'C', tag("SELECT 0"))]), Some(Change::Added));
        // A query's rows, or its description in a simple Query.
        assert_eq!(changes(&[(b'D', vec![]), (b'C', tag("SELECT 1"))]), None);
        assert_eq!(changes(&[(b'T', vec![]), (b'C', tag("SELECT 0"))]), None);
        // An empty result in the extended protocol, the last part of a
        // portal fetched in parts: not a change.
        assert_eq!(changes(&[(b'2', vec![]), (b'C', tag("SELECT 0"))]), None);
        assert_eq!(
            changes(&[(b'D', vec![]), (b's', vec![]), (b'C', tag("SELECT 2"))]),
            None
        );
        // What came before the last command does not count.
        assert_eq!(
            changes(&[
                (b'D', vec![]),
                (b'C', tag("SELECT 1")),
                (b'C', tag("SELECT 2"))
            ]),
            Some(Change::Added)
        );
    }
}
