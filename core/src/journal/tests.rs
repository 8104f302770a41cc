use super::*;
use serde_json::json;
use std::sync::Arc;

fn journal_with(n: u64) -> (tempfile::TempDir, Journal) {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path());
    for i in 0..n {
        j.append("test", json!({"i": i, "z": "last", "a": [1, "two"]}))
            .unwrap();
    }
    (d, j)
}

fn lines(j: &Journal) -> Vec<String> {
    std::fs::read_to_string(j.path())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(j: &Journal, l: &[String]) {
    std::fs::write(
        j.path(),
        l.iter().map(|s| format!("{s}\n")).collect::<String>(),
    )
    .unwrap();
}

#[test]
fn canonical_encoding_is_sorted_and_compact() {
    let data = json!({"b": 1, "a": [true, null], "é": "x\n\"y\"", "f": 1.5});
    let c = Record::canonical(1, "2024-01-01T00:00:00Z", "x", &data, GENESIS);
    assert_eq!(
        c,
        format!(
            "{{\"data\":{{\"a\":[true,null],\"b\":1,\"f\":1.5,\"é\":\"x\\n\\\"y\\\"\"}},\
             \"kind\":\"x\",\"prev\":\"{GENESIS}\",\"seq\":1,\"time\":\"2024-01-01T00:00:00Z\"}}"
        )
    );
    assert_eq!(
        Record::compute_hash(1, "2024-01-01T00:00:00Z", "x", &data, GENESIS),
        hex::encode(Sha256::digest(c.as_bytes()))
    );
}

#[test]
fn append_chains_and_verifies() {
    let (_d, j) = journal_with(0);
    assert_eq!(j.head().unwrap(), None);
    assert_eq!(
        j.verify().unwrap(),
        VerifyReport {
            records: 0,
            head: None,
            torn_tail: false
        }
    );
    let a = j.append("one", json!({})).unwrap();
    let b = j.append("two", json!({"k": "v"})).unwrap();
    assert_eq!((a.seq, a.prev.as_str()), (1, GENESIS));
    assert_eq!((b.seq, b.prev.as_str()), (2, a.hash.as_str()));
    assert_eq!(j.head().unwrap(), Some((2, b.hash.clone())));
    let rep = j.verify().unwrap();
    assert_eq!(rep.records, 2);
    assert_eq!(rep.head, Some((2, b.hash.clone())));
    assert_eq!(j.read_all().unwrap(), vec![a, b]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(j.path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
}

/// Each case edits the lines of a 5-record journal; verify must name the first broken line.
#[test]
fn tampering_names_first_broken_record() {
    type Edit = fn(&mut Vec<String>);
    fn set_field(l: &mut [String], i: usize, k: &str, v: Value) {
        let mut r: Value = serde_json::from_str(&l[i]).unwrap();
        r[k] = v;
        l[i] = r.to_string();
    }
    fn rehash(l: &mut [String], i: usize) {
        let mut r: Record = serde_json::from_str(&l[i]).unwrap();
        r.hash = r.expected_hash();
        l[i] = serde_json::to_string(&r).unwrap();
    }
    let cases: Vec<(&str, Edit, u64, Option<u64>, &str)> = vec![
        (
            "data edited",
            |l| set_field(l, 1, "data", json!({"i": 99})),
            2,
            Some(2),
            "hash does not match",
        ),
        (
            "kind edited",
            |l| set_field(l, 3, "kind", json!("other")),
            4,
            Some(4),
            "hash does not match",
        ),
        (
            "line deleted",
            |l| {
                l.remove(1);
            },
            2,
            Some(3),
            "seq gap (expected 2, found 3)",
        ),
        (
            "lines swapped",
            |l| l.swap(2, 3),
            3,
            Some(4),
            "seq gap (expected 3, found 4)",
        ),
        (
            "garbage line",
            |l| l[2] = "{not json".into(),
            3,
            None,
            "bad json",
        ),
        (
            "unknown field",
            |l| set_field(l, 2, "extra", json!(1)),
            3,
            None,
            "bad json",
        ),
        (
            "prev forged and rehashed",
            |l| {
                set_field(l, 2, "prev", json!(GENESIS));
                rehash(l, 2);
            },
            3,
            Some(3),
            "prev does not match",
        ),
        (
            "two edits: first wins",
            |l| {
                set_field(l, 4, "data", json!(1));
                set_field(l, 1, "time", json!("2000-01-01T00:00:00Z"));
            },
            2,
            Some(2),
            "hash does not match",
        ),
        (
            "whole chain rewritten from line 2",
            |l| {
                // A consistent rewrite from line 2 onwards still breaks at line 2 (its prev).
                set_field(l, 1, "prev", json!("ff".repeat(32)));
                rehash(l, 1);
            },
            2,
            Some(2),
            "prev does not match",
        ),
    ];
    for (name, edit, want_line, want_seq, want_reason) in cases {
        let (_d, j) = journal_with(5);
        let mut l = lines(&j);
        edit(&mut l);
        write_lines(&j, &l);
        match j.verify() {
            Err(e @ JournalError::Broken { .. }) => {
                let JournalError::Broken {
                    line,
                    seq,
                    ref reason,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((line, seq), (want_line, want_seq), "{name}: {e}");
                assert!(reason.to_string().contains(want_reason), "{name}: {reason}");
                assert!(
                    e.to_string().contains(&format!("line {want_line}")),
                    "{name}: {e}"
                );
                assert!(!e.to_string().contains('\n'));
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn torn_tail_is_reported_then_repaired() {
    let (_d, j) = journal_with(2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(j.path())
        .unwrap();
    f.write_all(br#"{"seq":3,"time":"#).unwrap();
    let rep = j.verify().unwrap();
    assert_eq!((rep.records, rep.torn_tail), (2, true));
    assert_eq!(j.head().unwrap().map(|h| h.0), Some(2));
    let r = j.append("after", json!(null)).unwrap();
    assert_eq!(r.seq, 3);
    let rep = j.verify().unwrap();
    assert_eq!((rep.records, rep.torn_tail), (3, false));
}

#[test]
fn long_records_are_found_by_the_backwards_tail_read() {
    let (_d, j) = journal_with(1);
    let big = "x".repeat(10_000);
    let r = j.append("big", json!({"s": big})).unwrap();
    assert_eq!(j.head().unwrap(), Some((2, r.hash)));
    assert_eq!(j.append("next", json!({})).unwrap().seq, 3);
    j.verify().unwrap();
}

#[test]
fn concurrent_appends_keep_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let shared = Arc::new(Journal::open(d.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let dir = d.path().to_path_buf();
            std::thread::spawn(move || {
                // Odd threads use their own handle (like another process), even ones share.
                let own = Journal::open(&dir);
                let j = if t % 2 == 1 { &own } else { &*shared };
                for i in 0..25 {
                    j.append("t", json!({"t": t, "i": i})).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rep = shared.verify().unwrap();
    assert_eq!(rep.records, 200);
    assert_eq!(rep.head.unwrap().0, 200);
}

#[test]
fn follow_yields_only_new_complete_records() {
    let (_d, j) = journal_with(2);
    let mut from_start = j.follow(true).unwrap();
    let mut from_end = j.follow(false).unwrap();
    assert_eq!(from_start.poll().unwrap().len(), 2);
    assert!(from_end.poll().unwrap().is_empty());
    j.append("a", json!({})).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(j.path())
        .unwrap();
    f.write_all(b"{\"partial").unwrap();
    let got: Vec<u64> = from_end.poll().unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(got, vec![3]);
    assert!(from_end.poll().unwrap().is_empty());
    j.append("b", json!({})).unwrap(); // cuts the torn tail, then appends seq 4
    let got: Vec<u64> = from_start
        .wait(Duration::from_millis(5), || true)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got, vec![3, 4]);
}

#[test]
fn missing_dir_is_an_io_error_with_hint() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(&d.path().join("nope"));
    let e = j.append("x", json!({})).unwrap_err();
    assert!(matches!(e, JournalError::Io { .. }), "{e}");
    assert!(e.hint().contains("nope"));
    assert_eq!(j.head().unwrap(), None);
}

#[test]
fn planted_symlink_is_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, "root-only line without newline").unwrap();
    let state = d.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(&victim, state.join(FILE)).unwrap();
    let j = Journal::open(&state);
    assert!(j.append("x", serde_json::json!({})).is_err());
    assert!(j.read_all().is_err());
    assert!(j.head().is_err());
    assert!(j.follow(true).unwrap().poll().is_err());
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root-only line without newline"
    );
}

#[test]
fn oversized_line_is_refused_not_read_whole() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path());
    j.append("x", serde_json::json!({})).unwrap();
    let big = vec![b'a'; (MAX_RECORD_BYTES + 10) as usize];
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join(FILE))
        .unwrap();
    std::io::Write::write_all(&mut f, &big).unwrap();
    std::io::Write::write_all(&mut f, b"\n").unwrap();
    assert!(j.read_all().is_err());
    assert!(j.follow(true).unwrap().poll().is_err());
}

#[test]
fn lock_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path());
    j.append("x", serde_json::json!({})).unwrap();
    let m = std::fs::metadata(d.path().join("events.jsonl.lock")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
}

#[test]
fn read_recent_returns_the_complete_records_of_the_window() {
    let (_d, j) = journal_with(50);
    let all = j.read_all().unwrap();
    let whole = std::fs::metadata(j.path()).unwrap().len();
    // a window larger than the file: everything
    assert_eq!(j.read_recent(whole + 10).unwrap().len(), 50);
    // exactly the last three lines, then a window that starts inside the third-last line
    let l = lines(&j);
    let three: u64 = l[47..].iter().map(|x| x.len() as u64 + 1).sum();
    let got: Vec<u64> = j
        .read_recent(three)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got, vec![48, 49, 50]);
    let got: Vec<u64> = j
        .read_recent(three - 1)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got, vec![49, 50]);
    assert_eq!(j.read_recent(0).unwrap().len(), 0);
    // a torn last line is left out
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(j.path())
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\": 51, \"ti").unwrap();
    let got = j.read_recent(three + 20).unwrap();
    assert_eq!(got.last().map(|r| r.seq), Some(50));
    assert_eq!(got.last().unwrap().hash, all[49].hash);
}
