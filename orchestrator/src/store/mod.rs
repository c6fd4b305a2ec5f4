//! The store: the cluster's single source of truth, an openraft-replicated key
//! space of 1, 3 or 5 peers. The raft log lives in our write-ahead log
//! ([`wal`]), the key space and snapshots in sled ([`backend`]).
//!
//! Writes are commands of compare-and-swap operations; each committed command's
//! log index is its cluster-wide revision. A write or linearizable read made on a
//! follower is passed to the leader over the peer transport, so callers never need
//! to know who leads. When no majority answers, writes fail within the write
//! timeout with a `no quorum` error naming the peers that do answer.
//!
//! Must never: interpret objects (that is the apiserver's job); the store sees keys
//! and bytes only.

pub mod backend;
pub mod cache;
pub mod disk;
pub mod format;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;
pub mod wal;
pub mod write_behind;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};

use self::backend::SledBackend;
use self::log_store::LogStore;
use self::network::{
    CallError, Forward, ForwardError, Network, PeerNet, PeerRequest, PeerResponse,
};
use self::state_machine::{StateMachine, StateReader};
use self::types::Proposal;
pub use self::types::{
    Action, Command, CommandResponse, Op, PeerId, Precondition, Raft, Rejection, StoredValue,
};
use self::write_behind::WriteBehind;

/// Where removed peers are recorded.
const REMOVED_PEERS_TOP: &str = "_removed-peers";

/// The key that records that a peer was removed.
fn removed_peer_key(id: PeerId) -> String {
    format!("/{REMOVED_PEERS_TOP}/{id}")
}

/// The removed peers recorded in `reader`.
fn read_removed(reader: &StateReader) -> std::io::Result<BTreeSet<PeerId>> {
    let prefix = format!("/{REMOVED_PEERS_TOP}/");
    Ok(reader
        .scan(&prefix)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(&prefix)?.parse().ok())
        .collect())
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No majority answered in time.
    #[error("{0}")]
    NoQuorum(String),
    /// The request cannot be served (e.g. a membership change that makes no sense).
    #[error("{0}")]
    Invalid(String),
    /// Disk trouble.
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Raft failed in a way that is not about quorum.
    #[error("store: {0}")]
    Raft(#[source] flotilla_client::Cause),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// This peer's id.
    pub id: PeerId,
    /// Where the log and the key space live.
    pub dir: PathBuf,
    /// Changes kept for watches.
    pub history: usize,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// How long a write or linearizable read may wait for a quorum.
    pub write_timeout: Duration,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range.
    pub election_timeout: (Duration, Duration),
}

impl StoreConfig {
    /// Defaults for a peer with this id and directory.
    pub fn new(id: PeerId, dir: PathBuf) -> Self {
        Self {
            id,
            dir,
            history: 10_000,
            snapshot_every: 10_000,
            write_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
        }
    }
}

/// One peer of the store.
pub struct Store {
    id: PeerId,
    raft: Raft,
    reader: StateReader,
    net: Arc<PeerNet>,
    config: StoreConfig,
    log: LogStore,
    proposals: mpsc::UnboundedSender<Pending>,
    in_flight: Arc<Semaphore>,
    /// Writes being committed by this peer as leader, its own and forwarded.
    committing: Arc<AtomicUsize>,
    /// The peers removed from the cluster, whose raft requests are refused
    /// (read on every one, so held in memory).
    removed: Arc<cache::PrefixCache<BTreeSet<PeerId>>>,
}

type Pending = (Command, oneshot::Sender<Result<CommandResponse>>);

/// Raft entries being committed at once by one peer's proposer. Requests that
/// arrive while this many are in flight wait and go into the next entry
/// together: group commit at the raft level.
const PROPOSALS_IN_FLIGHT: usize = 4;
/// Most commands in one raft entry.
const MAX_COMMANDS_PER_ENTRY: usize = 512;
/// How often [`Store::failure`] looks at raft's state.
const FAILURE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Most bytes of commands gathered into one raft entry (one command may be
/// larger on its own): an entry fits one append ([`network::APPEND_BYTES`]).
const MAX_ENTRY_BYTES: usize = network::APPEND_BYTES / 2;

/// A peer as the store sees it.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// Raft id.
    pub id: PeerId,
    /// Address.
    pub address: String,
    /// leader | follower | learner.
    pub role: &'static str,
    /// Replication position, when this peer leads.
    pub matched_index: Option<u64>,
}

impl Store {
    /// Opens the store in `config.dir`, dialling peers through `net`.
    pub async fn open(config: StoreConfig, net: Arc<PeerNet>) -> Result<Arc<Self>> {
        let (wal, recovered) = wal::Wal::open(&config.dir.join("wal"))?;
        let log = LogStore::open(Box::new(wal), recovered)?;
        log.step_down_after_restart(config.id)?;
        let backend = Arc::new(WriteBehind::new(Box::new(SledBackend::open(
            &config.dir.join("state"),
        )?))?);
        let sm = StateMachine::open(backend, config.history)?;
        let reader = sm.reader();
        let raft_config = openraft::Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 5_000,
            max_payload_entries: 256,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 1_000.min(config.snapshot_every),
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            Network::new(net.clone()),
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| StoreError::Raft(e.into()))?;
        let (proposals, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT));
        let removed = cache::PrefixCache::start(
            reader.clone(),
            &[REMOVED_PEERS_TOP],
            "removed peers",
            read_removed,
        );
        let store = Arc::new(Self {
            removed,
            in_flight: in_flight.clone(),
            id: config.id,
            raft,
            reader,
            net,
            config,
            log,
            proposals,
            committing: Arc::new(AtomicUsize::new(0)),
        });
        tokio::spawn(run_proposer(Arc::downgrade(&store), rx, in_flight));
        let (early_tx, early_rx) = mpsc::unbounded_channel();
        store
            .log
            .replicate_early(store.id, early_tx, store.committing.clone());
        tokio::spawn(run_early_replication(Arc::downgrade(&store), early_rx));
        Ok(store)
    }

    /// This peer's id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The raft handle (metrics, triggers).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The applied state.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// Entries in the raft log not yet compacted away.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Whether this peer has a membership (a new cluster or a joined one).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Makes a one-peer cluster of this peer.
    pub async fn initialize(&self, address: &str) -> Result<()> {
        let mut members = BTreeMap::new();
        members.insert(self.id, BasicNode::new(address));
        self.raft
            .initialize(members)
            .await
            .map_err(|e| StoreError::Raft(e.into()))
    }

    /// Waits until some peer leads, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<PeerId> {
        let mut rx = self.raft.metrics();
        let found =
            tokio::time::timeout(timeout, rx.wait_for(|m| m.current_leader.is_some())).await;
        match found {
            Ok(Ok(m)) => m.current_leader,
            _ => None,
        }
    }

    fn leader_addr(&self, leader: PeerId) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    fn deadline_cause(&self, what: &str) -> String {
        format!(
            "deadline exceeded after {:?} waiting to {what}",
            self.config.write_timeout
        )
    }

    /// The message of a quorum failure: its cause and which peers answer.
    pub fn no_quorum_message(&self, cause: &str) -> String {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<PeerId> = membership.voter_ids().collect();
        let mut answering: BTreeSet<PeerId> = self
            .net
            .answering(Duration::from_secs(1))
            .into_iter()
            .filter(|id| voters.contains(id))
            .collect();
        answering.insert(self.id);
        let answering: Vec<String> = answering
            .iter()
            .map(|id| {
                let addr = membership
                    .get_node(id)
                    .map(|n| n.addr.as_str())
                    .unwrap_or("?");
                if *id == self.id {
                    format!("{id} ({addr}, this peer)")
                } else {
                    format!("{id} ({addr})")
                }
            })
            .collect();
        format!(
            "no quorum: {cause}; {} of {} store peers answering: {}; a majority ({}) is needed",
            answering.len(),
            voters.len(),
            answering.join(", "),
            voters.len() / 2 + 1,
        )
    }

    /// Resolves when raft on this peer has stopped on a fatal error (its
    /// storage failed): why. It does not resolve while raft runs.
    ///
    /// It looks every [`FAILURE_CHECK_EVERY`] rather than at each change of
    /// raft's metrics: those change several times per write, and a wake for
    /// each cost the write path a tenth of its rate.
    pub async fn failure(&self) -> String {
        let metrics = self.raft.metrics();
        let mut every = tokio::time::interval(FAILURE_CHECK_EVERY);
        loop {
            every.tick().await;
            let state = metrics.borrow().running_state.clone();
            if let Err(fatal) = state {
                return fatal.to_string();
            }
            if metrics.has_changed().is_err() {
                return "raft stopped".into();
            }
        }
    }

    /// Commits a command, through the leader wherever it is. Concurrent
    /// commands share raft entries.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse> {
        // A free slot means the proposer is not holding anyone back: commit
        // right here, saving the hand-offs to the proposer.
        if let Ok(_permit) = self.in_flight.clone().try_acquire_owned() {
            let mut responses = self.propose_batch(vec![cmd]).await?;
            return responses
                .pop()
                .ok_or_else(|| StoreError::Raft("the leader answered no result".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send((cmd, tx))
            .map_err(|_| StoreError::Raft("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Raft("the store is shutting down".into()))?
    }

    /// Commits a batch of commands as one raft entry.
    async fn propose_batch(&self, commands: Vec<Command>) -> Result<Vec<CommandResponse>> {
        let deadline = Instant::now() + self.config.write_timeout;
        let proposal = Proposal { commands };
        let expected = proposal.commands.len();
        let responses = self
            .with_leader(
                deadline,
                "commit a write",
                Forward::Write(proposal.clone()),
                |resp| match resp {
                    PeerResponse::Write(r) => Some(r),
                    _ => None,
                },
                || self.propose_local(proposal.clone(), deadline),
            )
            .await?;
        if responses.len() != expected {
            return Err(StoreError::Raft(
                format!(
                    "the leader answered {} results for {expected} commands",
                    responses.len()
                )
                .into(),
            ));
        }
        Ok(responses)
    }

    /// Waits until this peer has applied every write committed before the call:
    /// the barrier in front of a linearizable read.
    pub async fn read_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + self.config.write_timeout;
        let index = self
            .with_leader(
                deadline,
                "confirm a linearizable read",
                Forward::ReadIndex,
                |resp| match resp {
                    PeerResponse::ReadIndex(r) => Some(r),
                    _ => None,
                },
                || self.read_index_local(deadline),
            )
            .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.reader.wait_applied(index, remaining).await {
            Ok(())
        } else {
            Err(StoreError::NoQuorum(self.no_quorum_message(
                &self.deadline_cause("catch up for a linearizable read"),
            )))
        }
    }

    /// Adds a voter (through the leader).
    pub async fn add_peer(&self, id: PeerId, address: String) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.with_leader(
            deadline,
            "add a peer",
            Forward::AddPeer {
                id,
                address: address.clone(),
            },
            |resp| match resp {
                PeerResponse::Done(r) => Some(r),
                _ => None,
            },
            || self.add_peer_local(id, address.clone()),
        )
        .await
    }

    /// Records that peer `id` was removed, so that its certificate works no
    /// more: every peer refuses its raft requests and the apiserver its API
    /// requests ([`Store::was_removed`]). Ids are never handed out again.
    pub async fn mark_removed(&self, id: PeerId) -> Result<()> {
        self.propose(Command {
            ops: vec![Op {
                key: removed_peer_key(id),
                precondition: Precondition::None,
                action: Action::Put(Vec::new()),
            }],
        })
        .await?;
        self.removed.refresh();
        Ok(())
    }

    /// Whether peer `id` was removed from the cluster, as this peer has
    /// applied it.
    pub fn was_removed(&self, id: PeerId) -> bool {
        self.removed.current().contains(&id)
    }

    /// Removes a peer (through the leader).
    pub async fn remove_peer(&self, id: PeerId) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.with_leader(
            deadline,
            "remove a peer",
            Forward::RemovePeer { id },
            |resp| match resp {
                PeerResponse::Done(r) => Some(r),
                _ => None,
            },
            || self.remove_peer_local(id),
        )
        .await
    }

    /// Runs `local` if this peer leads, else forwards `forward` to the leader;
    /// retries through leader changes until `deadline`.
    async fn with_leader<T, L, F, P>(
        &self,
        deadline: Instant,
        what: &str,
        forward: Forward,
        pick: P,
        local: L,
    ) -> Result<T>
    where
        L: Fn() -> F,
        F: std::future::Future<Output = std::result::Result<T, ForwardError>>,
        P: Fn(PeerResponse) -> Option<std::result::Result<T, ForwardError>>,
    {
        let mut last_error = None;
        loop {
            if Instant::now() >= deadline {
                return Err(match last_error {
                    Some(ForwardError::Failed(msg)) => StoreError::Raft(msg.into()),
                    _ => StoreError::NoQuorum(self.no_quorum_message(&self.deadline_cause(what))),
                });
            }
            let leader = self.raft.metrics().borrow().current_leader;
            let outcome = match leader {
                Some(l) if l == self.id => local().await,
                Some(l) => match self.leader_addr(l) {
                    Some(addr) => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        match self
                            .net
                            .call(l, &addr, &PeerRequest::Forward(forward.clone()), remaining)
                            .await
                        {
                            Ok(resp) => pick(resp).unwrap_or_else(|| {
                                Err(ForwardError::Failed(
                                    "unexpected answer from the leader".into(),
                                ))
                            }),
                            Err(CallError::Timeout { .. }) => Err(ForwardError::NoQuorum(
                                self.no_quorum_message(&self.deadline_cause(what)),
                            )),
                            Err(e) => Err(ForwardError::NotLeader { leader: None }).inspect_err(
                                |_| tracing::debug!(error = %e, "forward to the leader failed"),
                            ),
                        }
                    }
                    None => Err(ForwardError::NotLeader { leader: None }),
                },
                None => Err(ForwardError::NotLeader { leader: None }),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(ForwardError::NoQuorum(msg)) => return Err(StoreError::NoQuorum(msg)),
                Err(ForwardError::Failed(msg)) if !msg.is_empty() => {
                    return Err(StoreError::Raft(msg.into()));
                }
                Err(e) => {
                    last_error = Some(e);
                    let mut rx = self.raft.metrics();
                    let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
                }
            }
        }
    }

    async fn propose_local(
        &self,
        proposal: Proposal,
        deadline: Instant,
    ) -> std::result::Result<Vec<CommandResponse>, ForwardError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let _counted = Committing::start(&self.committing);
        match tokio::time::timeout(remaining, self.raft.client_write(proposal)).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
            Err(_) => Err(ForwardError::NoQuorum(
                self.no_quorum_message(&self.deadline_cause("commit a write")),
            )),
        }
    }

    async fn read_index_local(&self, deadline: Instant) -> std::result::Result<u64, ForwardError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(ForwardError::NotLeader {
                leader: f.leader_id,
            }),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(
                _,
            )))) => Err(ForwardError::NoQuorum(self.no_quorum_message(
                "a majority did not confirm the leader for a linearizable read",
            ))),
            Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
            Err(_) => Err(ForwardError::NoQuorum(self.no_quorum_message(
                &self.deadline_cause("confirm a linearizable read"),
            ))),
        }
    }

    async fn add_peer_local(
        &self,
        id: PeerId,
        address: String,
    ) -> std::result::Result<(), ForwardError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if let Some(node) = membership.membership().get_node(&id) {
            if node.addr != address {
                return Err(ForwardError::Failed(format!(
                    "peer {id} is already a member at {}",
                    node.addr
                )));
            }
        }
        self.raft
            .add_learner(id, BasicNode::new(address), true)
            .await
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ForwardError::NotLeader {
                        leader: f.leader_id,
                    }
                }
                e => ForwardError::Failed(e.to_string()),
            })?;
        let mut ids = BTreeSet::new();
        ids.insert(id);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ForwardError::NotLeader {
                        leader: f.leader_id,
                    }
                }
                e => ForwardError::Failed(e.to_string()),
            })?;
        Ok(())
    }

    async fn remove_peer_local(&self, id: PeerId) -> std::result::Result<(), ForwardError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        let is_voter = m.voter_ids().any(|v| v == id);
        if m.get_node(&id).is_none() {
            return Err(ForwardError::Failed(format!("peer {id} is not a member")));
        }
        if is_voter && m.voter_ids().count() == 1 {
            return Err(ForwardError::Failed(format!(
                "peer {id} is the only voter; removing it would leave no cluster"
            )));
        }
        let mut ids = BTreeSet::new();
        ids.insert(id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ForwardError::NotLeader {
                        leader: f.leader_id,
                    }
                }
                e => ForwardError::Failed(e.to_string()),
            })?;
        Ok(())
    }

    /// The index of the last entry this peer knows is committed.
    pub fn committed_index(&self) -> u64 {
        self.log.committed_index()
    }

    /// Registers this peer's raft position in `registry`, read from raft's
    /// metrics on every scrape (so nothing is copied on the write path).
    pub fn register_metrics(self: &Arc<Self>, registry: &flotilla_telemetry::Registry) {
        use flotilla_telemetry::Sample;
        let store = Arc::downgrade(self);
        registry.register_sampled(move |out| {
            let Some(store) = store.upgrade() else { return };
            let m = store.raft.metrics().borrow().clone();
            let voters = m.membership_config.membership().voter_ids().count();
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            out.extend([
                Sample::gauge(
                    "flotilla_raft_term",
                    "Current raft term",
                    m.current_term as f64,
                ),
                Sample::gauge(
                    "flotilla_raft_last_log_index",
                    "Index of the last entry in this peer's raft log",
                    m.last_log_index.unwrap_or(0) as f64,
                ),
                Sample::gauge(
                    "flotilla_raft_commit_index",
                    "Index of the last entry this peer knows is committed",
                    store.committed_index() as f64,
                ),
                Sample::gauge(
                    "flotilla_raft_applied_index",
                    "Index of the last entry applied to this peer's state (its store revision)",
                    m.last_applied.map_or(0, |l| l.index) as f64,
                ),
                Sample::gauge(
                    "flotilla_raft_snapshot_index",
                    "Index of the last entry in this peer's latest snapshot",
                    m.snapshot.map_or(0, |l| l.index) as f64,
                ),
                Sample::gauge(
                    "flotilla_raft_is_leader",
                    "1 when this peer is the raft leader",
                    flag(m.current_leader == Some(store.id)),
                ),
                Sample::gauge(
                    "flotilla_raft_has_leader",
                    "1 when this peer knows a raft leader",
                    flag(m.current_leader.is_some()),
                ),
                Sample::gauge(
                    "flotilla_raft_voters",
                    "Voting members in this peer's view of the membership",
                    voters as f64,
                ),
            ]);
        });
    }

    /// The peers of the store with their roles.
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<PeerId> = membership.voter_ids().collect();
        let leader = metrics.current_leader;
        let replication = if leader == Some(self.id) {
            metrics.replication.clone()
        } else {
            None
        };
        membership
            .nodes()
            .map(|(id, node)| MemberInfo {
                id: *id,
                address: node.addr.clone(),
                role: if Some(*id) == leader {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                },
                matched_index: replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten().map(|l| l.index))
                    .or(if Some(*id) == leader {
                        metrics.last_log_index
                    } else {
                        None
                    }),
            })
            .collect()
    }

    /// Serves one request from another peer (already authenticated as `peer:FROM`).
    pub async fn handle_peer(&self, from: PeerId, req: PeerRequest) -> PeerResponse {
        if self.was_removed(from) {
            tracing::warn!(peer = from, "refused a raft request from a removed peer");
            return PeerResponse::Refused(format!(
                "peer {from} was removed from the cluster; its certificate no longer works"
            ));
        }
        self.net.mark_seen(from);
        match req {
            PeerRequest::Append(rpc) => PeerResponse::Append(self.raft.append_entries(rpc).await),
            PeerRequest::Vote(rpc) => PeerResponse::Vote(self.raft.vote(rpc).await),
            PeerRequest::Snapshot(rpc) => {
                PeerResponse::Snapshot(self.raft.install_snapshot(rpc).await)
            }
            PeerRequest::Forward(fwd) => {
                let deadline = Instant::now() + self.config.write_timeout;
                let leads = self.raft.metrics().borrow().current_leader == Some(self.id);
                if !leads {
                    let leader = self.raft.metrics().borrow().current_leader;
                    let err = ForwardError::NotLeader { leader };
                    return match fwd {
                        Forward::Write(_) => PeerResponse::Write(Err(err)),
                        Forward::ReadIndex => PeerResponse::ReadIndex(Err(err)),
                        _ => PeerResponse::Done(Err(err)),
                    };
                }
                match fwd {
                    Forward::Write(cmd) => {
                        PeerResponse::Write(self.propose_local(cmd, deadline).await)
                    }
                    Forward::ReadIndex => {
                        PeerResponse::ReadIndex(self.read_index_local(deadline).await)
                    }
                    Forward::AddPeer { id, address } => {
                        PeerResponse::Done(self.add_peer_local(id, address).await)
                    }
                    Forward::RemovePeer { id } => {
                        PeerResponse::Done(self.remove_peer_local(id).await)
                    }
                }
            }
        }
    }

    /// Stops raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Counts one write being committed while it lives.
struct Committing<'a>(&'a AtomicUsize);

impl<'a> Committing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long an early append may take; openraft's own append follows anyway.
const EARLY_APPEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Early appends go only to followers that answered this recently: one that
/// does not answer gets openraft's appends alone, not a pile of early ones.
const EARLY_APPEND_IF_ANSWERED: Duration = Duration::from_secs(1);

/// Sends each early append (see [`LogStore::replicate_early`]) to every other
/// voter that answers, without waiting for one before the next; answers are
/// not needed, since openraft's own append of the same entries follows.
async fn run_early_replication(
    store: std::sync::Weak<Store>,
    mut rx: mpsc::UnboundedReceiver<log_store::EarlyAppend>,
) {
    while let Some(rpc) = rx.recv().await {
        let Some(store) = store.upgrade() else {
            return;
        };
        let followers: Vec<(PeerId, String)> = {
            let metrics = store.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| {
                    *id != store.id && store.net.answered_within(*id, EARLY_APPEND_IF_ANSWERED)
                })
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
                .collect()
        };
        let request = Arc::new(PeerRequest::Append(rpc));
        for (peer, addr) in followers {
            let (store, request) = (store.clone(), request.clone());
            tokio::spawn(async move {
                let _ = store
                    .net
                    .call(peer, &addr, &request, EARLY_APPEND_TIMEOUT)
                    .await;
            });
        }
    }
}

/// Gathers concurrent commands into raft entries. At most
/// [`PROPOSALS_IN_FLIGHT`] entries are being committed; whatever queues up
/// meanwhile goes into the next one, so a lone writer waits for nothing and many
/// writers share appends, fsyncs and replication round trips.
async fn run_proposer(
    store: std::sync::Weak<Store>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    in_flight: Arc<Semaphore>,
) {
    // A command that would have made the last entry too large starts the next.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.size();
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS_PER_ENTRY {
            match rx.try_recv() {
                Ok(p) if bytes + p.0.size() > MAX_ENTRY_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.0.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let (commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            match store.propose_batch(commands).await {
                Ok(responses) => {
                    for (waiter, resp) in waiters.into_iter().zip(responses) {
                        let _ = waiter.send(Ok(resp));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for waiter in waiters {
                        let err = match &e {
                            StoreError::NoQuorum(_) => StoreError::NoQuorum(message.clone()),
                            StoreError::Invalid(_) => StoreError::Invalid(message.clone()),
                            _ => StoreError::Raft(message.clone().into()),
                        };
                        let _ = waiter.send(Err(err));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_net() -> Arc<PeerNet> {
        let ca = crate::ca::CertificateAuthority::generate("test").unwrap();
        let cert = ca.issue("peer:1", &[]).unwrap();
        let tls = flotilla_client::tls::client_config(
            &ca.cert_pem,
            Some(&cert),
            flotilla_client::tls::ALPN_RAFT,
            flotilla_client::tls::ServerIdentity::AnyPeer,
        )
        .unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        Arc::new(PeerNet::new(
            endpoint,
            quinn::ClientConfig::new(Arc::new(quic)),
        ))
    }

    fn put(key: &str, value: &str, precondition: Precondition) -> Command {
        Command {
            ops: vec![Op {
                key: key.into(),
                precondition,
                action: Action::Put(value.as_bytes().to_vec()),
            }],
        }
    }

    #[tokio::test]
    async fn snapshots_compact_the_log_and_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(1, dir.path().to_path_buf());
        config.snapshot_every = 20;
        let store = Store::open(config.clone(), peer_net()).await.unwrap();
        store.initialize("127.0.0.1:1").await.unwrap();
        assert_eq!(
            store.wait_for_leader(Duration::from_secs(10)).await,
            Some(1)
        );
        let mut last = 0;
        for i in 0..100 {
            let resp = store
                .propose(put(&format!("/k/{i}"), "v", Precondition::Absent))
                .await
                .unwrap();
            assert!(resp.rejected.is_none());
            assert!(resp.revision > last, "revisions increase");
            last = resp.revision;
        }
        let rejected = store
            .propose(put("/k/1", "again", Precondition::Absent))
            .await
            .unwrap();
        assert!(matches!(rejected.rejected, Some(Rejection::Exists { .. })));
        let stale = store
            .propose(put("/k/2", "cas", Precondition::ModRevision(1)))
            .await
            .unwrap();
        assert!(matches!(stale.rejected, Some(Rejection::Conflict { .. })));

        let compacted = tokio::time::timeout(Duration::from_secs(10), async {
            while store.log_len() >= 100 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            compacted.is_ok(),
            "log still holds {} entries",
            store.log_len()
        );
        let before = store.reader().scan("/k/").unwrap();
        assert_eq!(before.len(), 100);
        store.shutdown().await;
        drop(store);

        let store = reopened(config).await;
        store.read_barrier().await.unwrap();
        let after = store.reader().scan("/k/").unwrap();
        assert_eq!(before, after, "every key and revision is back after reopen");
        store.shutdown().await;
    }

    #[tokio::test]
    async fn a_restarted_leader_leads_again_only_in_a_new_term() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(1, dir.path().to_path_buf());
        let store = single_peer(config.clone()).await;
        put_now(&store, "/k/before").await;
        let first_term = store.raft().metrics().borrow().current_term;
        store.shutdown().await;
        drop(store);

        let store = reopened(config).await;
        let term = store.raft().metrics().borrow().current_term;
        assert!(
            term > first_term,
            "leads again in term {term}, as before the restart"
        );
        put_now(&store, "/k/after").await;
        assert_eq!(store.reader().scan("/k/").unwrap().len(), 2);
        store.shutdown().await;
    }

    /// A one-peer store opened again on its directory, once it leads.
    async fn reopened(config: StoreConfig) -> Arc<Store> {
        let store = Store::open(config, peer_net()).await.unwrap();
        assert_eq!(
            store.wait_for_leader(Duration::from_secs(10)).await,
            Some(1)
        );
        store
    }

    /// A one-peer store, leading.
    async fn single_peer(config: StoreConfig) -> Arc<Store> {
        let store = Store::open(config, peer_net()).await.unwrap();
        store.initialize("127.0.0.1:1").await.unwrap();
        store
            .wait_for_leader(Duration::from_secs(10))
            .await
            .unwrap();
        store
    }

    async fn put_now(store: &Store, key: &str) -> u64 {
        store
            .propose(put(key, "v", Precondition::None))
            .await
            .unwrap()
            .revision
    }

    #[tokio::test]
    async fn a_watch_sees_changes_in_order_and_too_old_outside_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(1, dir.path().to_path_buf());
        config.history = 5;
        let store = single_peer(config).await;
        let first = put_now(&store, "/w/0").await;
        let mut stream = store.reader().watch(first).unwrap();
        for i in 1..4 {
            put_now(&store, &format!("/w/{i}")).await;
        }
        for i in 1..4 {
            let c = stream.next().await.unwrap().unwrap();
            assert_eq!(c.key, format!("/w/{i}"));
        }
        for i in 4..12 {
            put_now(&store, &format!("/w/{i}")).await;
        }
        assert!(store.reader().watch(first).is_err());
        store.shutdown().await;
    }

    #[tokio::test]
    async fn a_watch_under_a_segment_sees_only_its_keys_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = single_peer(StoreConfig::new(1, dir.path().to_path_buf())).await;
        let first = put_now(&store, "/a/0").await;
        put_now(&store, "/b/0").await;
        // Made after two changes: /b/0 comes from the window, the rest live.
        let mut only_b = store.reader().watch_under(first, Some("b")).unwrap();
        let mut all = store.reader().watch(first).unwrap();
        for i in 1..4 {
            for top in ["a", "b"] {
                put_now(&store, &format!("/{top}/{i}")).await;
            }
        }
        for i in 0..4 {
            let c = only_b.next().await.unwrap().unwrap();
            assert_eq!(c.key, format!("/b/{i}"));
        }
        let mut keys = Vec::new();
        for _ in 0..7 {
            keys.push(all.next().await.unwrap().unwrap().key.clone());
        }
        assert_eq!(
            keys,
            ["/b/0", "/a/1", "/b/1", "/a/2", "/b/2", "/a/3", "/b/3"]
        );
        store.shutdown().await;
    }
}
