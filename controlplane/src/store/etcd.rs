//! [`EtcdStore`]: the production store, on etcd v3.
//!
//! Every key is stored as `<prefix><key>`; callers only ever see `<key>`.
//! etcd-client reconnects by itself; while etcd is unreachable every call
//! fails with [`StoreError::Unavailable`] after at most the operation timeout
//! (default 5 s) instead of waiting for a connection, so callers can retry.
//! A watch whose stream breaks yields one `Err(Unavailable)` and ends.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use etcd_client as ec;
use futures_util::stream;

use super::{
    check_cas, check_key, check_start_revision, ttl_secs, BoxFuture, KeyValue, LeaseId, Result,
    Revision, Store, StoreError, WatchEvent, WatchEventKind, WatchStream,
};

/// Default bound on one etcd request.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] on an etcd cluster, namespaced under a key prefix. Cheap to
/// clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: ec::Client,
    prefix: String,
    op_timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://host:port`; `https://` for
    /// TLS) with keys under `prefix` (e.g. `/sluice/`). Does not fail when
    /// etcd is down: the first calls do, with [`StoreError::Unavailable`].
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_with_timeout(endpoints, prefix, DEFAULT_OP_TIMEOUT).await
    }

    /// Like [`EtcdStore::connect`], with a bound on every request (and on
    /// establishing a watch).
    pub async fn connect_with_timeout(
        endpoints: &[String],
        prefix: &str,
        op_timeout: Duration,
    ) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidArgument(
                "no etcd endpoints given".into(),
            ));
        }
        let options = ec::ConnectOptions::new()
            .with_connect_timeout(op_timeout)
            // HTTP/2 pings on open streams: a watch on a dead connection fails
            // within interval + timeout instead of hanging.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_require_leader(true);
        let client =
            tokio::time::timeout(op_timeout, ec::Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| timed_out(op_timeout))?
                .map_err(|e| map_err(e, None))?;
        Ok(EtcdStore {
            client,
            prefix: prefix.to_owned(),
            op_timeout,
        })
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    async fn timed<T>(
        &self,
        lease: Option<LeaseId>,
        fut: impl Future<Output = std::result::Result<T, ec::Error>>,
    ) -> Result<T> {
        tokio::time::timeout(self.op_timeout, fut)
            .await
            .map_err(|_| timed_out(self.op_timeout))?
            .map_err(|e| map_err(e, lease))
    }

    /// A KV client that reads answers as large as etcd may hold: gRPC's
    /// default 4 MiB would refuse to read back a configuration that etcd
    /// took (its `--max-request-bytes` raised, as the README says to).
    fn kv_client(&self) -> ec::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    /// A watch client that reads events as large as etcd may hold.
    fn watch_client(&self) -> ec::WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    fn kv(&self, kv: &ec::KeyValue) -> Result<Option<KeyValue>> {
        convert_kv(&self.prefix, kv)
    }
}

/// Largest answer read from etcd: a prefix read of the configuration (up
/// to [`proto::MAX_CONFIG_BYTES`]) with the fetched JWKS documents, or a
/// watch event carrying them.
const MAX_ANSWER_BYTES: usize = proto::MAX_MESSAGE_BYTES;

fn timed_out(t: Duration) -> StoreError {
    StoreError::Unavailable(format!("etcd did not answer within {t:?}"))
}

/// Strips the namespace; `None` for a key outside it.
fn convert_kv(prefix: &str, kv: &ec::KeyValue) -> Result<Option<KeyValue>> {
    let Some(rest) = kv.key().strip_prefix(prefix.as_bytes()) else {
        return Ok(None);
    };
    let key = std::str::from_utf8(rest)
        .map_err(|_| StoreError::Corrupt(format!("non-UTF-8 key {:?} in etcd", kv.key())))?;
    Ok(Some(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    }))
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> Result<Revision> {
    h.map(|h| h.revision())
        .ok_or_else(|| StoreError::Other("etcd response without a header".into()))
}

/// Maps an etcd-client error; `lease` names the lease a "not found" is about.
fn map_err(e: ec::Error, lease: Option<LeaseId>) -> StoreError {
    use tonic::Code;
    match e {
        ec::Error::GRpcStatus(s) => {
            let msg = s.message().to_owned();
            match s.code() {
                Code::NotFound if msg.contains("lease") => {
                    StoreError::LeaseNotFound(lease.unwrap_or(0))
                }
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                    StoreError::InvalidArgument(format!("etcd: {msg}{}", too_large_hint(&msg)))
                }
                // A request over etcd's gRPC message limit is refused before
                // etcd reads it: retrying cannot help, it is not an outage.
                Code::ResourceExhausted if msg.contains("larger than max") => {
                    StoreError::InvalidArgument(format!("etcd: {msg}{}", too_large_hint(&msg)))
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal => StoreError::Unavailable(format!("etcd: {s}")),
                _ => StoreError::Other(format!("etcd: {s}")),
            }
        }
        ec::Error::TransportError(e) => StoreError::Unavailable(format!("etcd transport: {e}")),
        ec::Error::IoError(e) => StoreError::Unavailable(format!("etcd i/o: {e}")),
        ec::Error::WatchError(e) => StoreError::Unavailable(format!("etcd watch: {e}")),
        ec::Error::LeaseKeepAliveError(msg) => match lease {
            Some(id) if msg.contains("not found") => StoreError::LeaseNotFound(id),
            _ => StoreError::Unavailable(format!("etcd lease keep-alive: {msg}")),
        },
        ec::Error::InvalidArgs(m) => StoreError::InvalidArgument(m),
        ec::Error::InvalidUri(e) => StoreError::InvalidArgument(format!("etcd endpoint: {e}")),
        ec::Error::EndpointError(m) => StoreError::InvalidArgument(format!("etcd endpoint: {m}")),
        ec::Error::Utf8Error(e) => StoreError::Corrupt(format!("etcd: {e}")),
        other => StoreError::Other(format!("etcd: {other}")),
    }
}

/// What to do about a value etcd finds too large.
fn too_large_hint(msg: &str) -> &'static str {
    if msg.contains("too large") || msg.contains("larger than max") {
        " (etcd's --max-request-bytes, 1.5 MiB by default, bounds one request)"
    } else {
        ""
    }
}

struct WatchState {
    stream: ec::WatchStream,
    prefix: String,
    start: Option<Revision>,
    pending: VecDeque<WatchEvent>,
    done: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent>, WatchState)> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some((Ok(ev), self));
            }
            if self.done {
                return None;
            }
            let err = match self.stream.message().await {
                Ok(Some(resp)) if resp.canceled() => {
                    if resp.compact_revision() > 0 {
                        StoreError::Compacted {
                            requested: self.start.unwrap_or(0),
                            oldest: resp.compact_revision(),
                        }
                    } else {
                        StoreError::Unavailable(format!(
                            "etcd canceled the watch: {}",
                            resp.cancel_reason()
                        ))
                    }
                }
                Ok(Some(resp)) => {
                    for ev in resp.events() {
                        match self.convert(ev) {
                            Ok(Some(ev)) => self.pending.push_back(ev),
                            Ok(None) => {}
                            Err(e) => {
                                self.done = true;
                                return Some((Err(e), self));
                            }
                        }
                    }
                    continue;
                }
                Ok(None) => StoreError::Unavailable("etcd closed the watch stream".into()),
                Err(e) => match map_err(e, None) {
                    StoreError::Unavailable(m) => StoreError::Unavailable(m),
                    other => StoreError::Unavailable(format!("watch broken: {other}")),
                },
            };
            self.done = true;
            return Some((Err(err), self));
        }
    }

    fn convert(&self, ev: &ec::Event) -> Result<Option<WatchEvent>> {
        let Some(kv) = ev.kv() else {
            return Ok(None);
        };
        let Some(kv) = convert_kv(&self.prefix, kv)? else {
            return Ok(None);
        };
        let kind = match ev.event_type() {
            ec::EventType::Put => WatchEventKind::Put,
            ec::EventType::Delete => WatchEventKind::Delete,
        };
        Ok(Some(WatchEvent {
            kind,
            revision: kv.mod_revision,
            kv,
        }))
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            check_key(key)?;
            let mut kv = self.kv_client();
            let resp = self.timed(None, kv.get(self.full(key), None)).await?;
            match resp.kvs().first() {
                Some(kv) => self.kv(kv),
                None => Ok(None),
            }
        })
    }

    fn get_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision)>> {
        Box::pin(async move {
            let mut kv = self.kv_client();
            let opts = ec::GetOptions::new().with_prefix();
            let resp = self
                .timed(None, kv.get(self.full(prefix), Some(opts)))
                .await?;
            let mut out = Vec::with_capacity(resp.kvs().len());
            for kv in resp.kvs() {
                out.extend(self.kv(kv)?);
            }
            Ok((out, header_revision(resp.header())?))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>> {
        Box::pin(async move {
            check_key(key)?;
            let mut kv = self.kv_client();
            let opts = lease.map(|l| ec::PutOptions::new().with_lease(l));
            let resp = self
                .timed(lease, kv.put(self.full(key), value, opts))
                .await?;
            header_revision(resp.header())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Revision>>> {
        Box::pin(async move {
            check_key(key)?;
            let mut kv = self.kv_client();
            let resp = self.timed(None, kv.delete(self.full(key), None)).await?;
            if resp.deleted() == 0 {
                return Ok(None);
            }
            header_revision(resp.header()).map(Some)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let mut kv = self.kv_client();
            let opts = ec::DeleteOptions::new().with_prefix();
            let resp = self
                .timed(None, kv.delete(self.full(prefix), Some(opts)))
                .await?;
            Ok(usize::try_from(resp.deleted()).unwrap_or(0))
        })
    }

    fn txn_put_if_mod_revision<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> BoxFuture<'a, Result<Option<Revision>>> {
        Box::pin(async move {
            check_cas(key, expected_mod_revision)?;
            let full = self.full(key);
            let txn = ec::Txn::new()
                .when([ec::Compare::mod_revision(
                    full.clone(),
                    ec::CompareOp::Equal,
                    expected_mod_revision,
                )])
                .and_then([ec::TxnOp::put(full, value, None)]);
            let mut kv = self.kv_client();
            let resp = self.timed(None, kv.txn(txn)).await?;
            if !resp.succeeded() {
                return Ok(None);
            }
            header_revision(resp.header()).map(Some)
        })
    }

    fn watch_prefix<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(async move {
            let start = check_start_revision(start_revision)?;
            let mut opts = ec::WatchOptions::new().with_prefix();
            if let Some(r) = start {
                opts = opts.with_start_revision(r);
            }
            let mut wc = self.watch_client();
            let mut stream = self
                .timed(None, wc.watch(self.full(prefix), Some(opts)))
                .await?;
            // Wait until etcd has created the watch, so that every change
            // committed after we return is seen.
            match self.timed(None, stream.message()).await? {
                Some(resp) if resp.created() && !resp.canceled() => {}
                Some(resp) if resp.compact_revision() > 0 => {
                    return Err(StoreError::Compacted {
                        requested: start.unwrap_or(0),
                        oldest: resp.compact_revision(),
                    })
                }
                Some(resp) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd did not create the watch: {}",
                        resp.cancel_reason()
                    )))
                }
                None => {
                    return Err(StoreError::Unavailable(
                        "etcd closed the watch stream".into(),
                    ))
                }
            }
            let state = WatchState {
                stream,
                prefix: self.prefix.clone(),
                start,
                pending: VecDeque::new(),
                done: false,
            };
            let events = stream::unfold(state, WatchState::next);
            Ok(Box::pin(events) as WatchStream)
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        Box::pin(async move {
            let mut lc = self.client.lease_client();
            let resp = self.timed(None, lc.grant(ttl_secs(ttl), None)).await?;
            if !resp.error().is_empty() {
                return Err(StoreError::Other(format!(
                    "etcd lease grant: {}",
                    resp.error()
                )));
            }
            Ok(resp.id())
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Duration>> {
        Box::pin(async move {
            let mut lc = self.client.lease_client();
            let id = Some(lease);
            // Opening the stream sends one keep-alive and checks the answer;
            // a second one gives us the TTL it was reset to.
            let (mut keeper, mut answers) = self.timed(id, lc.keep_alive(lease)).await?;
            self.timed(id, keeper.keep_alive()).await?;
            match self.timed(id, answers.message()).await? {
                Some(resp) if resp.ttl() > 0 => Ok(Duration::from_secs(resp.ttl().unsigned_abs())),
                Some(_) => Err(StoreError::LeaseNotFound(lease)),
                None => Err(StoreError::Unavailable(
                    "etcd closed the lease keep-alive stream".into(),
                )),
            }
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut lc = self.client.lease_client();
            self.timed(Some(lease), lc.revoke(lease)).await?;
            Ok(())
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move {
            let mut kv = self.kv_client();
            let opts = ec::GetOptions::new().with_count_only();
            // Any key will do; the header carries the store revision.
            let key = if self.prefix.is_empty() {
                vec![0]
            } else {
                self.full("")
            };
            let resp = self.timed(None, kv.get(key, Some(opts))).await?;
            header_revision(resp.header())
        })
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_request_over_etcds_size_limits_is_refused_not_unavailable() {
        for status in [
            tonic::Status::resource_exhausted(
                "grpc: received message larger than max (2296099 vs. 2097152)",
            ),
            tonic::Status::invalid_argument("etcdserver: request is too large"),
        ] {
            match map_err(ec::Error::GRpcStatus(status), None) {
                StoreError::InvalidArgument(m) => {
                    assert!(m.contains("--max-request-bytes"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Running out of quota or streams is still an outage to wait out.
        let s = tonic::Status::resource_exhausted("etcdserver: mvcc: database space exceeded");
        assert!(map_err(ec::Error::GRpcStatus(s), None).is_retryable());
    }
}
