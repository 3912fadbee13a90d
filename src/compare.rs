//! Reply normalisation and comparison, in one place: the mirrored-write
//! comparison (`session`), shadow reads (`shadow`), effect checks, and
//! `cutover verify` all decide "the same" here.
//!
//! Two replies are the same when they say the same across RESP2 and RESP3
//! shapes: maps as flat arrays, booleans as 0/1 (doubles and big numbers
//! are compared as their text). Reads may be compared as unordered
//! ([`Order`]); replies to writes compare errors by their code only
//! (`WRONGTYPE`, `ERR`), since the text may differ between versions.

use bytes::Bytes;

use crate::protocol::{value, Value};

/// How a read's elements are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    AsIs,
    /// Field/value pairs (`HGETALL`) compared as a set of pairs.
    Pairs,
    /// Elements compared as a set.
    Unordered,
}

/// How errors are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Errors {
    /// Their whole text.
    Whole,
    /// Their code (the first word).
    Code,
}

/// Whether a reply says "nothing there": nil, 0, an empty array or map, an
/// array of nils (`HMGET`), `none` (`TYPE`).
pub fn empty(v: &Value) -> bool {
    match v {
        Value::Nil => true,
        Value::Int(0) => true,
        Value::Array(a) => a.is_empty() || a.iter().all(|e| matches!(e, Value::Nil)),
        Value::Map(m) => m.is_empty(),
        Value::Str(s) => s.as_ref() == b"none",
        _ => false,
    }
}

/// Flattens RESP3 shapes (maps, booleans) so RESP2 and RESP3 replies of
/// equal data are equal, then orders what `order` says is unordered.
pub fn normal_read(v: Value, order: Order) -> Value {
    normal(v, order, Errors::Whole)
}

fn normal(v: Value, order: Order, errors: Errors) -> Value {
    let v = match v {
        Value::Map(pairs) => Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Bool(b) => Value::Int(i64::from(b)),
        Value::Error(e) if errors == Errors::Code => {
            let code = e.split(|&c| c == b' ').next().unwrap_or_default();
            Value::Error(Bytes::copy_from_slice(code))
        }
        other => other,
    };
    let Value::Array(items) = v else { return v };
    let mut items: Vec<Value> = items
        .into_iter()
        .map(|i| normal(i, Order::AsIs, errors))
        .collect();
    let key = |v: &Value| format!("{v:?}");
    match order {
        Order::AsIs => {}
        Order::Unordered => items.sort_by_key(key),
        Order::Pairs => {
            let mut pairs: Vec<Vec<Value>> = items.chunks(2).map(<[Value]>::to_vec).collect();
            pairs.sort_by_key(|p| p.iter().map(key).collect::<Vec<_>>());
            items = pairs.into_iter().flatten().collect();
        }
    }
    Value::Array(items)
}

/// Whether two replies to the same write say the same (errors agreeing on
/// their code).
pub fn replies_agree(a: &Bytes, b: &Bytes, depth: usize) -> bool {
    if a == b {
        return true;
    }
    match (value::decode(a, depth), value::decode(b, depth)) {
        (Some(x), Some(y)) => {
            normal(x, Order::AsIs, Errors::Code) == normal(y, Order::AsIs, Errors::Code)
        }
        _ => false,
    }
}

/// Whether two decoded replies to the same write say the same (errors
/// agreeing on their code).
pub fn values_agree(a: &Value, b: Value) -> bool {
    normal(a.clone(), Order::AsIs, Errors::Code) == normal(b, Order::AsIs, Errors::Code)
}

/// Whether the mirror's reply to a write mirrored as its effect is the one
/// it gives when it held what the authoritative side did.
pub fn effect_agrees(expected: &Value, reply: &Bytes, depth: usize) -> bool {
    value::decode(reply, depth).is_some_and(|v| {
        normal(v, Order::AsIs, Errors::Code) == normal(expected.clone(), Order::AsIs, Errors::Code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_compare_across_protocols() {
        let agree = |a: &str, b: &str| {
            replies_agree(
                &Bytes::copy_from_slice(a.as_bytes()),
                &Bytes::copy_from_slice(b.as_bytes()),
                8,
            )
        };
        assert!(agree(":1\r\n", ":1\r\n"));
        assert!(!agree(":2\r\n", ":1\r\n"));
        assert!(agree("$-1\r\n", "_\r\n"));
        assert!(agree(
            "*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            "%1\r\n$1\r\na\r\n$1\r\nb\r\n"
        ));
        assert!(agree("#t\r\n", ":1\r\n"));
        assert!(agree(
            "-WRONGTYPE Operation x\r\n",
            "-WRONGTYPE other text\r\n"
        ));
        assert!(!agree("-ERR x\r\n", "+OK\r\n"));
    }

    #[test]
    fn reads_compare_errors_whole_and_orders_as_asked() {
        let v = |s: &str| value::decode(&Bytes::copy_from_slice(s.as_bytes()), 8).unwrap();
        let read = |a: &str, b: &str, o| normal_read(v(a), o) == normal_read(v(b), o);
        assert!(!read("-ERR a\r\n", "-ERR b\r\n", Order::AsIs));
        assert!(read(
            "*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            "*2\r\n$1\r\nb\r\n$1\r\na\r\n",
            Order::Unordered
        ));
        assert!(!read(
            "*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            "*2\r\n$1\r\nb\r\n$1\r\na\r\n",
            Order::AsIs
        ));
        assert!(read(
            "*4\r\n$1\r\nf\r\n$1\r\n1\r\n$1\r\ng\r\n$1\r\n2\r\n",
            "%2\r\n$1\r\ng\r\n$1\r\n2\r\n$1\r\nf\r\n$1\r\n1\r\n",
            Order::Pairs
        ));
    }
}
