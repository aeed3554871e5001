//! `sluice.v1.AuditIngest` (data-plane nodes ship their audit records) and
//! `sluice.v1.AuditQuery` (`sluicectl audit …`, `session replay`,
//! `evidence`), over one [`AuditSink`].
//!
//! Ingest, one task per stream (the exact protocol is documented at
//! `service AuditIngest` in `audit.proto`): the first message names the
//! node and is answered with the sink's `durable_through` for it; each
//! batch is appended (the sink chains and fsyncs/commits) and answered
//! with the new `durable_through`; a batch that skips sequences is
//! answered `{durable_through, resend: true}`; while the sink is
//! unavailable the batch is retried with backoff on the open stream and
//! nothing is acknowledged. After a stream's first stored batch (before
//! its ack), then at most every `witness::WITNESS_INTERVAL` and at the
//! stream's end, the sink's chain head for the node is written to the
//! configuration store as its witness (see `audit::witness`), which
//! `verify` checks chains against. Nothing is kept per stream but the node
//! id and when its witness was last written, so
//! any replica may take over a node's stream: with the PostgreSQL sink
//! every replica writes the same chains (the sink serialises appenders per
//! node); the file sink belongs to one process.

use std::collections::HashSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::Stream;
use proto::{
    AuditAck, AuditBatch, AuditRecord, EvidenceRequest, EvidenceResponse, FindingKind, NamedCount,
    ReplayRequest, ReplayResponse, SearchRequest, SearchResponse, VerifyFinding, VerifyRequest,
    VerifyResponse,
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::config::Current;
use super::Shared;
use crate::audit::evidence::Tally;
use crate::audit::sink::validate_node_id;
use crate::audit::witness::{self, Witnesses, WITNESS_INTERVAL, WRITE_TIMEOUT};
use crate::audit::{replay, AuditSink, FileSink, PgSink, SinkError};
use crate::grants::Grants;
use crate::store::Store;

/// How long a new stream may take to send its first message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry backoff while the sink is unavailable: first and longest wait.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Largest batch message accepted (bytes).
pub const MAX_BATCH_BYTES: usize = proto::MAX_AUDIT_BATCH_BYTES;
/// Largest query answer sent (bytes).
pub const MAX_ANSWER_BYTES: usize = 256 << 20;
/// Most records one search returns, whatever the request asks.
pub const MAX_SEARCH_LIMIT: u32 = 100_000;
/// Records read per page while counting evidence.
const EVIDENCE_PAGE: u32 = 10_000;

/// Where `sluice-cp` keeps audit records.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// The embedded file sink in this directory (`--audit-dir`).
    Files(PathBuf),
    /// PostgreSQL at this libpq-style connection string (`--audit-postgres`).
    Postgres(String),
}

/// The audit sink, once it is open. The file sink opens at start (an error
/// stops `sluice-cp`); PostgreSQL may be down when `sluice-cp` starts, so it
/// is connected in the background with backoff, and until then ingest
/// streams wait and queries answer `UNAVAILABLE`.
#[derive(Clone)]
pub struct AuditSinks {
    rx: watch::Receiver<Option<Arc<dyn AuditSink>>>,
    /// "files" or "postgresql".
    pub kind: &'static str,
}

impl AuditSinks {
    /// A sink that is already open.
    pub fn ready(sink: Arc<dyn AuditSink>, kind: &'static str) -> AuditSinks {
        AuditSinks {
            rx: watch::channel(Some(sink)).1,
            kind,
        }
    }

    /// Opens the configured sink. Errors name the flag.
    pub async fn open(cfg: &SinkConfig) -> anyhow::Result<AuditSinks> {
        match cfg {
            SinkConfig::Files(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--audit-dir: cannot create {}", dir.display()))?;
                let sink = FileSink::open(dir)
                    .await
                    .with_context(|| format!("--audit-dir {}", dir.display()))?;
                tracing::info!(dir = %dir.display(), "audit sink: files");
                Ok(AuditSinks::ready(Arc::new(sink), "files"))
            }
            SinkConfig::Postgres(dsn) => {
                dsn.parse::<tokio_postgres::Config>().map_err(|e| {
                    anyhow::anyhow!("--audit-postgres: not a PostgreSQL connection string: {e}")
                })?;
                let (tx, rx) = watch::channel(None);
                tokio::spawn(connect_postgres(dsn.clone(), tx));
                Ok(AuditSinks {
                    rx,
                    kind: "postgresql",
                })
            }
        }
    }

    /// The sink, or `Unavailable` while it is not connected yet.
    pub fn get(&self) -> Result<Arc<dyn AuditSink>, SinkError> {
        self.rx.borrow().clone().ok_or_else(|| {
            SinkError::Unavailable(format!("the {} audit sink is not connected yet", self.kind))
        })
    }
}

/// Connects the PostgreSQL sink, retrying with backoff; publishes it once.
async fn connect_postgres(dsn: String, tx: watch::Sender<Option<Arc<dyn AuditSink>>>) {
    let mut backoff = RETRY_FIRST;
    loop {
        match PgSink::connect(&dsn).await {
            Ok(sink) => {
                tracing::info!("audit sink: PostgreSQL connected (schema sluice_audit)");
                let _ = tx.send(Some(Arc::new(sink)));
                return;
            }
            Err(e) => {
                tracing::warn!("--audit-postgres: cannot connect ({e}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The status a query answers for a sink error.
pub fn sink_status(e: SinkError) -> Status {
    match e {
        SinkError::InvalidArgument(m) => Status::invalid_argument(m),
        SinkError::Gap { .. } => Status::failed_precondition(e.to_string()),
        SinkError::Unavailable(_) | SinkError::Io { .. } | SinkError::Locked(_) => {
            Status::unavailable(e.to_string())
        }
        SinkError::Poisoned => Status::unavailable(e.to_string()),
    }
}

// ---------------------------------------------------------------- ingest

pub struct IngestService {
    pub sinks: AuditSinks,
    /// Where chain heads are witnessed (see `audit::witness`).
    pub store: Arc<dyn Store>,
    /// The node ids with an audit stream open on this replica: a second
    /// stream under one of them is refused (two nodes given one name
    /// would each take the other's records for stored, and drop them).
    pub open: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A node id's place in [`IngestService::open`] while its stream lasts.
struct OpenStream {
    open: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    node: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<AuditAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::audit_ingest_server::AuditIngest for IngestService {
    type ShipStream = AckStream;

    async fn ship(
        &self,
        req: Request<Streaming<AuditBatch>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        let peer = req.remote_addr();
        let role = crate::server::peer::role(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no first message within {}s",
                    FIRST_MESSAGE_TIMEOUT.as_secs()
                ))
            })??
            .ok_or_else(|| Status::cancelled("stream closed before the first message"))?;
        if first.node_id.is_empty() {
            return Err(Status::invalid_argument(
                "the first AuditBatch of a stream must carry node_id",
            ));
        }
        validate_node_id(&first.node_id).map_err(sink_status)?;
        crate::server::peer::check_node_id(&role, &first.node_id).inspect_err(|e| {
            tracing::warn!(node = %first.node_id, ?peer, "audit stream refused: {}", e.message());
        })?;
        if !self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(first.node_id.clone())
        {
            tracing::warn!(node = %first.node_id, ?peer, "audit stream refused: this node id already has one open (two nodes with one name?)");
            return Err(Status::already_exists(format!(
                "node {} already has an audit stream open on this control plane: \
                 two nodes with one node_name would drop each other's records",
                first.node_id
            )));
        }
        let guard = OpenStream {
            open: self.open.clone(),
            node: first.node_id.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        tracing::info!(node = %first.node_id, ?peer, "audit stream opened");
        let sinks = self.sinks.clone();
        let mut witness = WitnessWriter {
            store: self.store.clone(),
            node: first.node_id.clone(),
            tried: None,
            witnessed: 0,
            durable: 0,
        };
        tokio::spawn(async move {
            serve_stream(sinks.clone(), first, inbound, tx, &mut witness).await;
            witness.finish(sinks);
            drop(guard);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

type AckSender = mpsc::Sender<Result<AuditAck, Status>>;

/// Why a stream stops.
enum Stop {
    /// The node went away.
    Gone,
    /// Tell the node this and end the stream.
    Fail(Status),
}

async fn serve_stream(
    sinks: AuditSinks,
    first: AuditBatch,
    mut inbound: Streaming<AuditBatch>,
    tx: AckSender,
    witness: &mut WitnessWriter,
) {
    let node = first.node_id.clone();
    let result = async {
        let durable = with_retry(&node, &tx, || {
            let sinks = sinks.clone();
            let node = node.clone();
            async move { sinks.get()?.durable_through(&node).await }
        })
        .await?;
        send(&tx, ack(&node, durable, false)).await?;
        tracing::debug!(node = %node, durable, "audit stream: hello answered");
        // The hello is answered; records in it are a batch of their own.
        let mut next = (!first.records.is_empty()).then_some(first.records);
        loop {
            let Some(batch) = next.take() else {
                next = Some(read_batch(&node, &mut inbound).await?);
                continue;
            };
            if batch.is_empty() {
                let durable = with_retry(&node, &tx, || {
                    let sinks = sinks.clone();
                    let node = node.clone();
                    async move { sinks.get()?.durable_through(&node).await }
                })
                .await?;
                send(&tx, ack(&node, durable, false)).await?;
            } else {
                let (durable, resend) = store_batch(&sinks, &node, batch, &tx).await?;
                if !resend {
                    // (Before the ack: a batch acknowledged on a stream is
                    // witnessed as far as its first stored batch.)
                    witness.stored(&sinks, durable).await;
                }
                send(&tx, ack(&node, durable, resend)).await?;
            }
        }
    }
    .await;
    match result {
        Ok(()) | Err(Stop::Gone) => {}
        Err(Stop::Fail(status)) => {
            tracing::warn!(node = %node, "audit stream ended: {}", status.message());
            let _ = tx.send(Err(status)).await;
        }
    }
    tracing::info!(node = %node, "audit stream closed");
}

/// The records of the node's next message.
async fn read_batch(
    node: &str,
    inbound: &mut Streaming<AuditBatch>,
) -> Result<Vec<AuditRecord>, Stop> {
    let msg = match inbound.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Err(Stop::Gone),
        Err(e) => {
            tracing::debug!(node, "audit stream error: {e}");
            return Err(Stop::Gone);
        }
    };
    if !msg.node_id.is_empty() && msg.node_id != node {
        return Err(Stop::Fail(Status::invalid_argument(format!(
            "this stream belongs to node {node:?}, not {:?}",
            msg.node_id
        ))));
    }
    Ok(msg.records)
}

fn ack(node: &str, durable_through: u64, resend: bool) -> AuditAck {
    AuditAck {
        node_id: node.to_string(),
        durable_through,
        resend,
    }
}

async fn send(tx: &AckSender, a: AuditAck) -> Result<(), Stop> {
    tx.send(Ok(a)).await.map_err(|_| Stop::Gone)
}

/// Appends one batch; retries while the sink is down. The ack to answer it
/// with: `durable_through`, and whether to ask for a resend (a gap).
async fn store_batch(
    sinks: &AuditSinks,
    node: &str,
    mut records: Vec<AuditRecord>,
    tx: &AckSender,
) -> Result<(u64, bool), Stop> {
    for r in &mut records {
        if let Some(md) = r.metadata.as_mut() {
            if md.id.is_empty() {
                md.id = format!("{node}-{}", md.sequence);
            }
        }
    }
    let first = records
        .first()
        .and_then(|r| r.metadata.as_ref())
        .map_or(0, |m| m.sequence);
    let n = records.len();
    let outcome = with_retry(node, tx, || {
        let sinks = sinks.clone();
        let records = records.clone();
        async move {
            match sinks.get()?.append(node, records).await {
                Ok(d) => Ok(Ok(d)),
                Err(SinkError::Gap { expected, got, .. }) => Ok(Err((expected, got))),
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    match outcome {
        Ok(durable) => {
            tracing::debug!(node, first, n, durable, "audit batch stored");
            Ok((durable, false))
        }
        Err((expected, got)) => {
            tracing::warn!(
                node,
                "audit batch starts at sequence {got} but {expected} is next: not stored; \
                 asking the node to resend from {expected}"
            );
            Ok((expected - 1, true))
        }
    }
}

/// Writes one stream's witnesses (see `audit::witness`).
struct WitnessWriter {
    store: Arc<dyn Store>,
    node: String,
    /// When this stream last tried to write the witness.
    tried: Option<tokio::time::Instant>,
    /// Through which sequence this stream's writes succeeded.
    witnessed: u64,
    /// The latest `durable_through` of this stream's batches.
    durable: u64,
}

impl WitnessWriter {
    /// After a batch is stored through `durable`: on the stream's first
    /// stored batch, and then once per [`WITNESS_INTERVAL`], moves the
    /// witness to the sink's head, waiting for it at most
    /// [`WRITE_TIMEOUT`]. A failed write is logged and tried again an
    /// interval later (a store that is down is not asked for every batch).
    async fn stored(&mut self, sinks: &AuditSinks, durable: u64) {
        self.durable = self.durable.max(durable);
        let due = self.durable > self.witnessed
            && self.tried.is_none_or(|at| at.elapsed() >= WITNESS_INTERVAL);
        if !due {
            return;
        }
        self.tried = Some(tokio::time::Instant::now());
        if let Some(through) = write_witness(sinks, &*self.store, &self.node).await {
            self.witnessed = self.witnessed.max(through);
        }
    }

    /// At the stream's end: what it stored since the last witness that
    /// was written is witnessed, in the background.
    fn finish(self, sinks: AuditSinks) {
        if self.durable > self.witnessed {
            tokio::spawn(async move { write_witness(&sinks, &*self.store, &self.node).await });
        }
    }
}

/// Moves `node`'s witness in `store` to the sink's head, within
/// [`WRITE_TIMEOUT`]: the sequence witnessed (the store's witness may be
/// past it), or None when the write failed (logged).
async fn write_witness(sinks: &AuditSinks, store: &dyn Store, node: &str) -> Option<u64> {
    let write = async {
        let sink = sinks.get().map_err(|e| e.to_string())?;
        let Some(head) = sink.head(node).await.map_err(|e| e.to_string())? else {
            return Ok(0);
        };
        witness::advance(store, node, &head)
            .await
            .map(|_| {
                tracing::debug!(node, sequence = head.sequence, "audit witness written");
                head.sequence
            })
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(through)) => Some(through),
        Ok(Err(e)) => {
            tracing::warn!(node, "cannot write the audit chain's witness: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(
                node,
                "the configuration store did not take the audit chain's witness within {WRITE_TIMEOUT:?}"
            );
            None
        }
    }
}

/// Runs `op` until it succeeds, retrying retryable sink errors with backoff
/// while the node is still there.
async fn with_retry<T, F, Fut>(node: &str, tx: &AckSender, mut op: F) -> Result<T, Stop>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let mut backoff = RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(node, failures, "audit sink available again");
                }
                return Ok(v);
            }
            Err(e) if e.is_retryable() => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(
                        node,
                        failures,
                        "audit sink unavailable, holding the batch (nothing acknowledged): {e}; \
                         retrying in {backoff:?}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return Err(Stop::Gone),
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(Stop::Fail(sink_status(e))),
        }
    }
}

// ---------------------------------------------------------------- queries

pub struct QueryService {
    pub sinks: AuditSinks,
    pub shared: Arc<Shared>,
}

impl QueryService {
    fn sink(&self) -> Result<Arc<dyn AuditSink>, Status> {
        self.sinks.get().map_err(sink_status)
    }

    fn current(&self) -> Result<Current, Status> {
        self.shared
            .current
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("the configuration is not loaded yet"))
    }

    /// Verifies every node's chain (or `node`'s) against the sink's heads
    /// and the store's witnesses (see `audit::witness`). A witness the store
    /// holds but that cannot be read is a finding of its own.
    async fn verify_chains(&self, node: Option<&str>) -> Result<VerifyResponse, Status> {
        let sink = self.sink()?;
        let witnesses = Witnesses::load(&*self.shared.store).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot read the audit witnesses from the configuration store: {e}"
            ))
        })?;
        let mut resp = sink
            .verify_witnessed(node, &witnesses.nodes)
            .await
            .map_err(sink_status)?;
        let only = |n: &str| node.is_none_or(|o| o == n);
        resp.nodes_witnessed = witnesses.nodes.keys().filter(|n| only(n)).count() as u32;
        for (n, why) in witnesses.unreadable.iter().filter(|(n, _)| only(n)) {
            resp.findings.push(VerifyFinding {
                node_id: n.clone(),
                kind: FindingKind::Edited as i32,
                first_sequence: 0,
                last_sequence: 0,
                detail: format!(
                    "the control plane's store holds a witness of this node that cannot be \
                     read ({why})"
                ),
            });
        }
        Ok(resp)
    }
}

fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Feeds every record of `[from, to)` to `f`, a page at a time.
///
/// Pages are cut by time: the next page starts at the microsecond of the
/// last record seen (the PostgreSQL sink keeps microseconds), and records
/// already seen at that microsecond are skipped. A page made only of seen
/// records doubles the page size, so a crowd at one microsecond ends too.
async fn for_each_record(
    sink: &dyn AuditSink,
    from: i64,
    to: i64,
    mut f: impl FnMut(&AuditRecord),
) -> Result<(), SinkError> {
    let mut cursor = from;
    // Records handled at microsecond `seen_micros` (the latest one).
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut seen_micros: Option<i64> = None;
    let mut page = EVIDENCE_PAGE;
    loop {
        let resp = sink
            .search(&SearchRequest {
                from_unix_nanos: cursor,
                to_unix_nanos: to,
                limit: page,
                ..Default::default()
            })
            .await?;
        let mut fresh = 0usize;
        for r in &resp.records {
            let md = r.metadata.clone().unwrap_or_default();
            let micros = md.time_unix_nanos.div_euclid(1000);
            let key = (md.node_id, md.sequence);
            if seen_micros == Some(micros) && seen.contains(&key) {
                continue;
            }
            fresh += 1;
            f(r);
            if seen_micros != Some(micros) {
                seen.clear();
                seen_micros = Some(micros);
            }
            seen.insert(key);
        }
        if !resp.truncated {
            return Ok(());
        }
        match seen_micros {
            Some(m) if fresh > 0 => cursor = m.saturating_mul(1000).max(from),
            _ => page = page.saturating_mul(2),
        }
    }
}

#[tonic::async_trait]
impl proto::audit_query_server::AuditQuery for QueryService {
    async fn search(
        &self,
        req: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let mut req = req.into_inner();
        req.limit = req.limit.min(MAX_SEARCH_LIMIT);
        let resp = self.sink()?.search(&req).await.map_err(sink_status)?;
        Ok(Response::new(resp))
    }

    async fn verify(
        &self,
        req: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let req = req.into_inner();
        let node = (!req.node_id.is_empty()).then_some(req.node_id.as_str());
        let resp = self.verify_chains(node).await?;
        if node.is_some() && resp.nodes_checked == 0 {
            return Err(Status::not_found(format!(
                "no audit records of node {:?}",
                req.node_id
            )));
        }
        Ok(Response::new(resp))
    }

    async fn replay(
        &self,
        req: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let req = req.into_inner();
        if req.session_id.is_empty() {
            return Err(Status::invalid_argument("give a session id"));
        }
        let records = self
            .sink()?
            .records_for_session(&req.session_id)
            .await
            .map_err(sink_status)?;
        if records.is_empty() {
            return Err(Status::not_found(format!(
                "no audit records for session {:?}",
                req.session_id
            )));
        }
        let mut resp = ReplayResponse {
            records,
            ..Default::default()
        };
        if req.evaluate {
            let current = self.current()?;
            let grants = Grants::new(&current.snapshot.resources);
            resp.evaluations = replay::evaluate_all(&grants, &resp.records);
            resp.evaluated_version = current.version;
        }
        Ok(Response::new(resp))
    }

    async fn evidence(
        &self,
        req: Request<EvidenceRequest>,
    ) -> Result<Response<EvidenceResponse>, Status> {
        let req = req.into_inner();
        if req.to_unix_nanos != 0 && req.to_unix_nanos <= req.from_unix_nanos {
            return Err(Status::invalid_argument(
                "the time range is empty: `to` must be after `from`",
            ));
        }
        let sink = self.sink()?;
        let mut tally = Tally::new(req.from_unix_nanos, req.to_unix_nanos, req.samples);
        for_each_record(&*sink, req.from_unix_nanos, req.to_unix_nanos, |r| {
            tally.add(r)
        })
        .await
        .map_err(sink_status)?;
        let mut resp = tally.finish();
        resp.verification = Some(self.verify_chains(None).await?);
        resp.generated_unix_nanos = unix_nanos();
        if let Ok(current) = self.current() {
            resp.config_version = current.version;
            resp.configured = proto::KINDS
                .iter()
                .map(|k| NamedCount {
                    name: k.to_string(),
                    count: current
                        .snapshot
                        .resources
                        .iter()
                        .filter(|r| r.kind == *k)
                        .count() as u64,
                })
                .collect();
        }
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::AuditMetadata;

    fn rec(node: &str, seq: u64, t: i64) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                node_id: node.into(),
                sequence: seq,
                time_unix_nanos: t,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn paging_sees_every_record_once_even_in_a_crowd() {
        let d = tempfile::tempdir().unwrap();
        let sink = FileSink::open(d.path()).await.unwrap();
        // 25,000 records: 12,000 in one microsecond, the rest spread out.
        let mut recs = Vec::new();
        for s in 1..=25_000u64 {
            let t = if (5_000..17_000).contains(&s) {
                1_000_000
            } else {
                s as i64 * 1000 + 7
            };
            recs.push(rec("n", s, t));
        }
        sink.append("n", recs).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut count = 0;
        for_each_record(&sink, 0, 0, |r| {
            count += 1;
            seen.insert(r.metadata.as_ref().unwrap().sequence);
        })
        .await
        .unwrap();
        assert_eq!((count, seen.len()), (25_000, 25_000));
        // A range.
        let mut n = 0;
        for_each_record(&sink, 1_000_000, 30_000_000, |_| n += 1)
            .await
            .unwrap();
        let want = (1..=25_000u64)
            .filter(|s| {
                let t = if (5_000..17_000).contains(s) {
                    1_000_000
                } else {
                    *s as i64 * 1000 + 7
                };
                (1_000_000..30_000_000).contains(&t)
            })
            .count();
        assert_eq!(n, want);
    }

    #[tokio::test]
    async fn unconnected_sink_is_unavailable() {
        let (_tx, rx) = watch::channel(None);
        let s = AuditSinks {
            rx,
            kind: "postgresql",
        };
        let e = s.get().err().unwrap();
        assert!(e.is_retryable());
        assert_eq!(sink_status(e).code(), tonic::Code::Unavailable);
    }
}
