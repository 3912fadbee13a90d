//! Per-command CPU of the proxy's own logic, in-process: framing a
//! pipelined request batch, framing the replies, and classifying + routing a
//! command. Run: `cargo bench --bench hot_path`. The end-to-end comparison
//! with Redis and twemproxy is `benches/e2e.py`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cutover::commands;
use cutover::config::{CommandsConfig, RouteConfig};
use cutover::protocol::{Command, ReplyScanner, RequestParser};
use cutover::routing::{Phase, Router};
use std::hint::black_box;

fn pipeline(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("session:{i:06}");
        if i % 2 == 0 {
            out.extend_from_slice(
                Command::from_args(&["SET", &key, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]).raw(),
            );
        } else {
            out.extend_from_slice(Command::from_args(&["GET", &key]).raw());
        }
    }
    out
}

fn bench_parse(c: &mut Criterion) {
    let input = pipeline(16);
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(16));
    g.bench_function("parse 16 pipelined SET/GET", |b| {
        let mut parser = RequestParser::default();
        b.iter(|| {
            let mut buf = BytesMut::from(&input[..]);
            while let Some(cmd) = parser.parse(&mut buf).unwrap() {
                black_box(cmd);
            }
        })
    });
    g.finish();
}

fn bench_replies(c: &mut Criterion) {
    let mut input = Vec::new();
    for i in 0..16 {
        if i % 2 == 0 {
            input.extend_from_slice(b"+OK\r\n");
        } else {
            input.extend_from_slice(b"$32\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
    }
    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Elements(16));
    g.bench_function("frame 16 replies", |b| {
        let mut scanner = ReplyScanner::default();
        b.iter(|| {
            let mut buf = BytesMut::from(&input[..]);
            while let Some(r) = scanner.next(&mut buf).unwrap() {
                black_box(r);
            }
        })
    });
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    let routes = vec![
        RouteConfig {
            name: "carts".into(),
            patterns: Some(vec!["cart:*".into(), "basket:*".into()]),
            phase: Phase::ReadNew,
            ramp_percent: None,
            shadow_reads: 0.0,
            shadow_repair: false,
            read_fallback: false,
            auto_cutover: None,
        },
        RouteConfig {
            name: "sessions".into(),
            patterns: Some(vec!["session:*".into(), "sess:*".into()]),
            phase: Phase::DualWrite,
            ramp_percent: None,
            shadow_reads: 0.0,
            shadow_repair: false,
            read_fallback: false,
            auto_cutover: None,
        },
        RouteConfig {
            name: "default".into(),
            patterns: None,
            phase: Phase::OldOnly,
            ramp_percent: None,
            shadow_reads: 0.0,
            shadow_repair: false,
            read_fallback: false,
            auto_cutover: None,
        },
    ];
    let router = Router::new(&routes, &CommandsConfig::default());
    let cmd = Command::from_args(&["SET", "session:000042", "value"]);
    c.bench_function("lookup + classify + keys + route (SET)", |b| {
        b.iter(|| {
            let spec = commands::lookup(black_box(&cmd)).unwrap();
            let kind = commands::classify(spec, &cmd);
            let keys = commands::key_positions(spec, &cmd);
            let table = router.load();
            let route = table.route_of(cmd.arg(keys[0]).unwrap());
            black_box((kind, table.routes[route].phase))
        })
    });
}

criterion_group!(benches, bench_parse, bench_replies, bench_route);
criterion_main!(benches);
