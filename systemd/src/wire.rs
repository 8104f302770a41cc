//! The D-Bus wire format (marshalling and unmarshalling), pure and bounded.
//!
//! Only what outpost needs: the types `y b i u t x s o g`, arrays, structs, dict entries and
//! variants; messages of the four kinds. Encoding is little-endian; decoding accepts both byte
//! orders. Decoding never panics and never allocates more than the input justifies: a frame
//! is refused above [`MAX_MESSAGE`] bytes before anything is read into memory, every length
//! field is checked against the bytes actually present, and nesting is limited to
//! [`MAX_DEPTH`] (the spec's 32 arrays + 32 structs).
use thiserror::Error;

/// Largest message outpost accepts or sends. systemd's replies to the calls we make are a few
/// hundred bytes; the spec's own limit is 128 MiB, far more than a CLI should buffer.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Deepest nesting of arrays, structs, dict entries and variants.
pub const MAX_DEPTH: u32 = 64;
/// Spec limit on one array's byte length.
const MAX_ARRAY: u32 = 1 << 26;

/// Header flag: do not start the destination service for this call.
pub const FLAG_NO_AUTO_START: u8 = 0x2;
/// Header flag: the caller is willing to wait for a polkit prompt (outpost never sets it).
pub const FLAG_ALLOW_INTERACTIVE_AUTHORIZATION: u8 = 0x4;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("d-bus message truncated at byte {0}")]
    Truncated(usize),
    #[error("d-bus message of {0} bytes exceeds the limit of {MAX_MESSAGE} bytes")]
    TooLarge(u64),
    #[error("malformed d-bus message: {0}")]
    Malformed(&'static str),
    #[error("unsupported d-bus type signature '{0}'")]
    Signature(String),
}

type Result<T> = std::result::Result<T, WireError>;

/// One D-Bus value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    Str(String),
    Path(String),
    Sig(String),
    /// Element signature (needed for empty arrays) and the elements.
    Array(String, Vec<Value>),
    Struct(Vec<Value>),
    /// A dict entry; only valid as an array element.
    Dict(Box<Value>, Box<Value>),
    Variant(Box<Value>),
}

impl Value {
    /// The value's type signature, e.g. `a(sv)`.
    pub fn signature(&self) -> String {
        let mut s = String::new();
        self.push_signature(&mut s);
        s
    }

    fn push_signature(&self, out: &mut String) {
        let code = match self {
            Value::Byte(_) => 'y',
            Value::Bool(_) => 'b',
            Value::I32(_) => 'i',
            Value::U32(_) => 'u',
            Value::I64(_) => 'x',
            Value::U64(_) => 't',
            Value::Str(_) => 's',
            Value::Path(_) => 'o',
            Value::Sig(_) => 'g',
            Value::Variant(_) => 'v',
            Value::Array(elem, _) => {
                out.push('a');
                out.push_str(elem);
                return;
            }
            Value::Struct(fields) => {
                out.push('(');
                fields.iter().for_each(|f| f.push_signature(out));
                out.push(')');
                return;
            }
            Value::Dict(k, v) => {
                out.push('{');
                k.push_signature(out);
                v.push_signature(out);
                out.push('}');
                return;
            }
        };
        out.push(code);
    }

    /// A string, object path or signature.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Sig(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::U32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_i32(&self) -> Option<i32> {
        match self {
            Value::I32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The value inside a variant (other values are returned as they are).
    pub fn into_inner(self) -> Value {
        match self {
            Value::Variant(v) => *v,
            other => other,
        }
    }
}

/// Alignment of the type starting with `code`.
fn alignment(code: u8) -> usize {
    match code {
        b'y' | b'g' | b'v' => 1,
        b'b' | b'i' | b'u' | b's' | b'o' | b'a' => 4,
        _ => 8, // t x ( {
    }
}

fn is_basic(code: u8) -> bool {
    matches!(
        code,
        b'y' | b'b' | b'i' | b'u' | b't' | b'x' | b's' | b'o' | b'g'
    )
}

fn bad_sig(sig: &[u8]) -> WireError {
    WireError::Signature(String::from_utf8_lossy(sig).into_owned())
}

/// Length of the single complete type at the start of `sig`.
pub fn single_type(sig: &[u8], depth: u32) -> Result<usize> {
    if depth > MAX_DEPTH {
        return Err(WireError::Malformed("nesting too deep"));
    }
    let code = *sig.first().ok_or_else(|| bad_sig(sig))?;
    match code {
        c if is_basic(c) || c == b'v' => Ok(1),
        b'a' if sig.get(1) == Some(&b'{') => {
            let key = *sig.get(2).ok_or_else(|| bad_sig(sig))?;
            if !is_basic(key) {
                return Err(bad_sig(sig));
            }
            let n = single_type(&sig[3..], depth + 2)?;
            match sig.get(3 + n) {
                Some(b'}') => Ok(4 + n),
                _ => Err(bad_sig(sig)),
            }
        }
        b'a' => Ok(1 + single_type(&sig[1..], depth + 1)?),
        b'(' => {
            let mut at = 1;
            while sig.get(at).is_some_and(|&c| c != b')') {
                at += single_type(&sig[at..], depth + 1)?;
            }
            match sig.get(at) {
                Some(b')') if at > 1 => Ok(at + 1),
                _ => Err(bad_sig(sig)),
            }
        }
        _ => Err(bad_sig(sig)),
    }
}

/// Split a signature into its complete types.
pub fn split_signature(sig: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = sig;
    while !rest.is_empty() {
        let n = single_type(rest.as_bytes(), 0)?;
        // Signatures are ASCII once validated, so `n` is a char boundary.
        let (one, tail) = rest.split_at(n);
        out.push(one);
        rest = tail;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// Marshals values (little-endian); alignment is relative to the start of the buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) -> Result<()> {
        if s.as_bytes().contains(&0) {
            return Err(WireError::Malformed("string contains a nul byte"));
        }
        let len = u32::try_from(s.len()).map_err(|_| WireError::TooLarge(s.len() as u64))?;
        self.u32(len);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn signature(&mut self, s: &str) -> Result<()> {
        let len = u8::try_from(s.len()).map_err(|_| WireError::Malformed("signature too long"))?;
        self.buf.push(len);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    /// Append one value.
    pub fn value(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::Byte(b) => self.buf.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::I32(x) => self.u32(*x as u32),
            Value::U32(x) => self.u32(*x),
            Value::I64(x) => self.u64(*x as u64),
            Value::U64(x) => self.u64(*x),
            Value::Str(s) | Value::Path(s) => self.string(s)?,
            Value::Sig(s) => self.signature(s)?,
            Value::Variant(inner) => {
                self.signature(&inner.signature())?;
                self.value(inner)?;
            }
            Value::Array(elem, items) => self.array(elem, items)?,
            Value::Struct(fields) => {
                self.pad(8);
                fields.iter().try_for_each(|f| self.value(f))?;
            }
            Value::Dict(k, v) => {
                self.pad(8);
                self.value(k)?;
                self.value(v)?;
            }
        }
        Ok(())
    }

    fn u64(&mut self, v: u64) {
        self.pad(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn array(&mut self, elem: &str, items: &[Value]) -> Result<()> {
        let whole = format!("a{elem}");
        if single_type(whole.as_bytes(), 0)? != whole.len() {
            return Err(WireError::Signature(whole));
        }
        self.u32(0);
        let len_at = self.buf.len() - 4;
        // `elem` is a validated, hence non-empty, type.
        self.pad(alignment(elem.as_bytes()[0]));
        let start = self.buf.len();
        for item in items {
            if item.signature() != elem {
                return Err(WireError::Malformed("array elements of different types"));
            }
            self.value(item)?;
        }
        let n = self.buf.len() - start;
        let n = u32::try_from(n).map_err(|_| WireError::TooLarge(n as u64))?;
        self.buf[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Unmarshals values; alignment is relative to the start of `buf`.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], big_endian: bool) -> Decoder<'a> {
        Decoder {
            buf,
            pos: 0,
            big_endian,
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    fn align(&mut self, align: usize) -> Result<()> {
        let to = self.pos.next_multiple_of(align);
        if to > self.buf.len() {
            return Err(WireError::Truncated(self.buf.len()));
        }
        self.pos = to;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated(self.buf.len()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        self.align(4)?;
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| WireError::Truncated(0))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64(&mut self) -> Result<u64> {
        self.align(8)?;
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| WireError::Truncated(0))?;
        Ok(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    fn text(&mut self, len: usize) -> Result<String> {
        let bytes = self.take(len)?;
        if self.take(1)? != [0] || bytes.contains(&0) {
            return Err(WireError::Malformed("string not nul-terminated"));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Malformed("string not utf-8"))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn signature(&mut self) -> Result<String> {
        let len = usize::from(self.take(1)?[0]);
        let sig = self.text(len)?;
        split_signature(&sig)?;
        Ok(sig)
    }

    /// Read one value of the single complete type `sig`.
    pub fn value(&mut self, sig: &str, depth: u32) -> Result<Value> {
        let code = *sig.as_bytes().first().ok_or_else(|| bad_sig(b""))?;
        Ok(match code {
            b'y' => Value::Byte(self.take(1)?[0]),
            b'b' => match self.u32()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(WireError::Malformed("boolean not 0 or 1")),
            },
            b'i' => Value::I32(self.u32()? as i32),
            b'u' => Value::U32(self.u32()?),
            b'x' => Value::I64(self.u64()? as i64),
            b't' => Value::U64(self.u64()?),
            b's' => Value::Str(self.string()?),
            b'o' => Value::Path(self.string()?),
            b'g' => Value::Sig(self.signature()?),
            b'v' => self.variant(depth)?,
            b'a' => {
                let n = single_type(sig.as_bytes(), depth)?;
                self.array(&sig[1..n], depth)?
            }
            b'(' | b'{' => self.container(sig, depth)?,
            _ => return Err(bad_sig(sig.as_bytes())),
        })
    }

    fn variant(&mut self, depth: u32) -> Result<Value> {
        if depth >= MAX_DEPTH {
            return Err(WireError::Malformed("nesting too deep"));
        }
        let sig = self.signature()?;
        if split_signature(&sig)?.len() != 1 {
            return Err(WireError::Malformed("variant signature is not one type"));
        }
        Ok(Value::Variant(Box::new(self.value(&sig, depth + 1)?)))
    }

    /// An array of `elem` (a validated single type or dict entry).
    fn array(&mut self, elem: &str, depth: u32) -> Result<Value> {
        let len = self.u32()?;
        if len > MAX_ARRAY {
            return Err(WireError::Malformed("array longer than 64 MiB"));
        }
        // `elem` is a validated, hence non-empty, type.
        self.align(alignment(elem.as_bytes()[0]))?;
        let end = self
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated(self.buf.len()))?;
        let mut items = Vec::new();
        while self.pos < end {
            items.push(self.value(elem, depth + 1)?);
        }
        if self.pos != end {
            return Err(WireError::Malformed(
                "array length does not match its elements",
            ));
        }
        Ok(Value::Array(elem.to_owned(), items))
    }

    /// A struct `(…)` or dict entry `{kv}`; `sig` includes the brackets.
    fn container(&mut self, sig: &str, depth: u32) -> Result<Value> {
        let inner = if sig.starts_with('(') {
            let n = single_type(sig.as_bytes(), depth)?;
            &sig[1..n - 1]
        } else {
            // A dict entry's signature was validated with its array.
            sig.get(1..sig.len().saturating_sub(1))
                .filter(|_| sig.ends_with('}'))
                .ok_or_else(|| bad_sig(sig.as_bytes()))?
        };
        let inner = split_signature(inner)?;
        self.align(8)?;
        let mut fields = Vec::with_capacity(inner.len());
        for t in inner {
            fields.push(self.value(t, depth + 1)?);
        }
        if sig.starts_with('(') {
            return Ok(Value::Struct(fields));
        }
        let mut it = fields.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(k), Some(v), None) => Ok(Value::Dict(Box::new(k), Box::new(v))),
            _ => Err(bad_sig(sig.as_bytes())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call = 1,
    Return = 2,
    Error = 3,
    Signal = 4,
}

/// A D-Bus message: the header fields outpost uses and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub flags: u8,
    pub serial: u32,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub reply_serial: Option<u32>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    pub body: Vec<Value>,
}

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SENDER: u8 = 7;
const FIELD_SIGNATURE: u8 = 8;

impl Message {
    fn new(kind: Kind) -> Message {
        Message {
            kind,
            flags: 0,
            serial: 0,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            body: Vec::new(),
        }
    }

    /// A method call (flags 0: auto-start allowed, no interactive authorisation).
    pub fn call(dest: &str, path: &str, iface: &str, member: &str, body: Vec<Value>) -> Message {
        Message {
            destination: Some(dest.into()),
            path: Some(path.into()),
            interface: Some(iface.into()),
            member: Some(member.into()),
            body,
            ..Message::new(Kind::Call)
        }
    }

    /// A broadcast signal.
    pub fn signal(path: &str, iface: &str, member: &str, body: Vec<Value>) -> Message {
        Message {
            path: Some(path.into()),
            interface: Some(iface.into()),
            member: Some(member.into()),
            body,
            ..Message::new(Kind::Signal)
        }
    }

    /// The body's signature.
    pub fn signature(&self) -> String {
        self.body.iter().map(Value::signature).collect()
    }

    /// Marshal (little-endian) with `self.serial`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut body = Encoder::default();
        self.body.iter().try_for_each(|v| body.value(v))?;
        let mut out = Encoder::default();
        out.buf
            .extend_from_slice(&[b'l', self.kind as u8, self.flags, 1]);
        let body_len = u32::try_from(body.buf.len()).map_err(|_| WireError::TooLarge(u64::MAX))?;
        out.u32(body_len);
        out.u32(self.serial);
        out.value(&Value::Array("(yv)".into(), self.header_fields()))?;
        out.pad(8);
        out.buf.extend_from_slice(&body.buf);
        if out.buf.len() > MAX_MESSAGE {
            return Err(WireError::TooLarge(out.buf.len() as u64));
        }
        Ok(out.buf)
    }

    fn header_fields(&self) -> Vec<Value> {
        let field = |code: u8, v: Value| Value::Struct(vec![Value::Byte(code), v.into_variant()]);
        let s = |code, v: &Option<String>, wrap: fn(String) -> Value| {
            v.clone().map(|v| field(code, wrap(v)))
        };
        let sig = self.signature();
        [
            s(FIELD_PATH, &self.path, Value::Path),
            s(FIELD_INTERFACE, &self.interface, Value::Str),
            s(FIELD_MEMBER, &self.member, Value::Str),
            s(FIELD_ERROR_NAME, &self.error_name, Value::Str),
            self.reply_serial
                .map(|r| field(FIELD_REPLY_SERIAL, Value::U32(r))),
            s(FIELD_DESTINATION, &self.destination, Value::Str),
            s(FIELD_SENDER, &self.sender, Value::Str),
            (!sig.is_empty()).then(|| field(FIELD_SIGNATURE, Value::Sig(sig))),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Unmarshal one complete message (exactly [`frame_len`] bytes).
    pub fn decode(buf: &[u8]) -> Result<Message> {
        let total = frame_len(buf)?.ok_or(WireError::Truncated(buf.len()))?;
        if buf.len() != total {
            return Err(WireError::Malformed("frame length does not match"));
        }
        let big = buf[0] == b'B';
        let mut d = Decoder::new(buf, big);
        d.take(4)?;
        let body_len = d.u32()? as usize;
        let serial = d.u32()?;
        let kind = match buf[1] {
            1 => Kind::Call,
            2 => Kind::Return,
            3 => Kind::Error,
            4 => Kind::Signal,
            _ => return Err(WireError::Malformed("unknown message type")),
        };
        if serial == 0 {
            return Err(WireError::Malformed("serial is 0"));
        }
        let mut msg = Message {
            flags: buf[2],
            serial,
            ..Message::new(kind)
        };
        let fields = d.value("a(yv)", 0)?;
        let sig = msg.apply_fields(fields)?;
        d.align(8)?;
        let body = d.take(body_len)?;
        msg.body = decode_body(body, &sig, big)?;
        msg.check_required()?;
        Ok(msg)
    }

    /// Store the header fields; returns the body signature.
    fn apply_fields(&mut self, fields: Value) -> Result<String> {
        let Value::Array(_, fields) = fields else {
            return Err(WireError::Malformed("header fields"));
        };
        let mut sig = String::new();
        for f in fields {
            let Value::Struct(kv) = f else {
                return Err(WireError::Malformed("header field"));
            };
            let mut kv = kv.into_iter();
            let (Some(Value::Byte(code)), Some(Value::Variant(v))) = (kv.next(), kv.next()) else {
                return Err(WireError::Malformed("header field"));
            };
            let bad = WireError::Malformed("header field of the wrong type");
            match (code, *v) {
                (FIELD_PATH, Value::Path(p)) => self.path = Some(p),
                (FIELD_INTERFACE, Value::Str(s)) => self.interface = Some(s),
                (FIELD_MEMBER, Value::Str(s)) => self.member = Some(s),
                (FIELD_ERROR_NAME, Value::Str(s)) => self.error_name = Some(s),
                (FIELD_REPLY_SERIAL, Value::U32(r)) => self.reply_serial = Some(r),
                (FIELD_DESTINATION, Value::Str(s)) => self.destination = Some(s),
                (FIELD_SENDER, Value::Str(s)) => self.sender = Some(s),
                (FIELD_SIGNATURE, Value::Sig(s)) => sig = s,
                (1..=8, _) => return Err(bad),
                _ => {} // unknown fields (e.g. UNIX_FDS) are ignored
            }
        }
        Ok(sig)
    }

    fn check_required(&self) -> Result<()> {
        let ok = match self.kind {
            Kind::Call => self.path.is_some() && self.member.is_some(),
            Kind::Signal => {
                self.path.is_some() && self.interface.is_some() && self.member.is_some()
            }
            Kind::Error => self.error_name.is_some() && self.reply_serial.is_some(),
            Kind::Return => self.reply_serial.is_some(),
        };
        ok.then_some(())
            .ok_or(WireError::Malformed("required header field missing"))
    }
}

impl Value {
    fn into_variant(self) -> Value {
        Value::Variant(Box::new(self))
    }
}

fn decode_body(body: &[u8], sig: &str, big: bool) -> Result<Vec<Value>> {
    let mut d = Decoder::new(body, big);
    let mut out = Vec::new();
    for t in split_signature(sig)? {
        out.push(d.value(t, 0)?);
    }
    if d.position() != body.len() {
        return Err(WireError::Malformed("body longer than its signature"));
    }
    Ok(out)
}

/// Total length of the message starting at `buf`: `None` until its 16-byte fixed header is
/// there; an error if the header is invalid or the message is larger than [`MAX_MESSAGE`].
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(head) = buf.get(..16) else {
        return Ok(None);
    };
    let big = match head[0] {
        b'l' => false,
        b'B' => true,
        _ => return Err(WireError::Malformed("bad byte-order mark")),
    };
    if head[3] != 1 {
        return Err(WireError::Malformed("unsupported protocol version"));
    }
    let mut d = Decoder::new(head, big);
    d.take(4)?;
    let body = u64::from(d.u32()?);
    d.u32()?;
    let fields = u64::from(d.u32()?);
    let total = (16 + fields).next_multiple_of(8) + body;
    if total > MAX_MESSAGE as u64 {
        return Err(WireError::TooLarge(total));
    }
    Ok(Some(total as usize))
}

#[cfg(test)]
mod tests;
