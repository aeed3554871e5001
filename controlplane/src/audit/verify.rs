//! Chain verification, shared by both sinks. A sink reads one node's
//! records (with whatever it noticed while reading them) and its chain head,
//! and [`verify_node`] reports, with the node and sequence positions:
//!
//! * `GAP`: sequences missing between two stored records (deleted);
//! * `EDITED`: a record whose content no longer gives its hash, that cannot
//!   be decoded, or whose sink-side copy (indexed columns) disagrees;
//! * `BROKEN_LINK`: a record whose `prev_hash` is not its predecessor's
//!   hash (a record replaced with a recomputed hash, a splice);
//! * `DELETED`: records the head names but that are gone (tail deletion);
//! * `OUT_OF_ORDER`, `DUPLICATE`: records stored out of sequence order, or
//!   twice.
//!
//! The sink's own head sits beside its records, so whoever can rewrite the
//! one can rewrite the other. The control plane's configuration store
//! (etcd) keeps a second copy, a [`Witness`](super::witness::Witness), out
//! of the sink's reach; [`verify_node_witnessed`] also checks the chain
//! against it, so a tail cut back behind it, or a node's records deleted
//! whole (head included), are reported as `DELETED`, and a chain rewritten
//! under it as `BROKEN_LINK`.

use std::collections::BTreeMap;

use proto::{AuditRecord, FindingKind, VerifyFinding, VerifyResponse};

use super::chain::{compute_hash, hex, GENESIS};
use super::witness::Witness;

/// One record as a sink read it back.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The sequence the sink files it under (a column, or the decoded
    /// record's); `None` when even that is unreadable.
    pub sequence: Option<u64>,
    /// The decoded record, or why it could not be decoded.
    pub record: Result<AuditRecord, String>,
    /// Problems the sink noticed (checksum mismatch, columns that disagree
    /// with the record).
    pub damage: Vec<String>,
    /// Where it is, for messages ("segment …, byte …").
    pub location: String,
}

/// A node's chain head as the sink records it separately from the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: Vec<u8>,
}

fn finding(
    node_id: &str,
    kind: FindingKind,
    first: u64,
    last: u64,
    detail: String,
) -> VerifyFinding {
    VerifyFinding {
        node_id: node_id.to_string(),
        kind: kind as i32,
        first_sequence: first,
        last_sequence: last,
        detail,
    }
}

/// Verifies one node's records, given in the order they are stored. Returns
/// the findings and how many records were checked.
pub fn verify_node(
    node_id: &str,
    stored: Vec<StoredRecord>,
    head: Option<&Head>,
) -> (Vec<VerifyFinding>, u64) {
    verify_node_witnessed(node_id, stored, head, None)
}

/// [`verify_node`], also against the store's `witness` of the node's chain
/// (see the module's comment).
pub fn verify_node_witnessed(
    node_id: &str,
    stored: Vec<StoredRecord>,
    head: Option<&Head>,
    witness: Option<&Witness>,
) -> (Vec<VerifyFinding>, u64) {
    let mut findings = Vec::new();
    let checked = stored.len() as u64;

    // Storage order: each record must come after a lower sequence. An
    // unreadable record is taken to sit where it is found.
    let mut entries: Vec<(u64, StoredRecord)> = Vec::with_capacity(stored.len());
    let mut highest = 0u64;
    for e in stored {
        let seq = match e.sequence {
            Some(s) => s,
            None => highest + 1,
        };
        if seq < highest {
            findings.push(finding(
                node_id,
                FindingKind::OutOfOrder,
                seq,
                seq,
                format!(
                    "record {seq} is stored after record {highest} ({})",
                    e.location
                ),
            ));
        }
        highest = highest.max(seq);
        entries.push((seq, e));
    }
    entries.sort_by_key(|(s, _)| *s);

    let mut expected = 1u64;
    // Hash of the previous record when it is the immediate predecessor and
    // could be read; None when the link cannot be checked.
    let mut prev_hash: Option<Vec<u8>> = Some(GENESIS.to_vec());
    let mut last: Option<(u64, Option<Vec<u8>>)> = None;
    // The hash of the record the witness names, where it is stored and
    // readable.
    let mut witnessed: Option<Vec<u8>> = None;
    for (seq, e) in entries {
        if seq < expected {
            findings.push(finding(
                node_id,
                FindingKind::Duplicate,
                seq,
                seq,
                format!("sequence {seq} is stored more than once ({})", e.location),
            ));
            continue;
        }
        if seq > expected {
            findings.push(finding(
                node_id,
                FindingKind::Gap,
                expected,
                seq - 1,
                format!(
                    "records {expected} to {} are missing before record {seq}",
                    seq - 1
                ),
            ));
            prev_hash = None;
        }
        let mut problems = e.damage.clone();
        let stored_hash = match &e.record {
            Err(why) => {
                problems.push(format!("cannot be decoded: {why}"));
                None
            }
            Ok(rec) => {
                let md = rec.metadata.clone().unwrap_or_default();
                if md.sequence != seq {
                    problems.push(format!("the record says sequence {}", md.sequence));
                }
                if md.node_id != node_id {
                    problems.push(format!("the record says node {:?}", md.node_id));
                }
                let recomputed = compute_hash(&rec.prev_hash, rec);
                if recomputed[..] != rec.hash[..] {
                    problems.push(format!(
                        "content hashes to {} but the stored hash is {}",
                        hex(&recomputed),
                        hex(&rec.hash)
                    ));
                }
                if let Some(p) = &prev_hash {
                    if p[..] != rec.prev_hash[..] {
                        findings.push(finding(
                            node_id,
                            FindingKind::BrokenLink,
                            seq,
                            seq,
                            format!(
                                "prev_hash {} is not the hash {} of record {}",
                                hex(&rec.prev_hash),
                                hex(p),
                                seq - 1
                            ),
                        ));
                    }
                }
                Some(rec.hash.clone())
            }
        };
        if !problems.is_empty() {
            findings.push(finding(
                node_id,
                FindingKind::Edited,
                seq,
                seq,
                format!("record {seq} ({}): {}", e.location, problems.join("; ")),
            ));
        }
        if witness.is_some_and(|w| w.head.sequence == seq) && witnessed.is_none() {
            witnessed = stored_hash.clone();
        }
        prev_hash = stored_hash.clone();
        last = Some((seq, stored_hash));
        expected = seq + 1;
    }

    let last_seq = last.as_ref().map_or(0, |(s, _)| *s);
    match head {
        Some(h) if h.sequence > last_seq => findings.push(finding(
            node_id,
            FindingKind::Deleted,
            last_seq + 1,
            h.sequence,
            format!(
                "the chain head is record {} but the last stored record is {last_seq}",
                h.sequence
            ),
        )),
        Some(h) if h.sequence == last_seq && h.sequence > 0 => {
            if let Some((_, Some(hash))) = &last {
                if hash[..] != h.hash[..] {
                    findings.push(finding(
                        node_id,
                        FindingKind::BrokenLink,
                        last_seq,
                        last_seq,
                        format!(
                            "the last record's hash {} is not the chain head's {}",
                            hex(hash),
                            hex(&h.hash)
                        ),
                    ));
                }
            }
        }
        Some(h) if h.sequence < last_seq => findings.push(finding(
            node_id,
            FindingKind::Edited,
            h.sequence + 1,
            last_seq,
            format!(
                "records {} to {last_seq} are past the chain head ({}): added outside the sink",
                h.sequence + 1,
                h.sequence
            ),
        )),
        None if last_seq > 0 => findings.push(finding(
            node_id,
            FindingKind::Deleted,
            last_seq,
            last_seq,
            "the node's chain head is missing".to_string(),
        )),
        _ => {}
    }
    if let Some(w) = witness {
        let at = w.at();
        let head_names = head.is_some_and(|h| h.sequence >= w.head.sequence);
        if w.head.sequence > last_seq && !head_names {
            findings.push(finding(
                node_id,
                FindingKind::Deleted,
                last_seq + 1,
                w.head.sequence,
                format!(
                    "the control plane's store witnessed record {} ({at}) but the sink's last \
                     record is {last_seq}{}",
                    w.head.sequence,
                    match head {
                        None => " and it has no chain head".to_string(),
                        Some(h) => format!(" and its chain head says {}", h.sequence),
                    }
                ),
            ));
        }
        if let Some(hash) = &witnessed {
            if hash[..] != w.head.hash[..] {
                findings.push(finding(
                    node_id,
                    FindingKind::BrokenLink,
                    w.head.sequence,
                    w.head.sequence,
                    format!(
                        "record {}'s hash {} is not the {} the control plane's store \
                         witnessed ({at}): the chain was rewritten",
                        w.head.sequence,
                        hex(hash),
                        hex(&w.head.hash)
                    ),
                ));
            }
        }
    }
    (findings, checked)
}

/// The nodes of `witnesses` (or `only`) that a sink holds nothing of,
/// neither records nor a head (`seen` are those it holds): each checked
/// as a node with no records, so that deleting a node's records and head
/// together is reported.
pub fn verify_unseen(
    witnesses: &BTreeMap<String, Witness>,
    seen: &[String],
    only: Option<&str>,
    resp: &mut VerifyResponse,
) {
    for (node, w) in witnesses {
        if only.is_some_and(|o| o != node) || seen.contains(node) {
            continue;
        }
        let (findings, _) = verify_node_witnessed(node, vec![], None, Some(w));
        resp.findings.extend(findings);
        resp.nodes_checked += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::link;
    use proto::{AuditMetadata, AuditStatement};

    fn chain(node: &str, n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    metadata: Some(AuditMetadata {
                        node_id: node.into(),
                        sequence: seq,
                        ..Default::default()
                    }),
                    statement: Some(AuditStatement {
                        sql: format!("select {seq}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                prev = link(&prev, &mut r);
                r
            })
            .collect()
    }

    fn stored(recs: &[AuditRecord]) -> Vec<StoredRecord> {
        recs.iter()
            .map(|r| StoredRecord {
                sequence: Some(r.metadata.as_ref().unwrap().sequence),
                record: Ok(r.clone()),
                damage: vec![],
                location: "test".into(),
            })
            .collect()
    }

    fn head(recs: &[AuditRecord]) -> Head {
        let r = recs.last().unwrap();
        Head {
            sequence: r.metadata.as_ref().unwrap().sequence,
            hash: r.hash.clone(),
        }
    }

    fn kinds(f: &[VerifyFinding]) -> Vec<(FindingKind, u64, u64)> {
        f.iter()
            .map(|f| (f.kind(), f.first_sequence, f.last_sequence))
            .collect()
    }

    #[test]
    fn intact_chain_has_no_findings() {
        let c = chain("n", 5);
        let (f, n) = verify_node("n", stored(&c), Some(&head(&c)));
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(n, 5);
        assert!(verify_node("n", vec![], None).0.is_empty());
    }

    #[test]
    fn edit_is_named() {
        let c = chain("n", 5);
        let h = head(&c);
        let mut s = stored(&c);
        if let Ok(r) = &mut s[2].record {
            r.statement.as_mut().unwrap().sql = "drop table x".into();
        }
        assert_eq!(
            kinds(&verify_node("n", s, Some(&h)).0),
            [(FindingKind::Edited, 3, 3)]
        );
    }

    #[test]
    fn edit_with_recomputed_hash_breaks_the_next_link() {
        let c = chain("n", 5);
        let h = head(&c);
        let mut s = stored(&c);
        if let Ok(r) = &mut s[2].record {
            r.statement.as_mut().unwrap().sql = "drop table x".into();
            let prev: [u8; 32] = r.prev_hash.clone().try_into().unwrap();
            link(&prev, r);
        }
        assert_eq!(
            kinds(&verify_node("n", s, Some(&h)).0),
            [(FindingKind::BrokenLink, 4, 4)]
        );
    }

    #[test]
    fn deletions_in_the_middle_and_at_the_tail() {
        let c = chain("n", 6);
        let h = head(&c);
        let mut s = stored(&c);
        s.remove(5);
        s.remove(2);
        s.remove(1);
        assert_eq!(
            kinds(&verify_node("n", s, Some(&h)).0),
            [(FindingKind::Gap, 2, 3), (FindingKind::Deleted, 6, 6)]
        );
        // Everything gone, head left.
        assert_eq!(
            kinds(&verify_node("n", vec![], Some(&h)).0),
            [(FindingKind::Deleted, 1, 6)]
        );
        // Head gone.
        assert_eq!(
            kinds(&verify_node("n", stored(&c), None).0),
            [(FindingKind::Deleted, 6, 6)]
        );
    }

    #[test]
    fn reorder_duplicate_and_unreadable() {
        let c = chain("n", 5);
        let h = head(&c);
        let mut s = stored(&c);
        s.swap(1, 2);
        assert_eq!(
            kinds(&verify_node("n", s, Some(&h)).0),
            [(FindingKind::OutOfOrder, 2, 2)]
        );
        let mut s = stored(&c);
        s.insert(3, s[3].clone());
        assert_eq!(
            kinds(&verify_node("n", s, Some(&h)).0),
            [(FindingKind::Duplicate, 4, 4)]
        );
        let mut s = stored(&c);
        s[1] = StoredRecord {
            sequence: None,
            record: Err("bad bytes".into()),
            damage: vec!["checksum mismatch".into()],
            location: "seg 1 byte 99".into(),
        };
        let (f, _) = verify_node("n", s, Some(&h));
        assert_eq!(kinds(&f), [(FindingKind::Edited, 2, 2)]);
        assert!(f[0].detail.contains("seg 1 byte 99"), "{}", f[0].detail);
    }

    #[test]
    fn sink_side_damage_and_head_mismatch() {
        let c = chain("n", 3);
        let mut s = stored(&c);
        s[0].damage.push("column identity is \"mallory\"".into());
        let wrong_head = Head {
            sequence: 3,
            hash: vec![9; 32],
        };
        assert_eq!(
            kinds(&verify_node("n", s, Some(&wrong_head)).0),
            [(FindingKind::Edited, 1, 1), (FindingKind::BrokenLink, 3, 3)]
        );
        let short_head = Head {
            sequence: 2,
            hash: c[1].hash.clone(),
        };
        assert_eq!(
            kinds(&verify_node("n", stored(&c), Some(&short_head)).0),
            [(FindingKind::Edited, 3, 3)]
        );
    }

    #[test]
    fn witness_catches_what_the_sinks_own_head_hides() {
        let c = chain("n", 6);
        let w = |seq: u64, hash: &[u8]| Witness {
            head: Head {
                sequence: seq,
                hash: hash.to_vec(),
            },
            at_unix_nanos: 0,
        };
        let at6 = w(6, &c[5].hash);
        let run = |s: &[AuditRecord], h: Option<&Head>, w: &Witness| {
            kinds(&verify_node_witnessed("n", stored(s), h, Some(w)).0)
        };
        // Intact, witnessed at the head or behind it: clean.
        assert_eq!(run(&c, Some(&head(&c)), &at6), []);
        assert_eq!(run(&c, Some(&head(&c)), &w(4, &c[3].hash)), []);
        // The tail cut and the sink's head lowered to match: only the
        // witness sees it.
        let cut = &c[..4];
        assert!(verify_node("n", stored(cut), Some(&head(cut))).0.is_empty());
        assert_eq!(
            run(cut, Some(&head(cut)), &at6),
            [(FindingKind::Deleted, 5, 6)]
        );
        // The sink's head still naming the tail: reported once.
        assert_eq!(
            run(cut, Some(&head(&c)), &at6),
            [(FindingKind::Deleted, 5, 6)]
        );
        // Every record and the head deleted.
        assert_eq!(run(&[], None, &at6), [(FindingKind::Deleted, 1, 6)]);
        // The chain rebuilt from an edited record 2, hashes recomputed,
        // head to match: consistent in itself, not with the witness.
        let mut forged = c.clone();
        forged[1].statement.as_mut().unwrap().sql = "select 'nothing to see'".into();
        let mut prev = GENESIS;
        for r in &mut forged {
            prev = link(&prev, r);
        }
        assert!(verify_node("n", stored(&forged), Some(&head(&forged)))
            .0
            .is_empty());
        let f = verify_node_witnessed("n", stored(&forged), Some(&head(&forged)), Some(&at6)).0;
        assert_eq!(kinds(&f), [(FindingKind::BrokenLink, 6, 6)]);
        assert!(
            f[0].detail.contains("the chain was rewritten"),
            "{}",
            f[0].detail
        );
    }

    #[test]
    fn witnessed_nodes_the_sink_lacks_are_checked() {
        let c = chain("gone", 3);
        let mut ws = BTreeMap::new();
        for (n, seq) in [("gone", 3), ("here", 2)] {
            ws.insert(
                n.to_string(),
                Witness {
                    head: Head {
                        sequence: seq,
                        hash: c[seq as usize - 1].hash.clone(),
                    },
                    at_unix_nanos: 0,
                },
            );
        }
        let mut resp = VerifyResponse::default();
        verify_unseen(&ws, &["here".to_string()], None, &mut resp);
        assert_eq!(resp.nodes_checked, 1);
        assert_eq!(kinds(&resp.findings), [(FindingKind::Deleted, 1, 3)]);
        assert_eq!(resp.findings[0].node_id, "gone");
        let mut resp = VerifyResponse::default();
        verify_unseen(&ws, &[], Some("here"), &mut resp);
        assert_eq!(resp.nodes_checked, 1);
        assert_eq!(kinds(&resp.findings), [(FindingKind::Deleted, 1, 2)]);
    }
}
