//! A parsed JSON document that is read without being built into `serde_json` values.
//!
//! [`Doc`] is simd-json's tape made owned: one node per value, in document order, with every
//! string (unescaped) copied once into a single buffer. Reading a request's model, checking its
//! messages and scanning its texts need nothing more, so the common request costs two allocations
//! instead of one per key, string, object and array. [`Json`] reads either a `Doc` or `serde_json`
//! values with one API, so a body the gateway has changed (and holds as a map) reads the same way.

use serde_json::{Map, Number, Value};
use simd_json::{Node, StaticNode};

/// An owned JSON document: nodes in document order, strings in one buffer.
#[derive(Debug, Clone)]
pub struct Doc {
    strings: String,
    nodes: Vec<DocNode>,
    repeated_key: bool,
}

#[derive(Debug, Clone, Copy)]
enum DocNode {
    /// A string: its range in [`Doc::strings`]. Object keys are strings too, each before its value.
    Str {
        at: usize,
        len: usize,
    },
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    /// `len` items; `count` nodes inside, all levels.
    Array {
        len: usize,
        count: usize,
    },
    /// `len` key/value pairs; `count` nodes inside (keys included), all levels.
    Object {
        len: usize,
        count: usize,
    },
}

/// Objects up to this many keys are checked for a repeated key pairwise, larger ones with a set.
const PAIRWISE_KEYS: usize = 16;

impl Doc {
    /// The document of a tape holding exactly one value (a whole tape, or one value's nodes cut
    /// from one). `None` if the nodes do not spell exactly one value.
    pub fn from_tape(tape: &[Node<'_>], text_bytes: usize) -> Option<Self> {
        if tape.first().map(tape_extent) != Some(tape.len()) {
            return None;
        }
        let mut doc = Doc {
            strings: String::with_capacity(text_bytes),
            nodes: Vec::with_capacity(tape.len()),
            repeated_key: false,
        };
        // The tape is in document order already: one pass copies it, and each container's
        // members are checked where it starts (stepping over nested values by their counts).
        for (at, node) in tape.iter().enumerate() {
            let node = match *node {
                Node::String(s) => doc.text(s),
                Node::Static(StaticNode::Null) => DocNode::Null,
                Node::Static(StaticNode::Bool(b)) => DocNode::Bool(b),
                Node::Static(StaticNode::I64(n)) => DocNode::I64(n),
                Node::Static(StaticNode::U64(n)) => DocNode::U64(n),
                Node::Static(StaticNode::F64(f)) if f.is_finite() => DocNode::F64(f),
                Node::Static(StaticNode::F64(_)) => return None,
                Node::Array { len, count } => {
                    let mut next = at + 1;
                    for _ in 0..len {
                        next += tape_extent(tape.get(next)?);
                    }
                    if next != at + 1 + count {
                        return None;
                    }
                    DocNode::Array { len, count }
                }
                Node::Object { len, count } => {
                    if object_repeats_a_key(tape, at, len, count)? {
                        doc.repeated_key = true;
                    }
                    DocNode::Object { len, count }
                }
            };
            doc.nodes.push(node);
        }
        Some(doc)
    }

    /// Whether some object of the document has a key twice (serde_json keeps the last value; a
    /// provider may keep the first).
    pub fn repeated_key(&self) -> bool {
        self.repeated_key
    }

    /// The root value.
    pub fn root(&self) -> Json<'_> {
        Json(Repr::Doc(self, 0))
    }

    fn text(&mut self, s: &str) -> DocNode {
        let at = self.strings.len();
        self.strings.push_str(s);
        DocNode::Str { at, len: s.len() }
    }

    /// Nodes taken by the value at `at`, itself included.
    fn extent(&self, at: usize) -> usize {
        match self.nodes.get(at) {
            Some(DocNode::Array { count, .. } | DocNode::Object { count, .. }) => count + 1,
            _ => 1,
        }
    }

    fn str_at(&self, at: usize) -> Option<&str> {
        match self.nodes.get(at)? {
            DocNode::Str { at, len } => self.strings.get(*at..at + len),
            _ => None,
        }
    }
}

/// Nodes taken by a tape's value, itself included.
fn tape_extent(node: &Node<'_>) -> usize {
    match node {
        Node::Array { count, .. } | Node::Object { count, .. } => count + 1,
        _ => 1,
    }
}

/// Whether the object at `at` of `tape` (`len` keys, `count` nodes inside) has a key twice
/// (serde_json keeps the last value; a provider may keep the first). `None` if its members are not
/// key/value pairs filling exactly `count` nodes.
fn object_repeats_a_key(tape: &[Node<'_>], at: usize, len: usize, count: usize) -> Option<bool> {
    let mut keys = [""; PAIRWISE_KEYS];
    let mut many = (len > PAIRWISE_KEYS).then(|| std::collections::HashSet::with_capacity(len));
    let mut repeated = false;
    let mut next = at + 1;
    for i in 0..len {
        let Node::String(key) = *tape.get(next)? else { return None };
        match &mut many {
            Some(seen) => repeated |= !seen.insert(key),
            None => {
                let (earlier, slot) = keys.split_at_mut(i);
                repeated |= earlier.contains(&key);
                *slot.first_mut()? = key;
            }
        }
        next += 1;
        next += tape_extent(tape.get(next)?);
    }
    (next == at + 1 + count).then_some(repeated)
}

/// A JSON value to read: a node of a [`Doc`], or `serde_json` values.
#[derive(Debug, Clone, Copy)]
pub struct Json<'a>(Repr<'a>);

#[derive(Debug, Clone, Copy)]
enum Repr<'a> {
    Doc(&'a Doc, usize),
    Value(&'a Value),
    /// A whole object held as a map.
    Object(&'a Map<String, Value>),
}

impl<'a> From<&'a Value> for Json<'a> {
    fn from(v: &'a Value) -> Self {
        Json(Repr::Value(v))
    }
}

impl<'a> From<&'a Map<String, Value>> for Json<'a> {
    fn from(m: &'a Map<String, Value>) -> Self {
        Json(Repr::Object(m))
    }
}

impl<'a> Json<'a> {
    /// The value of `key` in an object (the last one when repeated, as serde_json reads it).
    pub fn get(self, key: &str) -> Option<Json<'a>> {
        match self.0 {
            Repr::Doc(..) => self.entries().filter(|(k, _)| *k == key).last().map(|(_, v)| v),
            Repr::Value(v) => v.get(key).map(Json::from),
            Repr::Object(m) => m.get(key).map(Json::from),
        }
    }

    /// The values of several keys of an object, found in one pass over it (the last value of a
    /// repeated key), in the order of `keys`.
    pub fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Json<'a>>; N] {
        let mut found = [None; N];
        for (k, v) in self.entries() {
            if let Some(i) = keys.iter().position(|key| *key == k) {
                found[i] = Some(v);
            }
        }
        found
    }

    pub fn as_str(self) -> Option<&'a str> {
        match self.0 {
            Repr::Doc(doc, at) => doc.str_at(at),
            Repr::Value(v) => v.as_str(),
            Repr::Object(_) => None,
        }
    }

    pub fn as_bool(self) -> Option<bool> {
        match self.0 {
            Repr::Doc(doc, at) => match doc.nodes.get(at)? {
                DocNode::Bool(b) => Some(*b),
                _ => None,
            },
            Repr::Value(v) => v.as_bool(),
            Repr::Object(_) => None,
        }
    }

    /// A non-negative integer (as `serde_json::Value::as_u64`).
    pub fn as_u64(self) -> Option<u64> {
        match self.0 {
            Repr::Doc(doc, at) => match doc.nodes.get(at)? {
                DocNode::U64(n) => Some(*n),
                DocNode::I64(n) => u64::try_from(*n).ok(),
                _ => None,
            },
            Repr::Value(v) => v.as_u64(),
            Repr::Object(_) => None,
        }
    }

    pub fn is_null(self) -> bool {
        self.kind() == Kind::Null
    }

    pub fn kind(self) -> Kind {
        match self.0 {
            Repr::Doc(doc, at) => match doc.nodes.get(at) {
                Some(DocNode::Str { .. }) => Kind::String,
                Some(DocNode::Null) | None => Kind::Null,
                Some(DocNode::Bool(_)) => Kind::Bool,
                Some(DocNode::I64(_) | DocNode::U64(_)) => Kind::Integer,
                Some(DocNode::F64(_)) => Kind::Decimal,
                Some(DocNode::Array { .. }) => Kind::Array,
                Some(DocNode::Object { .. }) => Kind::Object,
            },
            Repr::Value(v) => match v {
                Value::Null => Kind::Null,
                Value::Bool(_) => Kind::Bool,
                Value::Number(n) if n.is_f64() => Kind::Decimal,
                Value::Number(_) => Kind::Integer,
                Value::String(_) => Kind::String,
                Value::Array(_) => Kind::Array,
                Value::Object(_) => Kind::Object,
            },
            Repr::Object(_) => Kind::Object,
        }
    }

    /// An array's items (nothing for any other value).
    pub fn items(self) -> Items<'a> {
        Items(match self.0 {
            Repr::Doc(doc, at) => match doc.nodes.get(at) {
                Some(DocNode::Array { len, .. }) => ItemsRepr::Doc { doc, at: at + 1, left: *len },
                _ => ItemsRepr::Empty,
            },
            Repr::Value(Value::Array(items)) => ItemsRepr::Values(items.iter()),
            Repr::Value(_) | Repr::Object(_) => ItemsRepr::Empty,
        })
    }

    /// An object's keys and values, in document order (nothing for any other value). A parsed
    /// document yields a repeated key each time it appears.
    pub fn entries(self) -> Entries<'a> {
        Entries(match self.0 {
            Repr::Doc(doc, at) => match doc.nodes.get(at) {
                Some(DocNode::Object { len, .. }) => EntriesRepr::Doc { doc, at: at + 1, left: *len },
                _ => EntriesRepr::Empty,
            },
            Repr::Value(Value::Object(map)) | Repr::Object(map) => EntriesRepr::Map(map.iter()),
            Repr::Value(_) => EntriesRepr::Empty,
        })
    }

    /// The value built as `serde_json` values (the last value of a repeated key).
    pub fn to_value(self) -> Value {
        match self.0 {
            Repr::Value(v) => v.clone(),
            Repr::Object(m) => Value::Object(m.clone()),
            Repr::Doc(doc, at) => match doc.nodes.get(at) {
                Some(DocNode::Str { .. }) => Value::String(doc.str_at(at).unwrap_or_default().to_owned()),
                Some(DocNode::Null) | None => Value::Null,
                Some(DocNode::Bool(b)) => Value::Bool(*b),
                Some(DocNode::I64(n)) => Value::Number((*n).into()),
                Some(DocNode::U64(n)) => Value::Number((*n).into()),
                Some(DocNode::F64(f)) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
                Some(DocNode::Array { len, .. }) => {
                    let mut items = Vec::with_capacity(*len);
                    items.extend(self.items().map(Json::to_value));
                    Value::Array(items)
                }
                Some(DocNode::Object { .. }) => Value::Object(self.to_map()),
            },
        }
    }

    /// An object built as a `serde_json` map (empty for any other value).
    pub fn to_map(self) -> Map<String, Value> {
        match self.0 {
            Repr::Object(m) | Repr::Value(Value::Object(m)) => m.clone(),
            Repr::Value(_) => Map::new(),
            Repr::Doc(doc, at) => {
                let len = match doc.nodes.get(at) {
                    Some(DocNode::Object { len, .. }) => *len,
                    _ => 0,
                };
                let mut map = Map::with_capacity(len);
                for (k, v) in self.entries() {
                    map.insert(k.to_owned(), v.to_value());
                }
                map
            }
        }
    }
}

/// What kind of JSON value a [`Json`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Integer,
    Decimal,
    String,
    Array,
    Object,
}

impl Kind {
    /// As OpenAI's errors name it: "a string", "an integer", ...
    pub fn described(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Integer => "an integer",
            Kind::Decimal => "a decimal",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

impl From<Json<'_>> for Kind {
    fn from(v: Json<'_>) -> Self {
        v.kind()
    }
}

/// [`Json::items`].
#[derive(Debug)]
pub struct Items<'a>(ItemsRepr<'a>);

#[derive(Debug)]
enum ItemsRepr<'a> {
    Doc { doc: &'a Doc, at: usize, left: usize },
    Values(std::slice::Iter<'a, Value>),
    Empty,
}

impl<'a> Iterator for Items<'a> {
    type Item = Json<'a>;

    fn next(&mut self) -> Option<Json<'a>> {
        match &mut self.0 {
            ItemsRepr::Doc { doc, at, left } => {
                *left = left.checked_sub(1)?;
                let item = *at;
                *at += doc.extent(item);
                Some(Json(Repr::Doc(doc, item)))
            }
            ItemsRepr::Values(values) => values.next().map(Json::from),
            ItemsRepr::Empty => None,
        }
    }
}

/// [`Json::entries`].
#[derive(Debug)]
pub struct Entries<'a>(EntriesRepr<'a>);

#[derive(Debug)]
enum EntriesRepr<'a> {
    Doc { doc: &'a Doc, at: usize, left: usize },
    Map(serde_json::map::Iter<'a>),
    Empty,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, Json<'a>);

    fn next(&mut self) -> Option<(&'a str, Json<'a>)> {
        match &mut self.0 {
            EntriesRepr::Doc { doc, at, left } => {
                *left = left.checked_sub(1)?;
                let key = doc.str_at(*at)?;
                let value = *at + 1;
                *at = value + doc.extent(value);
                Some((key, Json(Repr::Doc(doc, value))))
            }
            EntriesRepr::Map(entries) => entries.next().map(|(k, v)| (k.as_str(), Json::from(v))),
            EntriesRepr::Empty => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Option<Doc> {
        let mut bytes = text.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).ok()?;
        Doc::from_tape(&tape.0, text.len())
    }

    #[test]
    fn a_document_reads_as_serde_json_reads_the_same_text() {
        let text = r#"{"s":"caf\u00e9 \"q\"","n":[-3,18446744073709551615,0.25,1e2],"b":[true,false,null],
            "o":{"k":{"deep":[[],{}]},"e":""},"last":"x","last":"y"}"#;
        let d = doc(text).unwrap();
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(d.root().to_value(), expected);
        assert!(d.repeated_key());
        let root = d.root();
        assert_eq!(root.get("s").and_then(Json::as_str), Some("café \"q\""));
        assert_eq!(root.get("last").and_then(Json::as_str), Some("y"), "the last value counts");
        let n: Vec<Kind> = root.get("n").unwrap().items().map(Json::kind).collect();
        assert_eq!(n, [Kind::Integer, Kind::Integer, Kind::Decimal, Kind::Decimal]);
        assert_eq!(root.get("n").unwrap().items().nth(1).and_then(Json::as_u64), Some(u64::MAX));
        assert_eq!(root.get("n").unwrap().items().next().and_then(Json::as_u64), None, "negative");
        assert_eq!(root.get("b").unwrap().items().next().and_then(Json::as_bool), Some(true));
        assert!(root.get("b").unwrap().items().nth(2).unwrap().is_null());
        assert_eq!(root.get("o").unwrap().get("e").and_then(Json::as_str), Some(""));
        let keys: Vec<&str> = root.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["s", "n", "b", "o", "last", "last"]);
        assert!(root.get("missing").is_none());
        let [last, missing, s] = root.fields(["last", "missing", "s"]);
        assert_eq!((last.and_then(Json::as_str), missing.is_none()), (Some("y"), true));
        assert_eq!(s.and_then(Json::as_str), Some("café \"q\""));
        assert_eq!(root.get("s").unwrap().items().count(), 0, "a string has no items");
        // The same reads through serde_json values.
        let v = Json::from(&expected);
        assert_eq!(v.get("last").and_then(Json::as_str), Some("y"));
        assert_eq!(v.get("n").unwrap().items().map(Json::kind).collect::<Vec<_>>(), n);
    }

    #[test]
    fn nodes_that_are_not_exactly_one_value_make_no_document() {
        let mut bytes = br#"{"a":[1,{"b":2}],"c":"d"}"#.to_vec();
        let tape = simd_json::to_tape(&mut bytes).unwrap();
        let nodes = &tape.0[..];
        assert!(Doc::from_tape(nodes, 8).is_some());
        for cut in [&nodes[..0], &nodes[..nodes.len() - 1], &nodes[1..], &nodes[2..4], &nodes[3..6]] {
            assert!(Doc::from_tape(cut, 8).is_none(), "{cut:?}");
        }
        // One value cut from a tape is a document of its own.
        let inner = Doc::from_tape(&nodes[2..7], 8).unwrap();
        assert_eq!(inner.root().to_value(), serde_json::json!([1, {"b": 2}]));
        // Counts that lie about the members.
        let mut lying = nodes.to_vec();
        lying[0] = Node::Object { len: 1, count: 8 };
        assert!(Doc::from_tape(&lying, 8).is_none());
        let mut lying = nodes[2..7].to_vec();
        lying[0] = Node::Array { len: 1, count: 4 };
        assert!(Doc::from_tape(&lying, 8).is_none());
    }

    #[test]
    fn a_repeated_key_is_found_in_small_and_large_objects_at_any_depth() {
        assert!(!doc(r#"{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}]}"#).unwrap().repeated_key());
        assert!(doc(r#"{"a":[{"x":1,"x":2}]}"#).unwrap().repeated_key());
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(!doc(&format!("{{{}}}", many.join(","))).unwrap().repeated_key());
        assert!(doc(&format!("{{{},\"k7\":0}}", many.join(","))).unwrap().repeated_key());
        // At the edge of the pairwise check: 16 keys (the last repeating the first), then 17.
        let edge = |n: usize| format!("{{{},\"k0\":0}}", many[..n - 1].join(","));
        assert!(doc(&edge(PAIRWISE_KEYS)).unwrap().repeated_key());
        assert!(doc(&edge(PAIRWISE_KEYS + 1)).unwrap().repeated_key());
        assert!(!doc(&format!("{{{}}}", many[..PAIRWISE_KEYS].join(","))).unwrap().repeated_key());
    }
}
