//! The store's data: raft type configuration, the write commands the log carries,
//! and what they answer.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Raft types of the Flotilla store.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResponse>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A raft id.
pub type PeerId = u64;
/// The raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<PeerId>;
/// Membership as stored.
pub type StoredMembership = openraft::StoredMembership<PeerId, openraft::BasicNode>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<PeerId>;

/// A value in the key space with the revisions that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// The encoded object.
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: u64,
    /// Revision of the write that last changed it.
    pub mod_revision: u64,
}

/// What must hold for an operation to go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Nothing.
    None,
    /// The key must not exist.
    Absent,
    /// The key must exist.
    Present,
    /// The key must exist and have been last changed at this revision.
    ModRevision(u64),
}

/// One change within a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The key.
    pub key: String,
    /// What must hold first.
    pub precondition: Precondition,
    /// What to do once the precondition holds.
    pub action: Action,
}

/// What an operation does to its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Store this value.
    Put(Vec<u8>),
    /// Remove the key.
    Delete,
    /// Nothing: the op only guards the command with its precondition.
    Check,
}

/// A write through the log: all operations apply, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The operations, on distinct keys.
    pub ops: Vec<Op>,
}

impl Command {
    /// About how many bytes the command takes in a raft entry: what bounds
    /// how many commands one entry gathers.
    pub fn size(&self) -> usize {
        self.ops
            .iter()
            .map(|op| {
                op.key.len()
                    + 16
                    + match &op.action {
                        Action::Put(bytes) => bytes.len(),
                        Action::Delete | Action::Check => 0,
                    }
            })
            .sum()
    }
}

/// One raft entry: the commands the proposer gathered while earlier entries were
/// in flight. Each command stands alone: one failing its preconditions does not
/// affect the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, applied in order.
    pub commands: Vec<Command>,
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The key exists.
    Exists {
        /// Key.
        key: String,
    },
    /// The key does not exist.
    Missing {
        /// Key.
        key: String,
    },
    /// The key was changed at another revision than the caller expected.
    Conflict {
        /// Key.
        key: String,
        /// The revision the caller expected.
        expected: u64,
        /// The revision it is at.
        actual: u64,
    },
}

impl Rejection {
    /// The key whose precondition failed.
    pub fn key(&self) -> &str {
        match self {
            Rejection::Exists { key }
            | Rejection::Missing { key }
            | Rejection::Conflict { key, .. } => key,
        }
    }
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CommandResponse {
    /// The revision the command was committed at (for a rejected command, the
    /// revision of the state it was checked against). Every command that changes
    /// something gets the next revision, the same on every peer.
    pub revision: u64,
    /// Why nothing changed, when a precondition failed.
    pub rejected: Option<Rejection>,
}
