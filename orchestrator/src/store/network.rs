//! Peer-to-peer transport of the store: raft RPCs and forwarded client requests on
//! QUIC, ALPN `flotilla-raft/1`, mutual TLS with `peer:ID` certificates. One cached
//! connection per peer, one stream per RPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use flotilla_client::resolve;
use flotilla_client::tls::SERVER_NAME;
use flotilla_client::wire::{encode_frame_max, read_frame, FrameError};

use super::types::{CommandResponse, PeerId, Proposal, TypeConfig};

/// Largest frame between peers: appends carry batches of objects.
pub const MAX_PEER_FRAME: usize = 96 * 1024 * 1024;

/// A request from one peer to another.
#[derive(Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft AppendEntries.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<PeerId>),
    /// Raft InstallSnapshot (one chunk).
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client request a follower passes to the leader.
    Forward(Forward),
}

/// What followers forward to the leader.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Forward {
    /// Commit a batch of commands as one entry.
    Write(Proposal),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex,
    /// Add a voter.
    AddPeer {
        /// Its id.
        id: PeerId,
        /// Its address.
        address: String,
    },
    /// Remove a peer.
    RemovePeer {
        /// Its id.
        id: PeerId,
    },
}

/// Why a forwarded request failed.
#[derive(Serialize, Deserialize, Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader (it may know who is).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<PeerId>,
    },
    /// The leader could not reach a quorum in time.
    #[error("{0}")]
    NoQuorum(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A peer's answer.
#[derive(Serialize, Deserialize)]
pub enum PeerResponse {
    /// To Append.
    Append(Result<AppendEntriesResponse<PeerId>, RaftError<PeerId>>),
    /// To Vote.
    Vote(Result<VoteResponse<PeerId>, RaftError<PeerId>>),
    /// To Snapshot.
    Snapshot(Result<InstallSnapshotResponse<PeerId>, RaftError<PeerId, InstallSnapshotError>>),
    /// To Forward::Write.
    Write(Result<Vec<CommandResponse>, ForwardError>),
    /// To Forward::ReadIndex.
    ReadIndex(Result<u64, ForwardError>),
    /// To membership forwards.
    Done(Result<(), ForwardError>),
    /// The request was refused (bad frame, wrong identity).
    Refused(String),
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made.
    #[error("peer {peer} at {addr} is unreachable: {reason}")]
    Unreachable {
        /// Peer id.
        peer: PeerId,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The call started but did not complete.
    #[error("call to peer {peer} failed: {reason}")]
    Failed {
        /// Peer id.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The request is more than a peer accepts in one message.
    #[error("a request of {len} bytes to peer {peer} is over the limit of {MAX_PEER_FRAME}")]
    TooLarge {
        /// Peer id.
        peer: PeerId,
        /// The request's encoded size.
        len: usize,
    },
    /// No answer in time.
    #[error("call to peer {peer} timed out after {after:?}")]
    Timeout {
        /// Peer id.
        peer: PeerId,
        /// The deadline.
        after: Duration,
    },
}

type Slot = Arc<tokio::sync::Mutex<Option<(String, quinn::Connection)>>>;

/// Connections to the other peers, and when each last answered.
pub struct PeerNet {
    endpoint: quinn::Endpoint,
    /// Replaced when this peer renews its certificate; connections made
    /// before keep going (TLS checks certificates at the handshake only).
    client_config: Mutex<quinn::ClientConfig>,
    slots: Mutex<HashMap<PeerId, Slot>>,
    seen: Mutex<HashMap<PeerId, Instant>>,
    /// When each peer last answered a call of ours.
    answered: Mutex<HashMap<PeerId, Instant>>,
}

/// A connection whose calls have gone unanswered this long is dropped at the
/// next timeout and dialled again. A restarted peer cannot tell us the old
/// connection is gone (its reset token died with the old process), so QUIC
/// alone would keep timing out until its idle timeout (3 s).
const UNANSWERED_REDIAL: Duration = Duration::from_secs(2);

impl PeerNet {
    /// Uses `endpoint` (the server's own) to dial peers with `client_config`.
    pub fn new(endpoint: quinn::Endpoint, client_config: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            client_config: Mutex::new(client_config),
            slots: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }
    }

    /// Dials peers with `client_config` from now on (after a certificate
    /// renewal).
    pub fn set_client_config(&self, client_config: quinn::ClientConfig) {
        *self.client_config.lock().unwrap_or_else(|p| p.into_inner()) = client_config;
    }

    /// Records that `peer` answered or called just now.
    pub fn mark_seen(&self, peer: PeerId) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// Peers heard from within `within`.
    pub fn answering(&self, within: Duration) -> Vec<PeerId> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<PeerId> = seen
            .iter()
            .filter(|(_, t)| t.elapsed() <= within)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `peer` answered a call of ours within `within`.
    pub fn answered_within(&self, peer: PeerId, within: Duration) -> bool {
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .is_some_and(|t| t.elapsed() <= within)
    }

    fn slot(&self, peer: PeerId) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer)
            .or_default()
            .clone()
    }

    async fn connection(
        &self,
        peer: PeerId,
        addr: &str,
        deadline: Instant,
    ) -> Result<quinn::Connection, CallError> {
        let slot = self.slot(peer);
        let mut guard = slot.lock().await;
        if let Some((cached_addr, conn)) = guard.as_ref() {
            if cached_addr == addr && conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let unreachable = |reason: String| CallError::Unreachable {
            peer,
            addr: addr.to_string(),
            reason,
        };
        let sock = resolve(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let client_config = self
            .client_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let connecting = self
            .endpoint
            .connect_with(client_config, sock, SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let conn = tokio::time::timeout(remaining.min(Duration::from_secs(2)), connecting)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        // The handshake proved a peer of this cluster; raft must reach the
        // one it means, or votes and entries go to whoever holds the address.
        let answered = flotilla_client::tls::connection_identity(&conn).unwrap_or_default();
        if answered != format!("peer:{peer}") {
            conn.close(0u32.into(), b"not the peer dialled");
            return Err(unreachable(format!(
                "the server at {addr} is {}, not peer:{peer}",
                if answered.is_empty() {
                    "anonymous"
                } else {
                    &answered
                }
            )));
        }
        *guard = Some((addr.to_string(), conn.clone()));
        Ok(conn)
    }

    async fn forget(&self, peer: PeerId) {
        let slot = self.slot(peer);
        *slot.lock().await = None;
    }

    /// One request, one answer, within `timeout`.
    pub async fn call(
        &self,
        peer: PeerId,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let deadline = Instant::now() + timeout;
        let frame = match encode_frame_max(req, MAX_PEER_FRAME) {
            Ok(frame) => frame,
            Err(FrameError::TooLarge { len, .. }) => return Err(CallError::TooLarge { peer, len }),
            Err(e) => {
                return Err(CallError::Failed {
                    peer,
                    reason: e.to_string(),
                })
            }
        };
        let conn = self.connection(peer, addr, deadline).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            read_frame::<_, PeerResponse>(&mut recv, MAX_PEER_FRAME)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the peer closed the stream without answering".to_string())
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, exchange).await {
            Ok(Ok(resp)) => {
                self.mark_seen(peer);
                self.answered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer, Instant::now());
                Ok(resp)
            }
            Ok(Err(reason)) => {
                self.forget(peer).await;
                Err(CallError::Failed { peer, reason })
            }
            Err(_) => {
                let silent = self
                    .answered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&peer)
                    .is_none_or(|t| t.elapsed() > UNANSWERED_REDIAL);
                if silent {
                    self.forget(peer).await;
                }
                Err(CallError::Timeout {
                    peer,
                    after: timeout,
                })
            }
        }
    }
}

/// The raft network factory over [`PeerNet`].
#[derive(Clone)]
pub struct Network {
    net: Arc<PeerNet>,
}

impl Network {
    /// Wraps the shared peer connections.
    pub fn new(net: Arc<PeerNet>) -> Self {
        Self { net }
    }
}

/// A raft client for one peer.
pub struct PeerClient {
    net: Arc<PeerNet>,
    target: PeerId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: PeerId, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.net.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// Most bytes of entries in one append. Raft gives an append one heartbeat
/// interval to be sent and answered, so an append must stay small enough to
/// cross the link and be written in that time, however far behind the
/// follower is; a follower catching up takes several.
pub const APPEND_BYTES: usize = 2 * 1024 * 1024;

/// About what an entry takes in an append.
fn entry_size(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(proposal) => {
            64 + proposal.commands.iter().map(|c| c.size()).sum::<usize>()
        }
        openraft::EntryPayload::Blank | openraft::EntryPayload::Membership(_) => 256,
    }
}

/// How many of the first `entries` fit within `budget` bytes; at least one,
/// since raft must send something (an entry is kept small by the proposer:
/// see its `MAX_ENTRY_BYTES`).
fn entries_that_fit(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut used = 0;
    let fit = entries
        .iter()
        .take_while(|entry| {
            used += entry_size(entry);
            used <= budget
        })
        .count();
    fit.max(1)
}

fn rpc_error<E: std::error::Error>(e: CallError) -> RPCError<PeerId, BasicNode, E> {
    match e {
        CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<PeerId, BasicNode, E> {
    let e = std::io::Error::other(format!("unexpected answer to {what}"));
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<PeerId>, RPCError<PeerId, BasicNode, RaftError<PeerId>>> {
        // Raft sends the first entries again at once, as many as fit.
        let fit = entries_that_fit(&rpc.entries, APPEND_BYTES);
        if fit < rpc.entries.len() {
            tracing::debug!(entries = rpc.entries.len(), fit, "splitting an append");
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit as u64),
            ));
        }
        let resp = self
            .net
            .call(
                self.target,
                &self.addr,
                &PeerRequest::Append(rpc),
                option.hard_ttl(),
            )
            .await
            .map_err(rpc_error)?;
        match resp {
            PeerResponse::Append(Ok(r)) => Ok(r),
            PeerResponse::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("append")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<PeerId>,
        RPCError<PeerId, BasicNode, RaftError<PeerId, InstallSnapshotError>>,
    > {
        let resp = self
            .net
            .call(
                self.target,
                &self.addr,
                &PeerRequest::Snapshot(rpc),
                option.hard_ttl(),
            )
            .await
            .map_err(rpc_error)?;
        match resp {
            PeerResponse::Snapshot(Ok(r)) => Ok(r),
            PeerResponse::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("install snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<PeerId>,
        option: RPCOption,
    ) -> Result<VoteResponse<PeerId>, RPCError<PeerId, BasicNode, RaftError<PeerId>>> {
        let resp = self
            .net
            .call(
                self.target,
                &self.addr,
                &PeerRequest::Vote(rpc),
                option.hard_ttl(),
            )
            .await
            .map_err(rpc_error)?;
        match resp {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("vote")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Action, Command, Op, Precondition, Proposal};

    fn entry(index: u64, bytes: usize) -> openraft::Entry<TypeConfig> {
        let put = Op {
            key: format!("/blob/{index}"),
            precondition: Precondition::None,
            action: Action::Put(vec![0; bytes]),
        };
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Proposal {
                commands: vec![Command { ops: vec![put] }],
            }),
        }
    }

    #[test]
    fn an_append_carries_the_first_entries_that_fit_and_always_one() {
        let mib = 1024 * 1024;
        let entries: Vec<_> = (1..=5).map(|i| entry(i, mib - 200)).collect();
        assert_eq!(entries_that_fit(&entries, APPEND_BYTES), 2);
        assert_eq!(entries_that_fit(&entries[..1], APPEND_BYTES), 1);
        let huge = [entry(1, 3 * mib)];
        assert_eq!(entries_that_fit(&huge, APPEND_BYTES), 1);
        let small: Vec<_> = (1..=100).map(|i| entry(i, 100)).collect();
        assert_eq!(entries_that_fit(&small, APPEND_BYTES), 100);
    }
}
