//! Cancel-key minting and routing.
//!
//! A client sees the target's real process id (clients use it to find
//! themselves in `pg_stat_activity` or match a NOTIFY's sender) and a secret
//! minted by Sluice: the node id in the top byte, 24 random bits below. The
//! pair maps to the target address and the real secret. Sessions register in
//! a table sharded by pid; any core that receives a CancelRequest looks it up
//! there, so the cancel reaches the right server connection whichever core
//! (or listener) the client's cancel connection lands on. Registration
//! happens once per session, never per statement.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ring::rand::SecureRandom;

const SHARDS: usize = 64;

/// Where a cancel for one session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub addrs: Arc<[SocketAddr]>,
    pub pid: i32,
    pub secret: i32,
}

/// Process-wide table of live sessions' cancel keys.
pub struct CancelRegistry {
    shards: Vec<Mutex<HashMap<(i32, i32), CancelTarget>>>,
    node_id: u8,
    rng: ring::rand::SystemRandom,
}

impl CancelRegistry {
    pub fn new(node_id: u8) -> Self {
        CancelRegistry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            node_id,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    fn shard(&self, pid: i32) -> &Mutex<HashMap<(i32, i32), CancelTarget>> {
        &self.shards[(pid as u32 as usize) % SHARDS]
    }

    /// Mint a secret for `target` and register it; the returned guard
    /// unregisters when the session ends.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelGuard {
        let pid = target.pid;
        let mut shard = self.shard(pid).lock().unwrap_or_else(|e| e.into_inner());
        let minted = loop {
            let mut r = [0u8; 4];
            self.rng.fill(&mut r).expect("system random source");
            let low = u32::from_be_bytes(r) & 0x00ff_ffff;
            let s = (((self.node_id as u32) << 24) | low) as i32;
            if !shard.contains_key(&(pid, s)) {
                break s;
            }
        };
        shard.insert((pid, minted), target);
        CancelGuard {
            registry: self.clone(),
            pid,
            minted,
        }
    }

    /// The real target for a (pid, minted secret) pair, if a live session has it.
    pub fn lookup(&self, pid: i32, minted: i32) -> Option<CancelTarget> {
        self.shard(pid)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pid, minted))
            .cloned()
    }

    /// Node id carried in a minted secret (for routing between nodes).
    pub fn node_of(minted: i32) -> u8 {
        ((minted as u32) >> 24) as u8
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Registration of one session; removed on drop.
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    pid: i32,
    minted: i32,
}

impl CancelGuard {
    pub fn minted(&self) -> i32 {
        self.minted
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry
            .shard(self.pid)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.pid, self.minted));
    }
}

/// A token bucket for failed cancel attempts, one per worker.
#[derive(Debug)]
pub struct BadCancelLimiter {
    per_second: u32,
    window_start: std::cell::Cell<u64>,
    used: std::cell::Cell<u32>,
}

impl BadCancelLimiter {
    pub fn new(per_second: u32) -> Self {
        BadCancelLimiter {
            per_second,
            window_start: std::cell::Cell::new(0),
            used: std::cell::Cell::new(0),
        }
    }

    /// May another lookup be tried at `now_secs`? Counts one attempt.
    pub fn allow(&self, now_secs: u64) -> bool {
        if self.window_start.get() != now_secs {
            self.window_start.set(now_secs);
            self.used.set(0);
        }
        self.used.get() < self.per_second
    }

    /// Record a failed attempt.
    pub fn failed(&self) {
        self.used.set(self.used.get().saturating_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32) -> CancelTarget {
        CancelTarget {
            addrs: Arc::from(vec!["127.0.0.1:5432".parse().unwrap()]),
            pid,
            secret: 99,
        }
    }

    #[test]
    fn register_lookup_unregister() {
        let reg = Arc::new(CancelRegistry::new(7));
        let g = reg.register(target(1234));
        assert_eq!(CancelRegistry::node_of(g.minted()), 7);
        assert_eq!(reg.lookup(1234, g.minted()), Some(target(1234)));
        assert_eq!(reg.lookup(1234, g.minted() ^ 1), None);
        assert_eq!(reg.lookup(1235, g.minted()), None);
        drop(g);
        assert!(reg.is_empty());
    }

    #[test]
    fn limiter_resets_each_second() {
        let l = BadCancelLimiter::new(2);
        assert!(l.allow(10));
        l.failed();
        assert!(l.allow(10));
        l.failed();
        assert!(!l.allow(10));
        assert!(l.allow(11));
    }
}
