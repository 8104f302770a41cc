//! Wire tests: byte vectors derived by hand from the D-Bus specification ("Marshaling"), both
//! directions, and fuzz-style robustness (random bytes, truncations, bit flips).
use super::*;

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

fn enc(v: &Value) -> Vec<u8> {
    let mut e = Encoder::default();
    e.value(v).unwrap();
    e.buf
}

fn dec(sig: &str, bytes: &[u8]) -> Result<Value> {
    let mut d = Decoder::new(bytes, false);
    let v = d.value(sig, 0)?;
    assert_eq!(d.position(), bytes.len(), "{sig}: trailing bytes");
    Ok(v)
}

/// Every value, its signature and its little-endian encoding at offset 0.
fn cases() -> Vec<(Value, &'static str, Vec<u8>)> {
    vec![
        (Value::Byte(0x2a), "y", vec![0x2a]),
        (Value::Bool(true), "b", vec![1, 0, 0, 0]),
        (Value::I32(-2), "i", vec![0xfe, 0xff, 0xff, 0xff]),
        (Value::U32(0x0102_0304), "u", vec![4, 3, 2, 1]),
        (Value::I64(-1), "x", vec![0xff; 8]),
        (Value::U64(1), "t", vec![1, 0, 0, 0, 0, 0, 0, 0]),
        (s("ab"), "s", vec![2, 0, 0, 0, b'a', b'b', 0]),
        (Value::Path("/".into()), "o", vec![1, 0, 0, 0, b'/', 0]),
        (Value::Sig("a(sv)".into()), "g", b"\x05a(sv)\0".to_vec()),
        (Value::Array("s".into(), vec![]), "as", vec![0, 0, 0, 0]),
        // An empty array still pads to its element's alignment.
        (Value::Array("t".into(), vec![]), "at", vec![0; 8]),
        (
            Value::Array("s".into(), vec![s("x"), s("yz")]),
            "as",
            [
                &[15, 0, 0, 0][..],
                &[1, 0, 0, 0, b'x', 0, 0, 0],
                &[2, 0, 0, 0, b'y', b'z', 0],
            ]
            .concat(),
        ),
        (
            Value::Array(
                "(sv)".into(),
                vec![Value::Struct(vec![
                    s("a"),
                    Value::Variant(Box::new(Value::U32(7))),
                ])],
            ),
            "a(sv)",
            [
                &[16, 0, 0, 0, 0, 0, 0, 0][..], // length, pad to 8
                &[1, 0, 0, 0, b'a', 0],         // "a"
                &[1, b'u', 0, 0, 0, 0],         // variant signature, pad to 4
                &[7, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            Value::Array(
                "{sb}".into(),
                vec![Value::Dict(Box::new(s("k")), Box::new(Value::Bool(true)))],
            ),
            "a{sb}",
            [
                &[12, 0, 0, 0, 0, 0, 0, 0][..],
                &[1, 0, 0, 0, b'k', 0, 0, 0],
                &[1, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            Value::Variant(Box::new(Value::Array("s".into(), vec![s("x")]))),
            "v",
            [
                &[2, b'a', b's', 0][..],
                &[6, 0, 0, 0],
                &[1, 0, 0, 0, b'x', 0],
            ]
            .concat(),
        ),
        (
            Value::Struct(vec![Value::Byte(1), Value::U64(2)]),
            "(yt)",
            [&[1, 0, 0, 0, 0, 0, 0, 0][..], &[2, 0, 0, 0, 0, 0, 0, 0]].concat(),
        ),
    ]
}

#[test]
fn values_both_directions() {
    for (v, sig, bytes) in cases() {
        assert_eq!(v.signature(), sig, "{v:?}");
        assert_eq!(enc(&v), bytes, "encode {v:?}");
        assert_eq!(dec(sig, &bytes).unwrap(), v, "decode {sig}");
    }
}

#[test]
fn big_endian_values() {
    let mut d = Decoder::new(&[1, 2, 3, 4, 0, 0, 0, 2, b'h', b'i', 0], true);
    assert_eq!(d.value("u", 0).unwrap(), Value::U32(0x0102_0304));
    assert_eq!(d.value("s", 0).unwrap(), s("hi"));
}

#[test]
fn signatures() {
    let ok: &[(&str, &[&str])] = &[
        ("", &[]),
        ("s", &["s"]),
        ("ssa(sv)a(sa(sv))", &["s", "s", "a(sv)", "a(sa(sv))"]),
        ("a{sv}u", &["a{sv}", "u"]),
        ("a(sasb)", &["a(sasb)"]),
    ];
    for (sig, want) in ok {
        assert_eq!(&split_signature(sig).unwrap(), want, "{sig}");
    }
    for bad in [
        "(", "()", "a", "a{vs}", "a{s}", "a{sss}", "z", "{sv}", ")", "(s", "a(s))",
    ] {
        assert!(split_signature(bad).is_err(), "{bad}");
    }
    let deep = format!("{}s", "a".repeat(70));
    assert!(split_signature(&deep).is_err());
}

#[test]
fn decode_rejects_bad_values() {
    let cases: &[(&str, &[u8])] = &[
        ("b", &[2, 0, 0, 0]),                       // boolean 2
        ("s", &[2, 0, 0, 0, b'a', b'b', 1]),        // no nul terminator
        ("s", &[1, 0, 0, 0, 0, 0]),                 // interior nul
        ("s", &[2, 0, 0, 0, 0xff, 0xfe, 0]),        // not utf-8
        ("s", &[0xff, 0xff, 0xff, 0xff, b'a', 0]),  // length beyond the buffer
        ("as", &[0, 0, 0, 0x10, 0, 0, 0, 0]),       // array longer than 64 MiB
        ("as", &[5, 0, 0, 0, 1, 0, 0, 0, b'x', 0]), // length cuts an element
        ("v", &[2, b's', b's', 0]),                 // variant of two types
        ("g", &[1, b'z', 0]),                       // bad signature
        ("u", &[1, 0]),                             // truncated
    ];
    for (sig, bytes) in cases {
        let mut d = Decoder::new(bytes, false);
        assert!(d.value(sig, 0).is_err(), "{sig} {bytes:?}");
    }
}

#[test]
fn nesting_is_bounded() {
    // 100 variants, each holding the next: refused, no stack overflow.
    let mut bytes = Vec::new();
    for _ in 0..100 {
        bytes.extend_from_slice(&[1, b'v', 0]);
    }
    bytes.extend_from_slice(&[1, b'y', 0, 7]);
    assert!(matches!(dec("v", &bytes), Err(WireError::Malformed(_))));
    // 10 are fine.
    let mut v = Value::Byte(7);
    for _ in 0..10 {
        v = Value::Variant(Box::new(v));
    }
    assert_eq!(dec("v", &enc(&v)).unwrap(), v);
}

#[test]
fn encode_rejects_what_the_bus_would() {
    let mut e = Encoder::default();
    assert!(e.value(&s("a\0b")).is_err());
    assert!(e
        .value(&Value::Array("s".into(), vec![Value::U32(1)]))
        .is_err());
    assert!(e.value(&Value::Array("s)".into(), vec![])).is_err());
    assert!(e.value(&Value::Sig("s".repeat(300))).is_err());
}

/// `Hello` as every client sends it first; the layout matches libdbus's (same field lengths,
/// `m` = 109 bytes of header fields), here in our field order: path, interface, member,
/// destination.
fn hello_bytes() -> Vec<u8> {
    let field = |code: u8, sig: u8, text: &str| {
        let mut f = vec![code, 1, sig, 0];
        f.extend_from_slice(&(text.len() as u32).to_le_bytes());
        f.extend_from_slice(text.as_bytes());
        f.push(0);
        f
    };
    let mut b = vec![b'l', 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 109, 0, 0, 0];
    for (i, f) in [
        field(1, b'o', "/org/freedesktop/DBus"),
        field(2, b's', "org.freedesktop.DBus"),
        field(3, b's', "Hello"),
        field(6, b's', "org.freedesktop.DBus"),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            b.resize(b.len().next_multiple_of(8), 0);
        }
        b.extend_from_slice(&f);
    }
    b.resize(b.len().next_multiple_of(8), 0);
    b
}

fn hello() -> Message {
    let bus = "org.freedesktop.DBus";
    let mut m = Message::call(bus, "/org/freedesktop/DBus", bus, "Hello", vec![]);
    m.serial = 1;
    m
}

#[test]
fn hello_both_directions() {
    let bytes = hello_bytes();
    assert_eq!(bytes.len(), 128);
    assert_eq!(hello().encode().unwrap(), bytes);
    assert_eq!(Message::decode(&bytes).unwrap(), hello());
    assert_eq!(frame_len(&bytes).unwrap(), Some(128));
    assert_eq!(frame_len(&bytes[..15]).unwrap(), None);
}

/// A `JobRemoved` as systemd sends it (the bus adds the sender).
fn job_removed() -> Message {
    let mut m = Message::signal(
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "JobRemoved",
        vec![
            Value::U32(42),
            Value::Path("/org/freedesktop/systemd1/job/42".into()),
            s("outpost.service"),
            s("done"),
        ],
    );
    m.serial = 9;
    m.sender = Some(":1.3".into());
    m
}

#[test]
fn messages_round_trip() {
    let mut err = Message::signal("/", "a.b", "c", vec![s("Unit x.service not loaded.")]);
    err.kind = Kind::Error;
    (err.path, err.interface, err.member) = (None, None, None);
    err.error_name = Some("org.freedesktop.systemd1.NoSuchUnit".into());
    err.reply_serial = Some(3);
    err.serial = 5;
    for m in [hello(), job_removed(), err] {
        let bytes = m.encode().unwrap();
        assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }
}

#[test]
fn big_endian_message() {
    // A signal from a big-endian peer: path "/", interface "a.b", member "c", body u32 7.
    let mut b = vec![b'B', 4, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1];
    let fields: &[&[u8]] = &[
        &[1, 1, b'o', 0, 0, 0, 0, 1, b'/', 0, 0, 0, 0, 0, 0, 0],
        &[2, 1, b's', 0, 0, 0, 0, 3, b'a', b'.', b'b', 0, 0, 0, 0, 0],
        &[3, 1, b's', 0, 0, 0, 0, 1, b'c', 0, 0, 0, 0, 0, 0, 0],
        &[8, 1, b'g', 0, 1, b'u', 0],
    ];
    let fields = fields.concat();
    b.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    b.extend_from_slice(&fields);
    b.resize(b.len().next_multiple_of(8), 0);
    b.extend_from_slice(&[0, 0, 0, 7]);
    let m = Message::decode(&b).unwrap();
    assert_eq!((m.kind, m.serial), (Kind::Signal, 1));
    assert_eq!(m.member.as_deref(), Some("c"));
    assert_eq!(m.body, vec![Value::U32(7)]);
}

#[test]
fn frames_are_bounded() {
    let mut head = hello_bytes()[..16].to_vec();
    head[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(frame_len(&head), Err(WireError::TooLarge(_))));
    head[0] = b'x';
    assert!(matches!(frame_len(&head), Err(WireError::Malformed(_))));
    let huge = Message::signal("/", "a.b", "c", vec![s(&"x".repeat(MAX_MESSAGE))]);
    assert!(matches!(huge.encode(), Err(WireError::TooLarge(_))));
}

#[test]
fn required_fields_and_types() {
    let mut bad = hello();
    bad.member = None;
    let bytes = bad.encode().unwrap();
    assert!(Message::decode(&bytes).is_err(), "call without member");
    let mut bytes = hello().encode().unwrap();
    bytes[8] = 0; // serial 0
    assert!(Message::decode(&bytes).is_err());
    let mut bytes = hello().encode().unwrap();
    bytes[1] = 9; // unknown type
    assert!(Message::decode(&bytes).is_err());
    let mut bytes = hello().encode().unwrap();
    bytes[18] = b's'; // PATH field as a string
    assert!(Message::decode(&bytes).is_err());
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sigs = [
        "y", "b", "s", "g", "v", "as", "a(sv)", "a{sv}", "(yv)", "a(sasb)", "at",
    ];
    for _ in 0..20_000 {
        let len = rng.below(96);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = Message::decode(&bytes);
        let _ = frame_len(&bytes);
        for sig in sigs {
            let _ = Decoder::new(&bytes, rng.next() & 1 == 1).value(sig, 0);
        }
        // With a plausible fixed header the decoder gets past the first checks.
        if bytes.len() >= 16 {
            bytes[..4].copy_from_slice(&[b'l', 1 + rng.below(4) as u8, 0, 1]);
            let _ = Message::decode(&bytes);
        }
    }
}

#[test]
fn fuzz_truncations_and_bit_flips() {
    let mut rng = Rng(42);
    let mut transient = job_removed();
    transient.body.push(Value::Array(
        "(sv)".into(),
        vec![Value::Struct(vec![
            s("ExecStart"),
            Value::Variant(Box::new(Value::Array(
                "(sasb)".into(),
                vec![Value::Struct(vec![
                    s("/bin/true"),
                    Value::Array("s".into(), vec![s("true")]),
                    Value::Bool(false),
                ])],
            ))),
        ])],
    ));
    for m in [hello(), job_removed(), transient] {
        let bytes = m.encode().unwrap();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() {
            assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for _ in 0..5_000 {
            let mut b = bytes.clone();
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
            let _ = Message::decode(&b);
        }
    }
}
