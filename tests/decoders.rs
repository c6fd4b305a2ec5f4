//! Every decoder a peer or a user reaches, fed random and mutated input:
//! API and raft frames, stored formats, write-ahead log segments, manifests,
//! quantities, durations, selectors and join tokens. None may panic, and none
//! may allocate more than the frame cap for any input: a counting allocator
//! watches the largest allocation each case makes.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use flotilla_client::wire::{self, Request, RequestV1, Response, ResponseV1, MAX_FRAME};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// What a case may allocate besides what it decodes: its temp dir, the
/// runtime it reads frames on.
const CASE_OVERHEAD: usize = 1024 * 1024;

/// Runs `f`; fails the case if it allocated more than the frame cap. The
/// allocator's counts are the process's, so the cases run one at a time, in
/// the one test of this binary.
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let region = Region::new(ALLOCATOR);
    let out = f();
    let allocated = region.change().bytes_allocated;
    assert!(
        allocated <= MAX_FRAME + CASE_OVERHEAD,
        "{what} allocated {allocated} bytes, over the {MAX_FRAME}-byte frame cap"
    );
    out
}

/// Some valid requests and answers, to mutate.
fn samples() -> Vec<Vec<u8>> {
    let object = flotilla_api::manifest::parse_manifests(
        "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata: {name: web, labels: {app: web}}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
    )
    .unwrap()
    .remove(0);
    vec![
        wire::encode_frame(&Request::V1(RequestV1::Create {
            object: object.clone(),
        }))
        .unwrap(),
        wire::encode_frame(&Request::V1(RequestV1::List {
            kind: flotilla_api::object::Kind::Instance,
            namespace: Some("default".into()),
            label_selector: "app=web".into(),
            consistency: wire::Consistency::Stale,
            field_selector: "spec.nodeName=edge-1".into(),
            limit: 500,
            continue_token: "00ff".into(),
        }))
        .unwrap(),
        wire::encode_frame(&Response::V1(ResponseV1::List {
            items: vec![object],
            revision: 7,
            continue_token: String::new(),
        }))
        .unwrap(),
    ]
}

/// Random bytes, or a valid sample with bytes changed, cut or added.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        0..samples().len(),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8),
    )
        .prop_map(|(which, edits)| {
            let mut bytes = samples()[which].clone();
            for (at, byte, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            bytes
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..2048), mutated]
}

fn read_frame<T: serde::de::DeserializeOwned>(bytes: &[u8], cap: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut reader = bytes;
    let _ = rt.block_on(wire::read_frame::<_, T>(&mut reader, cap));
}

fn check<S: Strategy>(name: &str, strategy: S, case: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |value| {
        case(value);
        Ok(())
    }) {
        panic!("{name}: {e}");
    }
}

#[test]
fn decoders_never_panic_or_allocate_past_the_frame_cap() {
    check("API frames", input(), |bytes| {
        bounded("an API request frame", || {
            read_frame::<Request>(&bytes, MAX_FRAME)
        });
        bounded("an API answer frame", || {
            read_frame::<Response>(&bytes, MAX_FRAME)
        });
        bounded("an upload chunk frame", || {
            read_frame::<wire::UploadChunk>(&bytes, MAX_FRAME)
        });
        let body = bytes.get(4..).unwrap_or_default();
        bounded("an API request body", || {
            let _ = wire::decode_body::<Request>(body);
        });
    });

    check("raft messages", input(), |bytes| {
        use flotilla_orchestrator::store::network::{PeerRequest, PeerResponse};
        let body = bytes.get(4..).unwrap_or_default();
        bounded("a raft request", || {
            let _ = wire::decode_body::<PeerRequest>(body);
        });
        bounded("a raft answer", || {
            let _ = wire::decode_body::<PeerResponse>(body);
        });
        bounded("a raft frame", || {
            read_frame::<PeerRequest>(&bytes, MAX_FRAME)
        });
    });

    check("stored formats", input(), |bytes| {
        use flotilla_orchestrator::store::format;
        bounded("a stored object", || {
            let _ = format::open::<flotilla_api::object::Object>("an object", &bytes);
        });
        let mut sealed = vec![format::MAGIC, format::VERSION];
        sealed.extend_from_slice(&bytes);
        bounded("a sealed object", || {
            let _ = format::open::<flotilla_api::object::Object>("an object", &sealed);
        });
    });

    check("write-ahead log segments", input(), |bytes| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.wal"), &bytes).unwrap();
        bounded("a write-ahead log segment", || {
            let _ = flotilla_orchestrator::store::wal::Wal::open(dir.path());
        });
    });

    check(
        "text a user writes",
        (".{0,300}", input()),
        |(text, bytes)| {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            for text in [text, lossy] {
                bounded("a manifest", || {
                    let _ = flotilla_api::manifest::parse_manifests(&text);
                });
                bounded("a quantity", || {
                    let _ = flotilla_api::quantity::Quantity::parse(&text);
                });
                bounded("a duration", || {
                    let _ = flotilla_api::duration::Duration::parse(&text);
                });
                bounded("a label selector", || {
                    let _ = flotilla_api::labels::LabelSelector::parse(&text);
                });
                bounded("a field selector", || {
                    let _ = flotilla_api::fields::FieldSelector::parse(&text);
                });
                bounded("a join token", || {
                    let _ = flotilla_client::token::JoinToken::parse(&text);
                });
            }
        },
    );

    check(
        "manifests near valid ones",
        proptest::collection::vec((any::<usize>(), "[ -~\n]{0,3}"), 1..6),
        |edits| {
            let mut text = "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {module: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\", resources: {limits: {cpu: 100m, memory: 16Mi}}}\n".to_string();
            for (at, insert) in edits {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, &insert);
            }
            bounded("a mutated manifest", || {
                let _ = flotilla_api::manifest::parse_manifests(&text);
            });
        },
    );
}
