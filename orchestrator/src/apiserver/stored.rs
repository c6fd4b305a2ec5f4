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

/// A label and a field selector, parsed.
pub(super) type Selectors = (LabelSelector, FieldSelector);

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode_object(stored: &StoredValue) -> ApiResult<Object> {
    let mut obj: Object = postcard::from_bytes(&stored.value)
        .map_err(|e| internal(format!("stored object does not decode: {e}")))?;
    obj.meta_mut().resource_version = stored.mod_revision.to_string();
    Ok(obj)
}

/// Encodes an object for the store (without its resourceVersion, which the
/// revision of the write gives), refusing one over [`MAX_OBJECT_BYTES`].
pub(super) fn encode_object(obj: &Object) -> ApiResult<Vec<u8>> {
    let mut copy = obj.clone();
    copy.meta_mut().resource_version.clear();
    let bytes = postcard::to_allocvec(&copy).map_err(internal)?;
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
        for (_, stored) in self.store.reader().scan(&prefix).map_err(internal)? {
            let obj = decode_object(&stored)?;
            if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        Ok((items, revision))
    }

    /// A node's instances through the hub's index: only its keys are read.
    /// `None` when the index is not current (the caller scans instead).
    pub(super) async fn list_node_instances(
        &self,
        node: &str,
        namespace: Option<&str>,
        (labels, fields): &Selectors,
    ) -> ApiResult<Option<(Vec<Object>, u64)>> {
        let revision = self.store.reader().revision();
        let Some(keys) = self.watch_hub.keys_of(node, revision).await else {
            return Ok(None);
        };
        let prefix = namespace.map(|ns| namespace_prefix(Kind::Instance, ns));
        let mut items = Vec::new();
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
            let obj = decode_object(&stored)?;
            if labels.matches(&obj.meta().labels) && fields.matches(&obj) {
                items.push(obj);
            }
        }
        Ok(Some((items, revision)))
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
