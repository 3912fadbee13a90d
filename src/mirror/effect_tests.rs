//! The effect translation table, command by command.

use super::*;
use crate::protocol::value::decode;

fn c(args: &[&str]) -> Command {
    Command::from_args(args)
}

fn run(args: &[&str], name: &str, reply: &str) -> Vec<Vec<String>> {
    let cmd = c(args);
    let effect = effect_of(name, &cmd).expect("has an effect");
    let v = decode(&Bytes::copy_from_slice(reply.as_bytes()), 16).expect("valid reply");
    translate(&effect, &cmd, &v)
        .into_iter()
        .map(|c| {
            c.args()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .collect()
}

#[test]
fn blocking_pops_become_their_effect() {
    assert_eq!(
        run(
            &["BLPOP", "a", "b", "0"],
            "blpop",
            "*2\r\n$1\r\nb\r\n$1\r\nx\r\n"
        ),
        vec![vec!["LPOP", "b"]]
    );
    assert!(run(&["BRPOP", "a", "1"], "brpop", "*-1\r\n").is_empty());
    assert!(run(&["BRPOP", "a", "1"], "brpop", "_\r\n").is_empty());
    assert_eq!(
        run(
            &["BLMOVE", "s", "d", "LEFT", "RIGHT", "0"],
            "blmove",
            "$1\r\nx\r\n"
        ),
        vec![vec!["LMOVE", "s", "d", "LEFT", "RIGHT"]]
    );
    assert_eq!(
        run(&["BRPOPLPUSH", "s", "d", "0"], "brpoplpush", "$1\r\nx\r\n"),
        vec![vec!["RPOPLPUSH", "s", "d"]]
    );
    assert_eq!(
        run(
            &["BLMPOP", "0", "2", "a", "b", "RIGHT", "COUNT", "5"],
            "blmpop",
            "*2\r\n$1\r\nb\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n"
        ),
        vec![vec!["RPOP", "b", "2"]]
    );
    assert_eq!(
        run(
            &["BZPOPMIN", "z", "0"],
            "bzpopmin",
            "*3\r\n$1\r\nz\r\n$1\r\nm\r\n,1.5\r\n"
        ),
        vec![vec!["ZREM", "z", "m"]]
    );
    assert_eq!(
        run(
            &["BZMPOP", "0", "1", "z", "MAX", "COUNT", "2"],
            "bzmpop",
            "*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\nm\r\n$1\r\n2\r\n*2\r\n$1\r\nn\r\n$1\r\n1\r\n"
        ),
        vec![vec!["ZREM", "z", "m", "n"]]
    );
}

#[test]
fn random_writes_become_their_effect() {
    assert_eq!(
        run(&["SPOP", "s"], "spop", "$1\r\nm\r\n"),
        vec![vec!["SREM", "s", "m"]]
    );
    assert_eq!(
        run(&["SPOP", "s", "3"], "spop", "*2\r\n$1\r\nm\r\n$1\r\nn\r\n"),
        vec![vec!["SREM", "s", "m", "n"]]
    );
    assert!(run(&["SPOP", "s", "3"], "spop", "*0\r\n").is_empty());
    assert_eq!(
        run(
            &[
                "XADD",
                "x",
                "NOMKSTREAM",
                "MAXLEN",
                "~",
                "10",
                "LIMIT",
                "5",
                "*",
                "f",
                "v"
            ],
            "xadd",
            "$3\r\n5-0\r\n"
        ),
        vec![vec![
            "XADD",
            "x",
            "NOMKSTREAM",
            "MAXLEN",
            "~",
            "10",
            "LIMIT",
            "5",
            "5-0",
            "f",
            "v"
        ]]
    );
    assert_eq!(
        run(&["XADD", "x", "7-*", "f", "v"], "xadd", "$3\r\n7-3\r\n"),
        vec![vec!["XADD", "x", "7-3", "f", "v"]]
    );
    assert_eq!(effect_of("xadd", &c(&["XADD", "x", "1-1", "f", "v"])), None);
}

#[test]
fn stream_groups_become_claims() {
    let reply = "*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n";
    assert_eq!(
        run(
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "COUNT",
                "2",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">"
            ],
            "xreadgroup",
            reply
        ),
        vec![vec![
            "XCLAIM", "s", "g", "c", "0", "1-0", "2-0", "FORCE", "JUSTID", "LASTID", "2-0"
        ]]
    );
    assert_eq!(
        run(
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "NOACK",
                "STREAMS",
                "s",
                ">"
            ],
            "xreadgroup",
            reply
        ),
        vec![vec!["XGROUP", "SETID", "s", "g", "2-0"]]
    );
    assert!(run(
        &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "0"],
        "xreadgroup",
        reply
    )
    .is_empty());
    assert_eq!(
        run(
            &[
                "XCLAIM",
                "s",
                "g",
                "c",
                "100",
                "1-0",
                "2-0",
                "RETRYCOUNT",
                "3"
            ],
            "xclaim",
            "*1\r\n*2\r\n$3\r\n2-0\r\n*0\r\n"
        ),
        vec![vec!["XCLAIM", "s", "g", "c", "0", "2-0", "RETRYCOUNT", "3"]]
    );
    assert_eq!(
        run(
            &["XAUTOCLAIM", "s", "g", "c", "100", "0", "JUSTID"],
            "xautoclaim",
            "*3\r\n$3\r\n0-0\r\n*1\r\n$3\r\n1-0\r\n*0\r\n"
        ),
        vec![vec!["XCLAIM", "s", "g", "c", "0", "1-0", "JUSTID"]]
    );
}

#[test]
fn a_one_stream_group_read_checks_the_ids_its_claim_takes() {
    let reply = "*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n";
    let v = decode(&Bytes::copy_from_slice(reply.as_bytes()), 16).unwrap();
    let expected = |args: &[&str]| expected(&effect_of("xreadgroup", &c(args)).unwrap(), &v);
    let ids = Value::Array(vec![Value::Str("1-0".into()), Value::Str("2-0".into())]);
    let read = [
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "0",
        "STREAMS",
        "s",
        ">",
    ];
    assert_eq!(expected(&read), Some(ids));
    // NOACK (a SETID), history reads (nothing mirrored), several streams
    // (several claims): nothing to check.
    let noack = [
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "NOACK",
        "STREAMS",
        "s",
        ">",
    ];
    assert_eq!(expected(&noack), None);
    assert_eq!(
        expected(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "0"]),
        None
    );
    let two = [
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "STREAMS",
        "s",
        "t",
        ">",
        ">",
    ];
    assert_eq!(expected(&two), None);
}
