//! Replies come back in the client's order even when one pipeline mixes
//! routes whose read sides differ.

mod support;

use cutover::routing::Phase;
use redis::Value;
use support::TestProxy;

#[tokio::test]
async fn thousand_mixed_commands_across_two_sides_stay_in_order() {
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("a", Some(&["a:*"]), Phase::ReadNew),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let (mut o, mut n) = (old.sync(), new.sync());
    for i in 0..250 {
        let _: () = redis::cmd("SET")
            .arg(format!("a:{i}"))
            .arg(format!("new-{i}"))
            .query(&mut n)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("a:{i}"))
            .arg(format!("old-{i}"))
            .query(&mut o)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("b:{i}"))
            .arg(format!("old-b-{i}"))
            .query(&mut o)
            .unwrap();
    }

    let mut pipe = redis::pipe();
    for i in 0..250 {
        pipe.cmd("GET").arg(format!("a:{i}")); // new answers
        pipe.cmd("GET").arg(format!("b:{i}")); // old answers
                                               // new answers, old mirrors; APPEND does not commute, so the final
                                               // value on each cache is the order it applied them in.
        pipe.cmd("APPEND").arg("a:log").arg(format!("{i},"));
        pipe.cmd("RPUSH").arg("b:list").arg(i); // old only
    }
    let mut c = proxy.conn().await;
    let replies: Vec<Value> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(replies.len(), 1000);
    for i in 0..250 {
        let r = &replies[i * 4..i * 4 + 4];
        assert_eq!(
            r[0],
            Value::BulkString(format!("new-{i}").into_bytes()),
            "command {}",
            i * 4
        );
        assert_eq!(
            r[1],
            Value::BulkString(format!("old-b-{i}").into_bytes()),
            "command {}",
            i * 4 + 1
        );
        let log_len = (0..=i).map(|j| format!("{j},").len()).sum::<usize>();
        assert_eq!(r[2], Value::Int(log_len as i64), "command {}", i * 4 + 2);
        assert_eq!(r[3], Value::Int(i as i64 + 1), "command {}", i * 4 + 3);
    }
    proxy.wait_mirrors_settled().await;
    let log: String = (0..250).map(|i| format!("{i},")).collect();
    let on_new: String = redis::cmd("GET").arg("a:log").query(&mut n).unwrap();
    let mirrored: String = redis::cmd("GET").arg("a:log").query(&mut o).unwrap();
    assert_eq!(on_new, log, "new applied the APPENDs in the client's order");
    assert_eq!(mirrored, log, "old got every APPEND mirrored, in order");
}

#[tokio::test]
async fn pipeline_split_across_many_small_writes() {
    use tokio::io::AsyncWriteExt;
    let (old, new) = support::start_pair();
    let proxy = TestProxy::start(
        &old,
        &new,
        &[
            ("a", Some(&["a:*"]), Phase::NewOnly),
            ("default", None, Phase::OldOnly),
        ],
    )
    .await;
    let mut input = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        let key = if i % 2 == 0 {
            format!("a:{i}")
        } else {
            format!("b:{i}")
        };
        let val = format!("v{i}\r\nwith-crlf");
        input.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{val}\r\n",
                key.len(),
                val.len()
            )
            .as_bytes(),
        );
        input.extend_from_slice(
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
        );
        want.extend_from_slice(b"+OK\r\n");
        want.extend_from_slice(format!("${}\r\n{val}\r\n", val.len()).as_bytes());
    }
    let mut raw = proxy.raw().await;
    for chunk in input.chunks(7) {
        raw.stream.write_all(chunk).await.unwrap();
    }
    let got = raw.read_n(want.len()).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    let on_new: i64 = redis::cmd("DBSIZE").query(&mut new.sync()).unwrap();
    let on_old: i64 = redis::cmd("DBSIZE").query(&mut old.sync()).unwrap();
    assert_eq!((on_old, on_new), (100, 100));
}
