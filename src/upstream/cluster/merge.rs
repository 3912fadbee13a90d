//! One reply from the replies of a command's parts, as one standalone
//! Redis would have answered the whole command. Replies stay framed bytes:
//! arrays are cut into their elements' frames and joined again, so a
//! RESP3 client gets RESP3 and a RESP2 client RESP2.

use bytes::{Bytes, BytesMut};

use crate::protocol::{value, ReplyScanner, Value};

/// How the parts' replies become the client's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Merge {
    /// One part: its reply.
    One,
    /// `MGET` split by slot: for each key of the command, its part and its
    /// place in that part's reply.
    MGet(Vec<(usize, usize)>),
    /// `MSET`, `FLUSHALL`: the first error, else the first reply.
    AllOk,
    /// `DEL`, `EXISTS`, `DBSIZE`, ...: the integers added up (the first
    /// error instead, if any).
    Sum,
    /// `KEYS`: the arrays joined.
    Concat,
    /// `RANDOMKEY`: the first reply that is not nil.
    FirstNonNil,
    /// Broadcast commands (`SCRIPT LOAD`, state): the first error, else
    /// the first reply.
    FirstError,
    /// `INFO`: the first node's, its `# Keyspace` section summed over all.
    Info,
    /// Subscription confirmations from several nodes: all of them.
    Frames,
}

/// The element frames of an array reply (`*` or RESP3 `~`/`>`).
pub(super) fn elements(frame: &Bytes) -> Option<Vec<Bytes>> {
    if !matches!(frame.first(), Some(b'*' | b'~' | b'>')) {
        return None;
    }
    let eol = memchr::memchr(b'\n', frame)?;
    let n: usize = std::str::from_utf8(frame.get(1..eol.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    let mut rest = BytesMut::from(&frame[eol + 1..]);
    let mut scanner = ReplyScanner::new(crate::protocol::reply::DEFAULT_MAX_DEPTH);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(scanner.next(&mut rest).ok()??.bytes);
    }
    Some(out)
}

fn array(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + items.iter().map(Bytes::len).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
    for i in items {
        out.extend_from_slice(i);
    }
    out.freeze()
}

fn first_error(parts: &[Bytes]) -> Option<&Bytes> {
    parts
        .iter()
        .find(|p| matches!(p.first(), Some(b'-' | b'!')))
}

fn is_nil(frame: &[u8]) -> bool {
    matches!(frame, b"$-1\r\n" | b"*-1\r\n" | b"_\r\n")
}

/// The merged reply; `parts` in the order the plan made them.
pub(super) fn merge(how: &Merge, parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 && !matches!(how, Merge::MGet(_)) {
        return parts.into_iter().next().unwrap_or_default();
    }
    if let Some(e) = first_error(&parts) {
        if *how != Merge::Frames {
            return e.clone();
        }
    }
    match how {
        Merge::One | Merge::AllOk | Merge::FirstError => parts[0].clone(),
        Merge::MGet(place) => {
            let split: Option<Vec<Vec<Bytes>>> = parts.iter().map(elements).collect();
            let Some(split) = split else {
                return parts[0].clone();
            };
            let items: Option<Vec<Bytes>> = place
                .iter()
                .map(|&(p, i)| split.get(p)?.get(i).cloned())
                .collect();
            items.map_or_else(|| parts[0].clone(), |i| array(&i))
        }
        Merge::Sum => {
            let mut total: i64 = 0;
            for p in &parts {
                let n = p
                    .strip_prefix(b":")
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.trim_end().parse::<i64>().ok());
                match n {
                    Some(n) => total = total.saturating_add(n),
                    None => return p.clone(),
                }
            }
            Bytes::from(format!(":{total}\r\n"))
        }
        Merge::Concat => {
            let mut items = Vec::new();
            for p in &parts {
                match elements(p) {
                    Some(e) => items.extend(e),
                    None => return p.clone(),
                }
            }
            array(&items)
        }
        Merge::FirstNonNil => parts
            .iter()
            .find(|p| !is_nil(p))
            .unwrap_or(&parts[0])
            .clone(),
        Merge::Info => info(&parts),
        Merge::Frames => {
            let mut out = BytesMut::new();
            for p in &parts {
                out.extend_from_slice(p);
            }
            out.freeze()
        }
    }
}

/// `INFO` of the whole cluster: the first node's reply, its keyspace
/// lines (`db0:keys=..,expires=..,avg_ttl=..`) summed over every node.
fn info(parts: &[Bytes]) -> Bytes {
    let texts: Vec<String> = parts
        .iter()
        .filter_map(|p| match value::decode(p, 4)? {
            Value::Str(s) => Some(String::from_utf8_lossy(&s).into_owned()),
            _ => None,
        })
        .collect();
    let Some(first) = texts.first().filter(|_| texts.len() == parts.len()) else {
        return parts[0].clone();
    };
    if !first.contains("# Keyspace") {
        return parts[0].clone();
    }
    // db -> (keys, expires, avg_ttl max)
    let mut dbs: std::collections::BTreeMap<String, [u64; 3]> = Default::default();
    for t in &texts {
        for line in t.lines().filter(|l| l.starts_with("db")) {
            let Some((db, fields)) = line.split_once(':') else {
                continue;
            };
            let sums = dbs.entry(db.to_string()).or_default();
            for f in fields.split(',') {
                let (k, v) = f.split_once('=').unwrap_or((f, "0"));
                let v: u64 = v.trim().parse().unwrap_or(0);
                match k {
                    "keys" => sums[0] += v,
                    "expires" => sums[1] += v,
                    "avg_ttl" => sums[2] = sums[2].max(v),
                    _ => {}
                }
            }
        }
    }
    let mut text = String::with_capacity(first.len());
    let mut in_keyspace = false;
    for line in first.split_inclusive('\n') {
        if line.starts_with('#') {
            in_keyspace = line.starts_with("# Keyspace");
            text.push_str(line);
            if in_keyspace {
                for (db, [k, e, t]) in &dbs {
                    text.push_str(&format!("{db}:keys={k},expires={e},avg_ttl={t}\r\n"));
                }
            }
            continue;
        }
        if !(in_keyspace && line.starts_with("db")) {
            text.push_str(line);
        }
    }
    let verbatim = parts[0].first() == Some(&b'=');
    let body = if verbatim {
        format!("txt:{text}")
    } else {
        text
    };
    let kind = if verbatim { '=' } else { '$' };
    Bytes::from(format!("{kind}{}\r\n{body}\r\n", body.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn mget_puts_each_value_back_in_its_place() {
        let parts = vec![b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$1\r\nb\r\n")];
        let m = Merge::MGet(vec![(0, 0), (1, 0), (0, 1)]);
        assert_eq!(merge(&m, parts), b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"));
    }

    #[test]
    fn sums_and_errors() {
        assert_eq!(
            merge(&Merge::Sum, vec![b(":2\r\n"), b(":3\r\n")]),
            b(":5\r\n")
        );
        let err = b("-ERR no\r\n");
        assert_eq!(merge(&Merge::AllOk, vec![b("+OK\r\n"), err.clone()]), err);
    }

    #[test]
    fn info_keyspace_is_summed() {
        let a =
            "# Server\r\nredis_version:7\r\n\r\n# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=5\r\n";
        let c = "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n";
        let f = |t: &str| b(&format!("${}\r\n{t}\r\n", t.len()));
        let merged = merge(&Merge::Info, vec![f(a), f(c)]);
        let text = String::from_utf8_lossy(&merged).into_owned();
        assert!(
            text.contains("db0:keys=5,expires=1,avg_ttl=5\r\n"),
            "{text}"
        );
        assert!(text.contains("redis_version:7"));
    }
}
