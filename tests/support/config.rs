//! Proxy configs for tests, built as TOML values rather than text: the two
//! upstreams, the routes, and further sections merged in as tables.

use cutover::routing::{Phase, Side};
use toml::{Table, Value};

/// The routes part of a config: `(name, patterns, phase)`, default last.
pub type RouteSpec<'a> = (&'a str, Option<&'a [&'a str]>, Phase);

/// A proxy config under construction. Starts with a listener on port 0,
/// both upstreams with a 2 s command timeout, no routes, and (unless a
/// section says otherwise) the admin API on port 0: tests run in
/// parallel, never on fixed ports.
#[derive(Clone, Debug)]
pub struct Config {
    doc: Table,
}

fn side_key(side: Side) -> &'static str {
    match side {
        Side::Old => "old",
        Side::New => "new",
    }
}

/// `b` merged into `a`: tables key by key, arrays of tables appended,
/// anything else replaced.
fn merge(a: &mut Table, b: Table) {
    for (k, v) in b {
        match (a.get_mut(&k), v) {
            (Some(Value::Table(x)), Value::Table(y)) => merge(x, y),
            (Some(Value::Array(x)), Value::Array(y)) => x.extend(y),
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
}

fn parse(text: &str) -> Table {
    text.parse::<Table>()
        .unwrap_or_else(|e| panic!("test config section is TOML: {e}\n{text}"))
}

impl Config {
    pub fn new(old: &str, new: &str) -> Config {
        let upstream = |addr: &str| {
            let mut t = Table::new();
            t.insert("address".into(), addr.into());
            t.insert("command_timeout_ms".into(), 2000.into());
            // The whole suite can run with shared upstream connections:
            // CUTOVER_TEST_CONNECTIONS=shared cargo test.
            if let Ok(mode) = std::env::var("CUTOVER_TEST_CONNECTIONS") {
                t.insert("connections".into(), mode.into());
            }
            Value::Table(t)
        };
        let mut doc = Table::new();
        doc.insert(
            "listen".into(),
            Value::Table(parse("address = \"127.0.0.1:0\"")),
        );
        let mut ups = Table::new();
        ups.insert("old".into(), upstream(old));
        ups.insert("new".into(), upstream(new));
        doc.insert("upstreams".into(), Value::Table(ups));
        doc.insert("routes".into(), Value::Array(Vec::new()));
        Config { doc }
    }

    /// One route; the default route (no patterns) must come last.
    pub fn route(mut self, name: &str, patterns: Option<&[&str]>, phase: Phase) -> Config {
        let mut r = Table::new();
        r.insert("name".into(), name.into());
        if let Some(p) = patterns {
            r.insert(
                "patterns".into(),
                Value::Array(p.iter().map(|&p| p.into()).collect()),
            );
        }
        r.insert("phase".into(), phase.name().into());
        if let Some(Value::Array(routes)) = self.doc.get_mut("routes") {
            routes.push(Value::Table(r));
        }
        self
    }

    /// One route with further keys (and sub-tables such as
    /// `[auto_cutover]`) given as TOML lines.
    pub fn route_toml(
        mut self,
        name: &str,
        patterns: Option<&[&str]>,
        phase: Phase,
        lines: &str,
    ) -> Config {
        self = self.route(name, patterns, phase);
        if let Some(Value::Array(routes)) = self.doc.get_mut("routes") {
            if let Some(Value::Table(last)) = routes.last_mut() {
                merge(last, parse(lines));
            }
        }
        self
    }

    pub fn routes(self, routes: &[RouteSpec<'_>]) -> Config {
        routes.iter().fold(self, |c, &(name, patterns, phase)| {
            c.route(name, patterns, phase)
        })
    }

    /// Sets `key` of `[upstreams.<side>]`.
    pub fn upstream(mut self, side: Side, key: &str, value: impl Into<Value>) -> Config {
        let ups = self.doc["upstreams"].as_table_mut().expect("upstreams");
        let up = ups[side_key(side)].as_table_mut().expect("upstream");
        up.insert(key.into(), value.into());
        self
    }

    /// `[upstreams.<side>] command_timeout_ms` (`0`: never time out).
    pub fn command_timeout(self, side: Side, ms: u64) -> Config {
        self.upstream(side, "command_timeout_ms", ms as i64)
    }

    /// Keys given as TOML lines, merged into `[upstreams.<side>]`.
    pub fn upstream_toml(mut self, side: Side, lines: &str) -> Config {
        let ups = self.doc["upstreams"].as_table_mut().expect("upstreams");
        let up = ups[side_key(side)].as_table_mut().expect("upstream");
        merge(up, parse(lines));
        self
    }

    /// Further sections (`[limits]`, `[auth]`, `[[routes]]`, ...), given
    /// as TOML text and merged in.
    pub fn with(mut self, toml: &str) -> Config {
        merge(&mut self.doc, parse(toml));
        self
    }

    pub fn text(&self) -> String {
        let mut doc = self.doc.clone();
        doc.entry("admin")
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("admin is a table")
            .entry("address")
            .or_insert_with(|| "127.0.0.1:0".into());
        toml::to_string(&doc).expect("a TOML table serializes")
    }
}

/// A whole config: [`Config`] with `routes` and the `extra` sections.
pub fn config_text(old: &str, new: &str, routes: &[RouteSpec<'_>], extra: &str) -> String {
    Config::new(old, new).routes(routes).with(extra).text()
}

/// A journal file in `dir` holding one entry: key `k` of route `default`
/// in the upstreams' own database, to be copied from `from` ("old" or
/// "new"), as a proxy that lost that mirrored write left it on disk.
/// Returns the `[journal]` section that points a config at it.
pub fn journal_of_k(dir: &std::path::Path, from: &str) -> String {
    let file = dir.join("journal.json");
    let entry = format!(
        r#"{{"version":1,"keys":[{{"route":"default","db":null,"from":"{from}","key":"6b"}}],"needs_verify":[]}}"#
    );
    std::fs::write(&file, entry).unwrap();
    format!("[journal]\nfile = {:?}\n", file.to_str().unwrap())
}
