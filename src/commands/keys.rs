//! Key positions from key specs: a port of Redis 7's `getKeysUsingKeySpecs`
//! (db.c), so cutover finds exactly the keys Redis would.

use smallvec::SmallVec;

use super::spec::{BeginSearch, CommandSpec, FindKeys};
use crate::protocol::request::string2ll;
use crate::protocol::Command;

/// Argument indexes of a command's keys (channels for `PUBLISH`).
pub type KeyPositions = SmallVec<[usize; 4]>;

/// The keys of `cmd`. An invalid spec for this argv (wrong `numkeys`, too few
/// arguments) yields what the valid specs found: the command then fails at
/// Redis with Redis's own error, wherever it is routed.
pub fn key_positions(spec: &CommandSpec, cmd: &Command) -> KeyPositions {
    let mut out = KeyPositions::new();
    let argc = cmd.len() as i64;
    if spec.name == "publish" {
        if argc >= 2 {
            out.push(1);
        }
        return out;
    }
    if spec.name == "sort" {
        return sort_keys(cmd);
    }
    for ks in spec.key_specs {
        let Some(first) = begin(&ks.begin, cmd, argc) else {
            continue;
        };
        let Some((first, last, step)) = range(&ks.find, first, cmd, argc) else {
            continue;
        };
        if last >= argc || last < first || first >= argc || step <= 0 {
            continue;
        }
        let mut i = first;
        while i <= last {
            out.push(i as usize);
            i += step;
        }
    }
    out
}

/// Where a key spec's keys begin (`None`: not in this command), as Redis's
/// `getKeysUsingKeySpecs` finds it.
#[inline]
fn begin(begin: &BeginSearch, cmd: &Command, argc: i64) -> Option<i64> {
    match begin {
        BeginSearch::Index(i) => Some(*i as i64),
        BeginSearch::Keyword {
            keyword,
            start_from,
        } => {
            let start_from = *start_from as i64;
            let (start, end, step) = if start_from > 0 {
                (start_from, argc - 1, 1)
            } else {
                (argc + start_from, 1, -1)
            };
            let mut i = start;
            while if step > 0 { i <= end } else { i >= end } {
                if i >= argc || i < 1 {
                    break;
                }
                if cmd
                    .arg(i as usize)
                    .is_some_and(|a| a.eq_ignore_ascii_case(keyword.as_bytes()))
                {
                    return Some(i + 1);
                }
                i += step;
            }
            None
        }
        BeginSearch::Unknown => None,
    }
}

/// The first and last key and the step between keys of a key spec whose
/// keys begin at `first` (`None`: no keys here).
#[inline]
fn range(find: &FindKeys, first: i64, cmd: &Command, argc: i64) -> Option<(i64, i64, i64)> {
    match find {
        FindKeys::Range {
            last_key,
            step,
            limit,
        } => {
            let (last_key, limit) = (*last_key as i64, *limit as i64);
            let last = if last_key >= 0 {
                first + last_key
            } else if limit == 0 {
                argc + last_key
            } else {
                first + ((argc - first) / limit + last_key)
            };
            Some((first, last, *step as i64))
        }
        FindKeys::KeyNum {
            keynum_idx,
            first_key,
            step,
        } => {
            let idx = first + *keynum_idx as i64;
            if *keynum_idx as i64 >= argc - first {
                return None;
            }
            let numkeys = cmd
                .arg(idx as usize)
                .and_then(string2ll)
                .filter(|&n| n >= 0)?;
            let first = first + *first_key as i64;
            Some((first, first + numkeys - 1, *step as i64))
        }
        FindKeys::Unknown => None,
    }
}

/// Redis's `sortGetKeys`: the source key, plus the last `STORE` destination,
/// skipping the arguments of `LIMIT`, `GET` and `BY`.
fn sort_keys(cmd: &Command) -> KeyPositions {
    let mut out = KeyPositions::new();
    if cmd.len() < 2 {
        return out;
    }
    out.push(1);
    let mut store = None;
    let mut i = 2;
    while i < cmd.len() {
        let a = cmd.arg(i).unwrap_or_default();
        if a.eq_ignore_ascii_case(b"limit") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"store") && i + 1 < cmd.len() {
            store = Some(i + 1);
        }
        i += 1;
    }
    out.extend(store);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::lookup;

    fn keys(args: &[&str]) -> Vec<String> {
        let cmd = Command::from_args(args);
        let spec = lookup(&cmd).unwrap();
        key_positions(spec, &cmd)
            .into_iter()
            .map(|i| String::from_utf8(cmd.arg(i).unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn simple_and_range_keys() {
        assert_eq!(keys(&["get", "a"]), ["a"]);
        assert_eq!(keys(&["mset", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(keys(&["del", "a", "b", "c"]), ["a", "b", "c"]);
        assert_eq!(keys(&["rename", "a", "b"]), ["a", "b"]);
        assert_eq!(keys(&["ping"]), Vec::<String>::new());
        assert_eq!(keys(&["publish", "ch", "msg"]), ["ch"]);
    }

    #[test]
    fn keynum_commands() {
        assert_eq!(
            keys(&["eval", "return 1", "2", "k1", "k2", "arg"]),
            ["k1", "k2"]
        );
        assert_eq!(keys(&["eval", "return 1", "0"]), Vec::<String>::new());
        assert_eq!(
            keys(&["zunionstore", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]),
            ["dst", "a", "b"]
        );
        assert_eq!(keys(&["lmpop", "2", "l1", "l2", "LEFT"]), ["l1", "l2"]);
        assert_eq!(keys(&["eval", "return 1", "x"]), Vec::<String>::new());
        assert_eq!(keys(&["eval", "return 1", "5", "k1"]), Vec::<String>::new());
    }

    #[test]
    fn keyword_commands() {
        assert_eq!(
            keys(&["xread", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]),
            ["s1", "s2"]
        );
        assert_eq!(
            keys(&["sort", "src", "BY", "w_*", "STORE", "dst"]),
            ["src", "dst"]
        );
        assert_eq!(
            keys(&["sort", "src", "GET", "store", "LIMIT", "0", "1"]),
            ["src"]
        );
        assert_eq!(keys(&["sort_ro", "src", "BY", "w_*"]), ["src"]);
        assert_eq!(
            keys(&["georadius", "g", "0", "0", "1", "km", "STORE", "out"]),
            ["g", "out"]
        );
    }
}
