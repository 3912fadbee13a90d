//! Redis glob matching (`stringmatchlen` in util.c), so a route pattern
//! selects exactly the keys `KEYS`/`SCAN MATCH` would with the same pattern.
//! Plain `prefix*` and literal patterns, the common case, skip the matcher.

/// A compiled route pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Glob(Box<[u8]>),
}

impl Pattern {
    pub fn new(pattern: &[u8]) -> Pattern {
        let special = |c: &u8| matches!(c, b'*' | b'?' | b'[' | b'\\');
        match pattern.split_last() {
            _ if !pattern.iter().any(special) => Pattern::Exact(pattern.into()),
            Some((b'*', head)) if !head.iter().any(special) => Pattern::Prefix(head.into()),
            _ => Pattern::Glob(pattern.into()),
        }
    }

    /// The pattern as written (for `SCAN MATCH`).
    pub fn source(&self) -> Vec<u8> {
        match self {
            Pattern::Exact(p) | Pattern::Glob(p) => p.to_vec(),
            Pattern::Prefix(p) => [&p[..], b"*"].concat(),
        }
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Pattern::Exact(p) => key == &p[..],
            Pattern::Prefix(p) => key.starts_with(p),
            Pattern::Glob(p) => string_match(p, key),
        }
    }
}

/// Redis's `stringmatchlen` (case-sensitive), including its nesting guard
/// and its early exit once a `*` has failed at every later position.
pub fn string_match(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    match_impl(pattern, string, &mut skip_longer, 0)
}

fn match_impl(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    if nesting > 1000 {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_impl(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                if !class(&mut p, s[0]) {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // Unterminated class consumed the whole pattern.
                    return s.is_empty();
                }
            }
            c => {
                let lit = if c == b'\\' && p.len() >= 2 {
                    p = &p[1..];
                    p[0]
                } else {
                    c
                };
                if lit != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

/// Whether byte `c` is in the `[...]` class at the head of `p` (`[^...]`
/// negates); `p` is left on the closing `]`, or empty when the class is
/// unterminated.
#[inline]
fn class(p: &mut &[u8], c: u8) -> bool {
    *p = &p[1..];
    let not = p.first() == Some(&b'^');
    if not {
        *p = &p[1..];
    }
    let mut matched = false;
    loop {
        if p.first() == Some(&b'\\') && p.len() >= 2 {
            *p = &p[1..];
            if p[0] == c {
                matched = true;
            }
        } else if p.first() == Some(&b']') {
            break;
        } else if p.is_empty() {
            // Unterminated class: Redis steps back onto the last byte so
            // the outer advance consumes it.
            break;
        } else if p.len() >= 3 && p[1] == b'-' {
            let (mut lo, mut hi) = (p[0], p[2]);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            *p = &p[2..];
            if (lo..=hi).contains(&c) {
                matched = true;
            }
        } else if p[0] == c {
            matched = true;
        }
        *p = &p[1..];
    }
    matched != not
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_semantics() {
        let yes: &[(&str, &str)] = &[
            ("session:*", "session:1"),
            ("session:*", "session:"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("*:*:x", "a:b:c:x"),
            ("user:[0-9]*", "user:42:name"),
        ];
        for (p, s) in yes {
            assert!(
                Pattern::new(p.as_bytes()).matches(s.as_bytes()),
                "{p} should match {s}"
            );
            assert!(
                string_match(p.as_bytes(), s.as_bytes()),
                "{p} glob should match {s}"
            );
        }
        let no: &[(&str, &str)] = &[
            ("session:*", "sess:1"),
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("exact", "exactly"),
            ("*:x", "a:b"),
        ];
        for (p, s) in no {
            assert!(
                !Pattern::new(p.as_bytes()).matches(s.as_bytes()),
                "{p} should not match {s}"
            );
        }
    }

    #[test]
    fn fast_paths_are_chosen() {
        assert_eq!(Pattern::new(b"sess:*"), Pattern::Prefix((*b"sess:").into()));
        assert_eq!(Pattern::new(b"k"), Pattern::Exact((*b"k").into()));
        assert!(matches!(Pattern::new(b"a*b"), Pattern::Glob(_)));
    }

    #[test]
    fn pathological_patterns_terminate() {
        let p = "a*".repeat(50) + "b";
        let s = "a".repeat(200);
        assert!(!string_match(p.as_bytes(), s.as_bytes()));
    }
}
