use super::*;
use serde_json::{json, Value};

fn caps(v: Value) -> Capabilities {
    serde_json::from_value(v).unwrap()
}

#[test]
fn error_codes_serialize_as_their_names() {
    for c in ErrorCode::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!(c.as_str())).unwrap(),
            c
        );
        assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
    }
    assert_eq!(ErrorCode::parse("key_from_the_future"), None);
    let b: ErrorBody = serde_json::from_str(r#"{"error":"key_used","message":"m"}"#).unwrap();
    assert_eq!(b.code(), Some(ErrorCode::KeyUsed));
    assert!(ErrorCode::KeyUsed.is_key_refusal() && !ErrorCode::TokenRevoked.is_key_refusal());
    let sent = serde_json::to_value(ErrorBody::new(ErrorCode::NotFound, "m", "h")).unwrap();
    assert_eq!(
        sent,
        json!({"error": "not_found", "message": "m", "hint": "h"})
    );
}

/// Moved from the hub's limits.rs (`check_flat_object`): the same caps on the typed objects.
#[test]
fn flat_objects() {
    assert!(caps(json!({"cpus": 2, "d": null, "s": "x"}))
        .validate()
        .is_ok());
    let e = caps(json!({"s": "x".repeat(256)})).validate().unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::FieldTooLong, Some("capabilities.s"))
    );
    let e = caps(json!({"docker_version": "x".repeat(256)}))
        .validate()
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("capabilities.docker_version"));
    let e = caps(json!({"n": {"deep": 1}})).validate().unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::FieldInvalid, Some("capabilities.n"))
    );
    assert_eq!(
        caps(json!({"n": [1]})).validate().unwrap_err().code,
        ErrorCode::FieldInvalid
    );
    assert!(serde_json::from_value::<Capabilities>(json!([1])).is_err());
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!(1))).collect();
    let e = caps(Value::Object(many)).validate().unwrap_err();
    assert_eq!(e.field.as_deref(), Some("capabilities"));
    let e = caps(json!({"k".repeat(65): 1})).validate().unwrap_err();
    assert_eq!(e.field.as_deref(), Some("capabilities key"));
    let u: LastUpgrade = serde_json::from_value(json!({"to": "v".repeat(256)})).unwrap();
    assert_eq!(
        u.validate().unwrap_err().field.as_deref(),
        Some("last_upgrade.to")
    );
    assert!(check_len("facts.hostname", &"h".repeat(255), MAX_FIELD).is_ok());
    let e = check_len("facts.hostname", &"h".repeat(256), MAX_FIELD).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("facts.hostname"));
    assert_eq!(e.message, "facts.hostname is longer than 255 bytes");
}

#[test]
fn flat_values_round_trip() {
    let v = json!({"cpus": 2, "mem_total_bytes": null, "mem_available_bytes": 1,
                   "disk_free_bytes": 3, "docker_version": "27.1",
                   "gpu": true, "load": 0.5, "neg": -3, "s": "x", "n": null});
    assert_eq!(serde_json::to_value(caps(v.clone())).unwrap(), v);
    // The named fields are always sent, null when unknown.
    assert_eq!(
        serde_json::to_value(caps(json!({"cpus": 1}))).unwrap(),
        json!({"cpus": 1, "mem_total_bytes": null, "mem_available_bytes": null,
               "disk_free_bytes": null, "docker_version": null})
    );
    let u = json!({"from": null, "to": "1.2.0", "result": "service_upgraded",
                   "at": "2026-01-01T00:00:00Z"});
    let lu: LastUpgrade = serde_json::from_value(u.clone()).unwrap();
    assert_eq!(serde_json::to_value(lu).unwrap(), u);
}

#[test]
fn heartbeat_caps_and_cuts() {
    let hb = Heartbeat {
        agent_id: "a_1".into(),
        kernel: Some("é".repeat(200)),
        capabilities: Some(Capabilities {
            docker_version: Some("d".repeat(300)),
            ..Default::default()
        }),
        last_upgrade: Some(LastUpgrade {
            at: Some("t".repeat(300)),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        hb.validate().unwrap_err().field.as_deref(),
        Some("kernel"),
        "checked before capping"
    );
    let hb = hb.capped();
    assert!(hb.validate().is_ok());
    assert_eq!(
        hb.kernel.as_deref().map(str::len),
        Some(254),
        "no half character"
    );
    // Absent and null fields both keep the stored value.
    let min: Heartbeat = serde_json::from_value(json!({"agent_id": "a", "kernel": null})).unwrap();
    assert_eq!(
        min,
        Heartbeat {
            agent_id: "a".into(),
            ..Default::default()
        }
    );
}

#[test]
fn enroll_and_key_requests() {
    let mut r = EnrollRequest {
        key: "k".into(),
        nonce: None,
        facts: Facts {
            hostname: "h".into(),
            ..Default::default()
        },
    };
    assert!(r.validate().is_ok());
    let body = serde_json::to_value(&r).unwrap();
    assert!(body.get("nonce").is_none(), "no nonce, no field: {body}");
    r.nonce = Some("short".into());
    assert_eq!(r.validate().unwrap_err().field.as_deref(), Some("nonce"));
    r.nonce = Some("n".repeat(64));
    assert!(r.validate().is_ok());
    r.facts.hostname = " ".into();
    assert_eq!(
        r.validate().unwrap_err().code,
        ErrorCode::FieldInvalid,
        "empty hostname"
    );
    let k: CreateKeyRequest = serde_json::from_value(json!({"ttl_secs": 0})).unwrap();
    assert_eq!(
        (
            k.validate().unwrap_err().code,
            k.validate().unwrap_err().field
        ),
        (ErrorCode::BadRequest, None)
    );
    assert!(serde_json::from_value::<CreateKeyRequest>(json!({"ttl_secs": 1, "x": 1})).is_err());
    let k: CreateKeyRequest =
        serde_json::from_value(json!({"ttl_secs": 1, "labels": {"a": "b".repeat(256)}})).unwrap();
    assert_eq!(k.validate().unwrap_err().field.as_deref(), Some("labels.a"));
}

#[test]
fn pack_trust_wire_types() {
    let advert: PackAdvert = serde_json::from_value(json!({
        "name": "web", "version": "1.0.0", "sha256": "ab".repeat(32),
        "actions": [{"id": "restart", "params": [{"name": "unit", "type": "string"}]}]
    }))
    .unwrap();
    let v = PackView {
        name: "web".into(),
        sha256: "ab".repeat(32),
        version: "1.0.0".into(),
        state: PackTrust::Pending,
        actions: advert.actions.clone(),
        first_seen: "2024-05-01T10:00:00Z".into(),
        first_seen_by: "a_1".into(),
        trusted_at: None,
        trusted_by: None,
        agents: 2,
    };
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["state"], "pending");
    assert_eq!(j["trusted_at"], Value::Null);
    assert_eq!(j["actions"][0]["params"][0]["type"], "string");
    assert_eq!(serde_json::from_value::<PackView>(j).unwrap(), v);
    for (s, want) in [
        (CatalogState::Trusted, "trusted"),
        (CatalogState::Pending, "pending"),
        (CatalogState::Drifted, "drifted"),
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(want));
        assert_eq!(s.as_str(), want);
    }
    assert_eq!(PackTrust::Trusted.as_str(), "trusted");
    // An agent's pack: the advert flattened, plus its state.
    let p = AgentPack {
        pack: advert,
        state: CatalogState::Drifted,
    };
    let j = serde_json::to_value(&p).unwrap();
    assert_eq!(
        (j["name"].as_str(), j["state"].as_str()),
        (Some("web"), Some("drifted"))
    );
    assert_eq!(serde_json::from_value::<AgentPack>(j).unwrap(), p);
    // An agent detail without `packs` (an older hub) reads as none.
    let d: AgentDetail<Value> = serde_json::from_value(json!({
        "id": "a_1", "hostname": "h", "status": "online", "version": "", "distro": "",
        "arch": "", "kernel": "", "mode": "", "group": null, "labels": {}, "machine_id": "",
        "enrolled_at": "2024-05-01T10:00:00Z", "revoked_at": null, "last_heartbeat_at": null,
        "last_heartbeat_age_secs": null, "uptime_secs": null, "capabilities": null,
        "journal_head": null, "last_upgrade": null, "flags": [], "diagnostics": null
    }))
    .unwrap();
    assert_eq!(d.packs, None);
}

#[test]
fn run_wire_types_round_trip() {
    for s in RunState::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        assert_eq!(RunState::parse(s.as_str()), Some(s));
    }
    assert_eq!(RunState::parse("done"), None);
    assert!(RunState::Lost.is_final() && !RunState::Unknown.is_final());
    assert_eq!(RunOutcome::TimedOut.state(), RunState::TimedOut);
    let create: CreateRunRequest = serde_json::from_value(json!({
        "target": {"labels": {"role": "web"}}, "action": "web/restart",
        "params": {"unit": "nginx"}, "idempotency_key": "k-1"
    }))
    .unwrap();
    assert!(create.validate().is_ok());
    let back: CreateRunRequest =
        serde_json::from_value(serde_json::to_value(&create).unwrap()).unwrap();
    assert_eq!(back, create);
    assert!(serde_json::from_value::<CreateRunRequest>(
        json!({"target": {"agent": "a"}, "action": "x", "extra": 1})
    )
    .is_err());
    #[rustfmt::skip]
    let bad = [
        (json!({"target": {}, "action": "x"}), "target"),
        (json!({"target": {"agent": "a", "group": "g"}, "action": "x"}), "target"),
        (json!({"target": {"agent": "a"}, "action": ""}), "action"),
        (json!({"target": {"agent": "a"}, "action": "x", "params": {"p": "a\u{0}"}}), "params.p"),
        (json!({"target": {"agent": "a"}, "action": "x", "params": {"p": "v".repeat(4097)}}), "params.p"),
        (json!({"target": {"labels": (0..33).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}, "action": "x"}), "target.labels"),
    ];
    for (v, field) in bad {
        let r: CreateRunRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            r.validate().unwrap_err().field.as_deref(),
            Some(field),
            "{v}"
        );
    }
    let poll = PollRequest {
        agent_id: "a_1".into(),
        wait_secs: 30,
        holding: vec!["r_1".into()],
    };
    assert!(poll.validate().is_ok());
    assert_eq!(
        serde_json::from_value::<PollRequest>(serde_json::to_value(&poll).unwrap()).unwrap(),
        poll
    );
    let p: PollRequest = serde_json::from_value(json!({"agent_id": "a", "wait_secs": 31})).unwrap();
    assert_eq!(
        p.validate().unwrap_err().field.as_deref(),
        Some("wait_secs")
    );
    let ev: EventsUpload = serde_json::from_value(json!({"events": [
        {"seq": 1, "kind": "started", "at": "2024-01-01T00:00:00Z", "data": {"pid": 7}},
        {"seq": 2, "kind": "progress", "at": "2024-01-01T00:00:01Z"}
    ]}))
    .unwrap();
    assert!(ev.validate().is_ok());
    assert_eq!(ev.events[1].data, FlatMap::new());
    let bad: EventsUpload =
        serde_json::from_value(json!({"events": [{"seq": 1, "kind": "Started!", "at": "x"}]}))
            .unwrap();
    assert_eq!(
        bad.validate().unwrap_err().field.as_deref(),
        Some("events.kind")
    );
    let res: RunResult = serde_json::from_value(json!({
        "outcome": "failed", "exit_code": 3, "signal": null, "reason": "exit 3",
        "finished_at": "2024-01-01T00:00:02Z", "log_bytes": 10
    }))
    .unwrap();
    assert!(res.validate().is_ok());
    assert_eq!(
        serde_json::from_value::<RunResult>(serde_json::to_value(&res).unwrap()).unwrap(),
        res
    );
    let gap = ErrorBody {
        expected_offset: Some(7),
        ..ErrorBody::new(ErrorCode::LogGap, "m", "h")
    };
    assert_eq!(
        serde_json::to_value(&gap).unwrap(),
        json!({"error": "log_gap", "message": "m", "hint": "h", "expected_offset": 7})
    );
}
