//! `sluice.v1.SnapshotService`: one bidirectional stream per data-plane
//! node (Envoy xDS mechanics).
//!
//! On connect the node says who it is and which version it runs; the
//! control plane sends the current snapshot at once and then every new
//! version, each with a fresh nonce. The node answers each response with
//! the version it applied (ACK) or `error_detail` (NACK: it keeps its last
//! good snapshot, and the same version is not sent again). Repeated
//! requests are heartbeats; a stream silent for longer than the node
//! timeout is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::nodes::{keep_registered, unix_ms};
use super::Shared;

pub struct SnapshotService {
    pub shared: Arc<Shared>,
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<proto::SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::snapshot_service_server::SnapshotService for SnapshotService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        req: Request<Streaming<proto::SnapshotRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = req.remote_addr();
        let role = super::peer::role(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no request within 10 s"))??
            .ok_or_else(|| Status::cancelled("stream closed before the first request"))?;
        let node = first
            .node
            .clone()
            .filter(|n| !n.id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first request must carry node.id"))?;
        super::peer::check_node_id(&role, &node.id).inspect_err(|e| {
            tracing::warn!(node = %node.id, ?peer, "node subscription refused: {}", e.message());
        })?;
        let (tx, rx) = mpsc::channel(4);
        let shared = self.shared.clone();
        tracing::info!(node = %node.id, ?peer, applied = first.applied_version, "node subscribed");
        tokio::spawn(serve_node(shared, node, first, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn serve_node(
    shared: Arc<Shared>,
    node: proto::Node,
    first: proto::SnapshotRequest,
    mut inbound: Streaming<proto::SnapshotRequest>,
    tx: mpsc::Sender<Result<proto::SnapshotResponse, Status>>,
) {
    let id = node.id.clone();
    let mut status = proto::NodeStatus {
        node: Some(node),
        applied_version: first.applied_version,
        latest_version: shared.latest_version(),
        last_error: first
            .error_detail
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default(),
        last_heartbeat_unix_ms: unix_ms(),
    };
    let (status_tx, status_rx) = watch::channel(status.clone());
    let registrar = tokio::spawn(keep_registered(
        shared.store.clone(),
        id.clone(),
        shared.node_ttl,
        status_rx,
    ));
    let stream_id = shared.next_stream_id();
    let mut sent = 0u64;
    let mut last_sent_version: Option<i64> = None;
    let mut current = shared.current.subscribe();
    // Send what there is now, then every change.
    current.mark_changed();
    loop {
        tokio::select! {
            changed = current.changed() => {
                if changed.is_err() {
                    break;
                }
                let cur = current.borrow_and_update().clone();
                let Some(cur) = cur else { continue };
                if last_sent_version == Some(cur.version) {
                    continue;
                }
                sent += 1;
                let resp = proto::SnapshotResponse {
                    version: cur.version,
                    nonce: format!("{stream_id:x}-{sent}"),
                    snapshot: Some((*cur.snapshot).clone()),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
                last_sent_version = Some(cur.version);
                status.latest_version = cur.version;
                let _ = status_tx.send(status.clone());
            }
            msg = tokio::time::timeout(shared.node_timeout, inbound.message()) => {
                let req = match msg {
                    Err(_) => {
                        tracing::warn!(node = %id, "no heartbeat within {:?}: closing its stream", shared.node_timeout);
                        let _ = tx.send(Err(Status::deadline_exceeded("heartbeat timeout"))).await;
                        break;
                    }
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::debug!(node = %id, "stream error: {e}");
                        break;
                    }
                };
                // The id is the stream's, fixed by its first request (and
                // checked against the certificate there): a node naming
                // another mid-stream would be listed under that name.
                if let Some(n) = req.node.as_ref().filter(|n| n.id != id) {
                    tracing::warn!(node = %id, claimed = %n.id, "node changed its id mid-stream: closing its stream");
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "node.id {:?} is not {id:?}, the id this stream was opened with",
                            n.id
                        ))))
                        .await;
                    break;
                }
                let error = req.error_detail.map(|e| e.message).unwrap_or_default();
                if !error.is_empty() && error != status.last_error {
                    tracing::warn!(node = %id, applied = req.applied_version, "node rejected snapshot (NACK): {error}");
                } else if req.applied_version != status.applied_version {
                    tracing::info!(node = %id, applied = req.applied_version, "node applied snapshot (ACK)");
                }
                status.applied_version = req.applied_version;
                status.last_error = error;
                status.last_heartbeat_unix_ms = unix_ms();
                if let Some(n) = req.node {
                    status.node = Some(n);
                }
                shared.acks.send_modify(|v| *v = v.wrapping_add(1));
                let _ = status_tx.send(status.clone());
            }
        }
    }
    tracing::info!(node = %id, "node stream closed");
    drop(status_tx);
    let _ = registrar.await;
}
