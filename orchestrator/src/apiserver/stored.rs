//! Objects as the store holds them: postcard values under
//! `/{kind}/{namespace}/{name}` whose resourceVersion is the revision of
//! their last write, and the reads every verb shares (one object, a scan of
//! a prefix, a node's instances through the watch hub's index).

use flotilla_api::fields::FieldSelector;
use flotilla_api::labels::LabelSelector;
use flotilla_api::object::{Kind, Object};
use flotilla_client::wire::{ApiError, ErrorCode};

use super::errors::{bad_request, internal, store_error, ApiResult};
use super::keys::{key_for, kind_prefix, namespace_prefix};
use super::ApiServer;
use crate::store::{Command, Op, Rejection, StoredValue};

/// Largest encoded object the apiserver accepts.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// Most bytes of objects in one answer to a list: half a frame, so that a
/// page always fits one whatever its objects (each is at most
/// [`MAX_OBJECT_BYTES`]).
pub const PAGE_BYTES: usize = flotilla_client::wire::MAX_FRAME / 2;

/// Keys read from the store at a time while a page is filled.
const SCAN_CHUNK: usize = 256;

/// A label and a field selector, parsed.
pub(super) type Selectors = (LabelSelector, FieldSelector);

/// One page of a list, as the apiserver answers it.
#[derive(Debug)]
pub(super) struct ListPage {
    pub items: Vec<Object>,
    pub revision: u64,
    pub continue_token: String,
}

/// Where a page of a list ended: the last key it read past, and the first
/// page's revision (what the whole list is at least as new as). Opaque to
/// clients: hex of its postcard.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    revision: u64,
    after: String,
}

impl ContinueToken {
    /// Longest token accepted: a key is far shorter.
    const MAX_CHARS: usize = 4096;

    fn encode(&self) -> String {
        hex::encode(postcard::to_allocvec(self).expect("a token encodes"))
    }

    fn decode(text: &str) -> ApiResult<Self> {
        let refuse = |why: &str| {
            bad_request(format!(
                "continue: not a token this server gave out ({why}); start the list again without one"
            ))
        };
        if text.len() > Self::MAX_CHARS {
            return Err(refuse("too long"));
        }
        let bytes = hex::decode(text).map_err(|_| refuse("not hex"))?;
        postcard::from_bytes(&bytes).map_err(|_| refuse("does not decode"))
    }
}

/// About what a stored object takes in an answer: its encoding and its
/// resourceVersion.
fn answer_bytes(stored: &StoredValue) -> usize {
    stored.value.len() + 24
}

/// A stored object as a list shows it; `None`, with a warning, for one that
/// does not decode (a newer format, damage): one bad object must not take
/// every list of its kind down with it. A get of it says why.
fn listable(key: &str, stored: &StoredValue) -> Option<Object> {
    match decode_object(stored) {
        Ok(object) => Some(object),
        Err(e) => {
            tracing::warn!(key, error = %e.message, "a stored object does not decode; lists leave it out");
            None
        }
    }
}

/// Decodes a stored object (of any format version this build reads) and
/// stamps its resourceVersion.
pub fn decode_object(stored: &StoredValue) -> ApiResult<Object> {
    let mut obj: Object = crate::store::format::open("a stored object", &stored.value)
        .map_err(|e| internal(e.to_string()))?;
    obj.meta_mut().resource_version = stored.mod_revision.to_string();
    Ok(obj)
}

/// Encodes an object for the store (without its resourceVersion, which the
/// revision of the write gives), refusing one over [`MAX_OBJECT_BYTES`].
pub(super) fn encode_object(obj: &Object) -> ApiResult<Vec<u8>> {
    let mut copy = obj.clone();
    copy.meta_mut().resource_version.clear();
    let bytes = crate::store::format::seal(&copy).map_err(internal)?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{}: the object is {} bytes encoded; the limit is {MAX_OBJECT_BYTES} bytes",
                obj.meta().name,
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// A fresh uid, UUID-shaped.
pub(super) fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Parses the selectors of a list or watch.
pub(super) fn parse_selectors(labels: &str, fields: &str) -> ApiResult<Selectors> {
    let labels =
        LabelSelector::parse(labels).map_err(|e| bad_request(format!("label selector: {e}")))?;
    let fields =
        FieldSelector::parse(fields).map_err(|e| bad_request(format!("field selector: {e}")))?;
    Ok((labels, fields))
}

/// The namespace a request about `kind` is in: none for cluster-scoped
/// kinds, `default` when the caller named none.
pub(super) fn scope(kind: Kind, namespace: &str) -> String {
    if !kind.namespaced() {
        String::new()
    } else if namespace.is_empty() {
        flotilla_api::namespace::DEFAULT_NAMESPACE.to_string()
    } else {
        namespace.to_string()
    }
}

impl ApiServer {
    pub(super) fn read_stored(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<StoredValue>> {
        self.store
            .reader()
            .get(&key_for(kind, namespace, name))
            .map_err(internal)
    }

    pub(super) fn read(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<Object>> {
        self.read_stored(kind, namespace, name)?
            .map(|v| decode_object(&v))
            .transpose()
    }

    /// Lists objects from the local replica; returns them with the revision
    /// they are at least as new as.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> ApiResult<(Vec<Object>, u64)> {
        let selectors = parse_selectors(label_selector, "")?;
        self.list_selected(kind, namespace, &selectors)
    }

    pub(super) fn list_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        (labels, fields): &Selectors,
    ) -> ApiResult<(Vec<Object>, u64)> {
        // Read the revision first: a change applied during the scan is then
        // replayed by a watch from this revision rather than missed.
        let revision = self.store.reader().revision();
        let prefix = match namespace {
            Some(ns) if kind.namespaced() => namespace_prefix(kind, ns),
            _ => kind_prefix(kind),
        };
        let mut items = Vec::new();
        for (key, stored) in self.store.reader().scan(&prefix).map_err(internal)? {
            let Some(obj) = listable(&key, &stored) else {
                continue;
            };
            if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        Ok((items, revision))
    }

    /// One page of a list: at most `limit` (0: no limit) matching objects after
    /// where `continue_token` says the last page ended, and at most
    /// [`PAGE_BYTES`] of them. With no limit, a list over that is refused
    /// rather than cut; with one, the page ends early and says where to go on.
    pub(super) fn list_page(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        (labels, fields): &Selectors,
        limit: u32,
        continue_token: &str,
    ) -> ApiResult<ListPage> {
        let prefix = match namespace {
            Some(ns) if kind.namespaced() => namespace_prefix(kind, ns),
            _ => kind_prefix(kind),
        };
        let (revision, mut consumed) = match continue_token {
            "" => (self.store.reader().revision(), None),
            token => {
                let token = ContinueToken::decode(token)?;
                if !token.after.starts_with(&prefix) {
                    return Err(bad_request(format!(
                        "continue: the token belongs to another list (of {}), not this one (of {prefix})",
                        token.after
                    )));
                }
                (token.revision, Some(token.after))
            }
        };
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut items = Vec::new();
        let mut bytes = 0usize;
        loop {
            let chunk = self
                .store
                .reader()
                .scan_page(&prefix, consumed.as_deref(), SCAN_CHUNK)
                .map_err(internal)?;
            let last_chunk = chunk.len() < SCAN_CHUNK;
            for (key, stored) in chunk {
                let Some(obj) = listable(&key, &stored) else {
                    consumed = Some(key);
                    continue;
                };
                if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                    let size = answer_bytes(&stored);
                    let full = items.len() >= limit || bytes + size > PAGE_BYTES;
                    if full && limit == usize::MAX {
                        return Err(bad_request(format!(
                            "the list of {} is over {} MiB, more than one answer carries: ask for it in pages (limit and continue)",
                            kind.plural(),
                            PAGE_BYTES >> 20
                        )));
                    }
                    if full {
                        let after = consumed.unwrap_or_default();
                        return Ok(ListPage {
                            items,
                            revision,
                            continue_token: ContinueToken { revision, after }.encode(),
                        });
                    }
                    bytes += size;
                    items.push(obj);
                }
                consumed = Some(key);
            }
            if last_chunk {
                return Ok(ListPage {
                    items,
                    revision,
                    continue_token: String::new(),
                });
            }
        }
    }

    /// A node's instances through the hub's index: only its keys are read.
    /// `None` when the index is not current (the caller scans instead).
    pub(super) async fn list_node_instances(
        &self,
        node: &str,
        namespace: Option<&str>,
        (labels, fields): &Selectors,
    ) -> ApiResult<Option<(Vec<Object>, u64, usize)>> {
        let revision = self.store.reader().revision();
        let Some(keys) = self.watch_hub.keys_of(node, revision).await else {
            return Ok(None);
        };
        let prefix = namespace.map(|ns| namespace_prefix(Kind::Instance, ns));
        let mut items = Vec::new();
        let mut bytes = 0;
        for key in keys {
            if prefix
                .as_ref()
                .is_some_and(|p| !key.starts_with(p.as_str()))
            {
                continue;
            }
            let Some(stored) = self.store.reader().get(&key).map_err(internal)? else {
                continue;
            };
            let Some(obj) = listable(&key, &stored) else {
                continue;
            };
            if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                bytes += answer_bytes(&stored);
                items.push(obj);
            }
        }
        Ok(Some((items, revision, bytes)))
    }

    /// Proposes `ops` as one command: the revision it committed at, or why
    /// a precondition refused it.
    pub(super) async fn commit(&self, ops: Vec<Op>) -> ApiResult<Result<u64, Rejection>> {
        let resp = self
            .store
            .propose(Command { ops })
            .await
            .map_err(store_error)?;
        Ok(match resp.rejected {
            Some(r) => Err(r),
            None => Ok(resp.revision),
        })
    }
}
