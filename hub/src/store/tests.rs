//! The contract of [`Store`] as a suite every backend runs: `conformance(&store).await` on a
//! fresh, empty store (`store/sqlite.rs` runs it for [`SqliteStore`]; a second backend adds
//! one such test). Behaviour is stated in tables; every case uses its own key and agent ids,
//! so cases do not interact and run in one store.

use std::collections::BTreeMap;

use super::*;
use crate::state::{Capabilities, JournalHead, LastUpgrade};
use outpost_proto::{ActionAdvert, FlatValue, PackAdvert, ParamAdvert};

/// Every check, in order.
pub(crate) async fn conformance(store: &dyn Store) {
    assert!(
        store.load_agents().await.unwrap().is_empty(),
        "the conformance suite needs an empty store"
    );
    assert!(store.schema_version().await.unwrap() >= 1);
    enrollment_table(store).await;
    concurrent_enrollments(store).await;
    keys_are_unique(store).await;
    agent_operations_table(store).await;
    revocation_keeps_the_first_time(store).await;
    deletion_takes_everything(store).await;
    diagnostics_are_replaced(store).await;
    heartbeats_round_trip(store).await;
    heartbeats_never_touch_identity(store).await;
    catalogs_and_trust_table(store).await;
    catalog_survives_heartbeats_and_goes_with_the_agent(store).await;
    runs::conformance(store).await;
    delivery::conformance(store).await;
    fleet::conformance(store).await;
}

mod delivery;
mod fleet;
mod runs;

/// Key expiry of every case, unix ms.
const EXPIRES: i64 = 10_000;
const NONCE_1: &str = "nonce-one-0123456789";
const NONCE_2: &str = "nonce-two-0123456789";

fn hash(s: &str) -> String {
    crate::token::hash_hex(s)
}

fn token_hash(agent_id: &str) -> String {
    hash(&format!("token-{agent_id}"))
}

fn key(name: &str) -> KeyRow {
    KeyRow {
        id: format!("k_{name}"),
        key_hash: hash(&format!("key-{name}")),
        created_at_ms: 0,
        expires_at_ms: EXPIRES,
        group: Some(format!("group-{name}")),
        labels: BTreeMap::from([
            ("case".to_string(), name.to_string()),
            ("quoted".to_string(), "a=b \"c\" {d} é".to_string()),
        ]),
    }
}

fn facts(agent_id: &str) -> Facts {
    Facts {
        hostname: format!("host-{agent_id}"),
        machine_id: format!("machine-{agent_id}"),
        distro: "debian 12".into(),
        arch: "x86_64".into(),
        version: "1.2.3".into(),
        mode: "system".into(),
    }
}

/// The state an agent enrolled with `key` at `at` is loaded with.
fn enrolled_state(agent_id: &str, key: &KeyRow, at: i64) -> AgentState {
    let f = facts(agent_id);
    AgentState {
        hostname: f.hostname,
        machine_id: f.machine_id,
        distro: f.distro,
        arch: f.arch,
        version: f.version,
        mode: f.mode,
        group: key.group.clone(),
        labels: key.labels.clone(),
        enrolled_at_ms: at,
        ..Default::default()
    }
}

async fn enroll_as(
    store: &dyn Store,
    key_hash: &str,
    nonce: Option<&str>,
    agent_id: &str,
    at: i64,
) -> Result<Enrolled, KeyRefusal> {
    let nonce_hash = nonce.map(hash);
    let (f, th) = (facts(agent_id), token_hash(agent_id));
    store
        .enroll(NewAgent {
            key_hash,
            nonce_hash: nonce_hash.as_deref(),
            agent_id,
            token_hash: &th,
            facts: &f,
            now_ms: at,
        })
        .await
        .unwrap_or_else(|e| panic!("enroll {agent_id}: {e}"))
}

async fn agent(store: &dyn Store, id: &str) -> Option<StoredAgent> {
    let all = store.load_agents().await.unwrap();
    all.into_iter().find(|a| a.id == id)
}

/// A new agent `a_{name}` enrolled at time 1 with its own key.
async fn new_agent(store: &dyn Store, name: &str) -> String {
    let k = key(name);
    store
        .insert_key(&k, entry(1, "key_create", &k.id))
        .await
        .unwrap();
    let id = format!("a_{name}");
    let got = enroll_as(store, &k.key_hash, None, &id, 1).await;
    assert!(
        matches!(got, Ok(Enrolled::Created { .. })),
        "{name}: {got:?}"
    );
    id
}

/// One enrollment attempt: the nonce sent and the time.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    nonce: Option<&'static str>,
    at: i64,
}

const fn at(nonce: Option<&'static str>, at: i64) -> Attempt {
    Attempt { nonce, at }
}

#[derive(Debug)]
enum Want {
    Created,
    /// A retry of the agent the first attempt created.
    RetryOfFirst,
    Refused(KeyRefusal),
}

struct EnrollCase {
    name: &'static str,
    /// The key was minted (else it is unknown).
    minted: bool,
    /// An earlier attempt, which must create an agent.
    first: Option<Attempt>,
    then: Attempt,
    want: Want,
}

const fn case(
    name: &'static str,
    minted: bool,
    first: Option<Attempt>,
    then: Attempt,
    want: Want,
) -> EnrollCase {
    EnrollCase {
        name,
        minted,
        first,
        then,
        want,
    }
}

const N1: Option<&str> = Some(NONCE_1);
const N2: Option<&str> = Some(NONCE_2);
const USED: Want = Want::Refused(KeyRefusal::Used);
const EXPIRED: Want = Want::Refused(KeyRefusal::Expired);
const UNKNOWN: Want = Want::Refused(KeyRefusal::Unknown);

#[rustfmt::skip]
const ENROLL: &[EnrollCase] = &[
    case("unknown",                     false, None,                 at(None, 1),          UNKNOWN),
    case("unknown_with_nonce",          false, None,                 at(N1, 1),            UNKNOWN),
    case("fresh",                       true,  None,                 at(None, 1),          Want::Created),
    case("fresh_with_nonce",            true,  None,                 at(N1, 1),            Want::Created),
    case("just_before_expiry",          true,  None,                 at(N1, EXPIRES - 1),  Want::Created),
    case("at_expiry",                   true,  None,                 at(None, EXPIRES),    EXPIRED),
    case("after_expiry_with_nonce",     true,  None,                 at(N1, EXPIRES + 1),  EXPIRED),
    case("used_again",                  true,  Some(at(None, 1)),    at(None, 2),          USED),
    case("used_without_nonce_then_one", true,  Some(at(None, 1)),    at(N1, 2),            USED),
    case("used_with_nonce_then_none",   true,  Some(at(N1, 1)),      at(None, 2),          USED),
    case("used_with_another_nonce",     true,  Some(at(N1, 1)),      at(N2, 2),            USED),
    case("retry_same_nonce",            true,  Some(at(N1, 1)),      at(N1, 2),            Want::RetryOfFirst),
    case("retry_just_before_expiry",    true,  Some(at(N1, 1)),      at(N1, EXPIRES - 1),  Want::RetryOfFirst),
    case("retry_at_expiry",             true,  Some(at(N1, 1)),      at(N1, EXPIRES),      USED),
    case("retry_after_expiry",          true,  Some(at(N1, 1)),      at(N1, EXPIRES + 1),  USED),
];

async fn enrollment_table(store: &dyn Store) {
    for c in ENROLL {
        let k = key(c.name);
        if c.minted {
            store
                .insert_key(&k, entry(1, "key_create", &k.id))
                .await
                .unwrap();
        }
        let first_id = format!("a_{}_1", c.name);
        if let Some(a) = c.first {
            let got = enroll_as(store, &k.key_hash, a.nonce, &first_id, a.at).await;
            assert!(
                matches!(got, Ok(Enrolled::Created { .. })),
                "{}: first attempt: {got:?}",
                c.name
            );
        }
        let then_id = format!("a_{}_2", c.name);
        let got = enroll_as(store, &k.key_hash, c.then.nonce, &then_id, c.then.at).await;
        let stored = agent(store, &then_id).await;
        match c.want {
            Want::Created => {
                let want = Enrolled::Created {
                    group: k.group.clone(),
                    labels: k.labels.clone(),
                };
                assert_eq!(got, Ok(want), "{}", c.name);
                let a = stored.unwrap_or_else(|| panic!("{}: agent not stored", c.name));
                assert_eq!(a.token_hash, token_hash(&then_id), "{}", c.name);
                assert_eq!(
                    a.state,
                    enrolled_state(&then_id, &k, c.then.at),
                    "{}",
                    c.name
                );
            }
            Want::RetryOfFirst => {
                let want = Enrolled::Retry {
                    agent_id: first_id.clone(),
                };
                assert_eq!(got, Ok(want), "{}", c.name);
                assert!(stored.is_none(), "{}: a retry creates nothing", c.name);
            }
            Want::Refused(r) => {
                assert_eq!(got, Err(r), "{}", c.name);
                assert!(stored.is_none(), "{}: a refusal creates nothing", c.name);
            }
        }
        if c.first.is_some() {
            let first = agent(store, &first_id).await.unwrap();
            assert_eq!(
                first.token_hash,
                token_hash(&first_id),
                "{}: unchanged",
                c.name
            );
        }
    }
}

/// Four enrollments with one key at once: exactly one creates an agent. Without a nonce the
/// others are refused as used; with the same nonce they are retries of the winner.
async fn concurrent_enrollments(store: &dyn Store) {
    for (name, nonce) in [("race", None), ("race_nonce", N1)] {
        let k = key(name);
        store
            .insert_key(&k, entry(1, "key_create", &k.id))
            .await
            .unwrap();
        let ids: Vec<String> = (0..4).map(|i| format!("a_{name}_{i}")).collect();
        let e = |i: usize| enroll_as(store, &k.key_hash, nonce, &ids[i], 5);
        let (r0, r1, r2, r3) = tokio::join!(e(0), e(1), e(2), e(3));
        let results = [r0, r1, r2, r3];
        let winners: Vec<&String> = ids
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Enrolled::Created { .. })))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(winners.len(), 1, "{name}: {results:?}");
        let winner = winners[0];
        for (id, r) in ids.iter().zip(&results).filter(|(id, _)| *id != winner) {
            let want = match nonce {
                None => Err(KeyRefusal::Used),
                Some(_) => Ok(Enrolled::Retry {
                    agent_id: winner.clone(),
                }),
            };
            assert_eq!(r, &want, "{name}: {id}");
            assert!(agent(store, id).await.is_none(), "{name}: {id} stored");
        }
        assert!(agent(store, winner).await.is_some(), "{name}");
    }
}

/// A key with an id or hash already stored is refused with a one-line error and a hint;
/// the stored key is unchanged and no audit entry is written for it.
async fn keys_are_unique(store: &dyn Store) {
    let k = key("unique");
    store
        .insert_key(&k, entry(1, "key_create", &k.id))
        .await
        .unwrap();
    let e = last_audit(store).await.unwrap();
    assert_eq!(
        (e.action.as_str(), e.target.as_str()),
        ("key_create", "k_unique")
    );
    let before = audit_count(store).await;
    let same_id = KeyRow {
        key_hash: hash("another-key"),
        expires_at_ms: 1,
        ..k.clone()
    };
    let same_hash = KeyRow {
        id: "k_unique_2".into(),
        expires_at_ms: 1,
        ..k.clone()
    };
    for (what, dup) in [("same id", &same_id), ("same hash", &same_hash)] {
        let e = store
            .insert_key(dup, entry(2, "key_create", &dup.id))
            .await
            .expect_err(what);
        assert_eq!(audit_count(store).await, before, "{what}: audited");
        let msg = e.to_string();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{what}: {msg:?}");
        assert!(!e.hint().is_empty(), "{what}");
    }
    let got = enroll_as(store, &k.key_hash, None, "a_unique", 2).await;
    assert!(matches!(got, Ok(Enrolled::Created { .. })), "{got:?}");
}

#[derive(Debug, Clone, Copy)]
enum Op {
    SetToken,
    Revoke,
    Delete,
    StoreDiagnostics,
}

/// Time of the operations below.
const OP_AT: i64 = 7_000;

/// An audit entry of `action` at `at_ms`, as the admin token.
pub(crate) fn entry(at_ms: i64, action: &str, target: &str) -> AuditRow {
    AuditRow {
        at_ms,
        who: "admin token".into(),
        action: action.into(),
        target: target.into(),
        detail: format!("{action} detail"),
    }
}

/// The newest audit entry.
pub(crate) async fn last_audit(store: &dyn Store) -> Option<AuditRow> {
    store.audit_log(1).await.unwrap().into_iter().next()
}

/// How many audit entries there are (the suite writes fewer than a million).
pub(crate) async fn audit_count(store: &dyn Store) -> usize {
    store.audit_log(1_000_000).await.unwrap().len()
}

async fn apply(store: &dyn Store, op: Op, id: &str) -> bool {
    let r = match op {
        Op::SetToken => store.set_token(id, &hash("new-token")).await,
        Op::Revoke => store.revoke(id, entry(OP_AT, "revoke", id)).await,
        Op::Delete => store.delete(id, entry(OP_AT, "delete", id)).await,
        Op::StoreDiagnostics => store.store_diagnostics(id, r#"{"ok":true}"#, OP_AT).await,
    };
    r.unwrap_or_else(|e| panic!("{op:?} {id}: {e}"))
}

/// Each operation on an agent: true and its effect when the agent exists, false and no
/// effect (nothing created, nothing audited) when it does not. Revoke and delete write
/// their audit entry with the change.
async fn agent_operations_table(store: &dyn Store) {
    #[rustfmt::skip]
    let cases = [
        ("set_token",         Op::SetToken,         true),
        ("set_token_missing", Op::SetToken,         false),
        ("revoke",            Op::Revoke,           true),
        ("revoke_missing",    Op::Revoke,           false),
        ("delete",            Op::Delete,           true),
        ("delete_missing",    Op::Delete,           false),
        ("diag",              Op::StoreDiagnostics, true),
        ("diag_missing",      Op::StoreDiagnostics, false),
    ];
    for (name, op, exists) in cases {
        let id = if exists {
            new_agent(store, name).await
        } else {
            format!("a_{name}")
        };
        let before = audit_count(store).await;
        assert_eq!(apply(store, op, &id).await, exists, "{name}");
        let audited = exists && matches!(op, Op::Revoke | Op::Delete);
        assert_eq!(
            audit_count(store).await,
            before + usize::from(audited),
            "{name}: audit entries"
        );
        if audited {
            let e = last_audit(store).await.unwrap();
            assert_eq!((e.at_ms, e.target.as_str()), (OP_AT, id.as_str()), "{name}");
        }
        let a = agent(store, &id).await;
        let diag = store.diagnostics(&id).await.unwrap();
        if !exists {
            assert!(a.is_none() && diag.is_none(), "{name}: created something");
            continue;
        }
        match op {
            Op::SetToken => assert_eq!(a.unwrap().token_hash, hash("new-token"), "{name}"),
            Op::Revoke => assert_eq!(a.unwrap().state.revoked_at_ms, Some(OP_AT), "{name}"),
            Op::Delete => assert!(a.is_none(), "{name}: still there"),
            Op::StoreDiagnostics => assert_eq!(
                diag,
                Some(StoredDiagnostics {
                    report: r#"{"ok":true}"#.into(),
                    received_at_ms: OP_AT
                }),
                "{name}"
            ),
        }
    }
}

async fn revocation_keeps_the_first_time(store: &dyn Store) {
    let id = new_agent(store, "revoke_twice").await;
    assert!(store.revoke(&id, entry(100, "revoke", &id)).await.unwrap());
    assert!(store.revoke(&id, entry(200, "revoke", &id)).await.unwrap());
    let a = agent(store, &id).await.unwrap();
    assert_eq!(a.state.revoked_at_ms, Some(100));
}

/// A deleted agent is gone with its diagnostics; nothing else can touch it afterwards.
async fn deletion_takes_everything(store: &dyn Store) {
    let id = new_agent(store, "delete_all").await;
    assert!(store.store_diagnostics(&id, "{}", 5).await.unwrap());
    assert!(store
        .delete(&id, entry(OP_AT, "delete", &id))
        .await
        .unwrap());
    assert!(agent(store, &id).await.is_none());
    assert_eq!(store.diagnostics(&id).await.unwrap(), None);
    for op in [Op::Delete, Op::SetToken, Op::Revoke, Op::StoreDiagnostics] {
        assert!(!apply(store, op, &id).await, "{op:?} after delete");
    }
    assert!(agent(store, &id).await.is_none(), "resurrected");
}

async fn diagnostics_are_replaced(store: &dyn Store) {
    let id = new_agent(store, "diag_replace").await;
    assert_eq!(
        store.diagnostics(&id).await.unwrap(),
        None,
        "before the first"
    );
    let first = r#"{"checks":[{"name":"a","ok":true}],"text":"é \u0000 \"q\""}"#;
    assert!(store.store_diagnostics(&id, first, 10).await.unwrap());
    assert!(store
        .store_diagnostics(&id, r#"{"n":2}"#, 20)
        .await
        .unwrap());
    assert_eq!(
        store.diagnostics(&id).await.unwrap(),
        Some(StoredDiagnostics {
            report: r#"{"n":2}"#.into(),
            received_at_ms: 20
        })
    );
    let other = new_agent(store, "diag_other").await;
    assert!(store.store_diagnostics(&other, first, 30).await.unwrap());
    assert_eq!(
        store.diagnostics(&other).await.unwrap().map(|d| d.report),
        Some(first.to_string()),
        "kept byte for byte"
    );
}

/// The heartbeat part of a state: everything a heartbeat or the flags change.
fn heartbeat_state(base: AgentState, n: u64) -> AgentState {
    AgentState {
        distro: format!("debian 12.{n}"),
        arch: "aarch64".into(),
        kernel: format!("6.1.0-{n}"),
        version: format!("1.3.{n}"),
        mode: "user".into(),
        last_heartbeat_ms: Some(1_000 + n as i64),
        uptime_secs: Some(86_400 + n),
        capabilities: Some(Capabilities {
            cpus: Some(4),
            mem_total_bytes: Some(8 << 30),
            mem_available_bytes: Some(3 << 30),
            disk_free_bytes: None,
            docker_version: Some("24.0.7".into()),
            extra: BTreeMap::from([
                ("gpu".to_string(), FlatValue::String("none".into())),
                ("numa".to_string(), FlatValue::UInt(2)),
                ("offset".to_string(), FlatValue::Int(-3)),
                ("load".to_string(), FlatValue::Float(0.5)),
                ("virt".to_string(), FlatValue::Bool(true)),
                ("tpm".to_string(), FlatValue::Null),
            ]),
        }),
        journal_head: Some(JournalHead {
            seq: (1 << 40) + n,
            hash: hash(&format!("journal-{n}")),
        }),
        flags: vec![
            crate::state::FLAG_FORKED.into(),
            crate::state::FLAG_WENT_BACKWARDS.into(),
        ],
        last_upgrade: Some(LastUpgrade {
            from: Some("1.2.3".into()),
            to: Some(format!("1.3.{n}")),
            result: Some("service_upgraded".into()),
            at: Some("2024-05-01T10:00:00Z".into()),
            extra: BTreeMap::from([("secs".to_string(), FlatValue::UInt(3))]),
        }),
        ..base
    }
}

/// A batch persists every heartbeat field of every agent in it; agents not in the store
/// are skipped; an empty batch is fine; a later batch replaces an earlier one.
async fn heartbeats_round_trip(store: &dyn Store) {
    store.flush_heartbeats(Vec::new()).await.unwrap();
    let a = new_agent(store, "hb_a").await;
    let b = new_agent(store, "hb_b").await;
    let base = |id: &str| enrolled_state(id, &key(&id["a_".len()..]), 1);
    let batch = vec![
        (a.clone(), heartbeat_state(base(&a), 1)),
        ("a_never_enrolled".to_string(), heartbeat_state(base(&a), 9)),
        (b.clone(), heartbeat_state(base(&b), 2)),
    ];
    store.flush_heartbeats(batch).await.unwrap();
    assert_eq!(
        agent(store, &a).await.unwrap().state,
        heartbeat_state(base(&a), 1)
    );
    assert_eq!(
        agent(store, &b).await.unwrap().state,
        heartbeat_state(base(&b), 2)
    );
    assert!(agent(store, "a_never_enrolled").await.is_none(), "skipped");
    // A later snapshot with less known replaces the fields.
    let later = AgentState {
        capabilities: None,
        journal_head: None,
        last_upgrade: None,
        flags: Vec::new(),
        uptime_secs: None,
        ..heartbeat_state(base(&a), 3)
    };
    store
        .flush_heartbeats(vec![(a.clone(), later.clone())])
        .await
        .unwrap();
    assert_eq!(agent(store, &a).await.unwrap().state, later);
}

/// A flush writes heartbeat fields only: a snapshot carrying another hostname, group,
/// labels, enrollment time or no revocation changes none of them, nor the token.
async fn heartbeats_never_touch_identity(store: &dyn Store) {
    let id = new_agent(store, "hb_identity").await;
    assert!(store.revoke(&id, entry(50, "revoke", &id)).await.unwrap());
    let stale = AgentState {
        hostname: "renamed".into(),
        machine_id: "other-machine".into(),
        group: Some("other-group".into()),
        labels: BTreeMap::from([("x".to_string(), "y".to_string())]),
        enrolled_at_ms: 999,
        revoked_at_ms: None,
        ..heartbeat_state(AgentState::default(), 4)
    };
    store
        .flush_heartbeats(vec![(id.clone(), stale)])
        .await
        .unwrap();
    let got = agent(store, &id).await.unwrap();
    let want = AgentState {
        revoked_at_ms: Some(50),
        ..heartbeat_state(enrolled_state(&id, &key("hb_identity"), 1), 4)
    };
    assert_eq!(got.state, want);
    assert_eq!(got.token_hash, token_hash(&id));
}

/// A catalog of (pack name, sha256 digit) pairs; the hash is 64 times the digit.
fn catalog(packs: &[(&str, char)]) -> Arc<Catalog> {
    let packs = packs
        .iter()
        .map(|(name, d)| PackAdvert {
            name: name.to_string(),
            version: format!("1.0.{d}"),
            sha256: d.to_string().repeat(64),
            actions: vec![ActionAdvert {
                id: "restart".into(),
                description: format!("restart {name} \"é\""),
                params: vec![ParamAdvert {
                    name: "unit".into(),
                    kind: "string".into(),
                    required: true,
                }],
                idempotent: true,
                privileged: false,
            }],
        })
        .collect();
    Arc::new(Catalog::new(packs))
}

/// One step on the pack records.
enum PackStep {
    /// Agent `a_{0}` (created when missing, unless it is `missing`) advertises a catalog at
    /// time `2`; the store answers `3`.
    Advertise(&'static str, &'static [(&'static str, char)], i64, bool),
    /// Trust (name, digit) by `2` at `3`: the record's (trusted_at, trusted_by) afterwards,
    /// `None` for an unknown pair.
    Trust(
        &'static str,
        char,
        &'static str,
        i64,
        Option<(i64, &'static str)>,
    ),
}

/// Catalogs record new (name, sha256) pairs as pending, first seen by the first agent;
/// trusting is idempotent (keeps the first time and who), touches no other hash of the
/// name, and knows only pairs seen.
async fn catalogs_and_trust_table(store: &dyn Store) {
    use PackStep::{Advertise, Trust};
    #[rustfmt::skip]
    let steps: &[PackStep] = &[
        Advertise("missing",  &[("cf-web", '1')],                 5,  false),
        Advertise("cat_a",    &[("cf-web", '1'), ("cf-db", '2')], 10, true),
        Advertise("cat_b",    &[("cf-web", '3')],                 20, true),
        Advertise("cat_a",    &[("cf-web", '1')],                 30, true),
        Trust("cf-web", '1', "admin token",     40, Some((40, "admin token"))),
        Trust("cf-web", '1', "dashboard x",     50, Some((40, "admin token"))),
        Trust("cf-web", '3', "dashboard y",     60, Some((60, "dashboard y"))),
        Trust("cf-web", '9', "admin token",     70, None),
        Trust("cf-nope", '1', "admin token",    70, None),
        Advertise("cat_b",    &[],                                80, true),
    ];
    let mut made = std::collections::BTreeSet::new();
    for step in steps {
        match *step {
            Advertise(name, packs, at, want) => {
                let id = format!("a_{name}");
                if name != "missing" && made.insert(name) {
                    new_agent(store, name).await;
                }
                let c = catalog(packs);
                assert_eq!(
                    store.store_catalog(&id, c.clone(), at).await.unwrap(),
                    want,
                    "{name} at {at}"
                );
                let stored = agent(store, &id).await.map(|a| a.state.packs);
                assert_eq!(
                    stored,
                    want.then_some(Some(c)),
                    "{name} at {at}: loaded back"
                );
            }
            Trust(name, d, by, at, want) => {
                let sha = d.to_string().repeat(64);
                let mut e = entry(at, "pack_trust", name);
                e.who = by.to_string();
                let before = audit_count(store).await;
                let got = store.trust_pack(name, &sha, e).await.unwrap();
                assert_eq!(
                    audit_count(store).await,
                    before + usize::from(got.is_some()),
                    "{name} {d}: audited once when found, never otherwise"
                );
                if let Some(r) = &got {
                    let e = last_audit(store).await.unwrap();
                    assert_eq!((e.at_ms, e.who.as_str()), (at, by), "{name} {d}");
                    assert_eq!(e.detail, trust_outcome(r, at, by), "{name} {d}");
                }
                let got = got.map(|r| {
                    assert_eq!(r.state, outpost_proto::PackTrust::Trusted, "{name} {d}");
                    (r.trusted_at_ms.unwrap(), r.trusted_by.unwrap())
                });
                assert_eq!(
                    got,
                    want.map(|(t, b)| (t, b.to_string())),
                    "trust {name} {d} at {at}"
                );
            }
        }
    }
    let rows: Vec<PackRow> = store
        .packs()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.name.starts_with("cf-"))
        .collect();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                &r.sha256[..1],
                r.state,
                r.first_seen_ms,
                r.first_seen_by.as_str(),
            )
        })
        .collect();
    use outpost_proto::PackTrust::{Pending, Trusted};
    assert_eq!(
        got,
        vec![
            ("cf-db", "2", Pending, 10, "a_cat_a"),
            ("cf-web", "1", Trusted, 10, "a_cat_a"),
            ("cf-web", "3", Trusted, 20, "a_cat_b"),
        ],
        "ordered by name, then first sighting"
    );
    let db = &rows[0];
    assert_eq!(
        (
            db.version.as_str(),
            db.trusted_at_ms,
            db.trusted_by.as_deref()
        ),
        ("1.0.2", None, None)
    );
    assert_eq!(
        db.actions,
        catalog(&[("cf-db", '2')]).packs[0].actions,
        "actions kept as sent"
    );
}

/// A heartbeat flush keeps the catalog; deleting the agent takes it, and a catalog for a
/// deleted agent records nothing.
async fn catalog_survives_heartbeats_and_goes_with_the_agent(store: &dyn Store) {
    let id = new_agent(store, "cat_keep").await;
    let c = catalog(&[("ck-web", '4')]);
    assert!(store.store_catalog(&id, c.clone(), 5).await.unwrap());
    let snapshot = AgentState {
        packs: None,
        ..heartbeat_state(enrolled_state(&id, &key("cat_keep"), 1), 5)
    };
    store
        .flush_heartbeats(vec![(id.clone(), snapshot)])
        .await
        .unwrap();
    assert_eq!(
        agent(store, &id).await.unwrap().state.packs,
        Some(c.clone())
    );
    assert!(store
        .delete(&id, entry(OP_AT, "delete", &id))
        .await
        .unwrap());
    assert!(!store
        .store_catalog(&id, catalog(&[("ck-gone", '5')]), 6)
        .await
        .unwrap());
    let names: Vec<String> = store
        .packs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(
        names.contains(&"ck-web".to_string()),
        "a record outlives its agents"
    );
    assert!(
        !names.contains(&"ck-gone".to_string()),
        "nothing recorded for a deleted agent"
    );
}
