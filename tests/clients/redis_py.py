"""Drives cutover with redis-py (pipelines, transactions, pub/sub, RESP3)
and checks both caches. Run by tests/redis_py.rs:
    python redis_py.py <proxy-port> <old-port> <new-port>
"""
import sys
import threading
import time

import redis

proxy_port, old_port, new_port = (int(a) for a in sys.argv[1:4])
phase = sys.argv[4]
old = redis.Redis(port=old_port, decode_responses=True)
new = redis.Redis(port=new_port, decode_responses=True)


def assert_eq(a, b):
    assert a == b, f"{a!r} != {b!r}"


def both(check):
    # Mirrored writes land asynchronously: give them a moment.
    deadline = time.time() + 5
    while True:
        try:
            which = "old"
            check(old)
            which = "new"
            check(new)
            return
        except AssertionError as e:
            if time.time() > deadline:
                raise AssertionError(f"on {which} (protocol {protocol}): {e}")
            time.sleep(0.02)


for protocol in (2, 3):
    r = redis.Redis(port=proxy_port, protocol=protocol, decode_responses=True)
    p = f"py{protocol}:"

    # Pipeline (no transaction).
    pipe = r.pipeline(transaction=False)
    pipe.set(p + "a", "1").incr(p + "a").get(p + "a").hset(p + "h", mapping={"f": "v", "g": "w"})
    pipe.hgetall(p + "h")
    assert pipe.execute() == [True, 2, "2", 2, {"f": "v", "g": "w"}]

    # Transaction with WATCH through redis-py's helper.
    def tx(pipe):
        n = int(pipe.get(p + "a") or 0)
        pipe.multi()
        pipe.set(p + "a", n * 10)
        pipe.sadd(p + "s", "x", "y", "z")
        pipe.spop(p + "s")
    r.transaction(tx, p + "a")
    both(lambda c: (assert_eq(c.get(p + "a"), "20"), assert_eq(c.scard(p + "s"), 2)))

    # Blocking pop fed by another client.
    def feed():
        time.sleep(0.2)
        redis.Redis(port=proxy_port, protocol=protocol).rpush(p + "q", "one", "two")
    threading.Thread(target=feed).start()
    got = r.blpop([p + "q"], timeout=5)
    assert list(got) == [p + "q", "one"], got
    # Only the serving cache is asserted: the mirror gets LPOP once the pop
    # is known, and that LPOP can overtake the feeder's own mirrored RPUSH
    # (two clients, two connections: a known race, see the README).
    served = new if phase == "read-new" else old
    assert_eq(served.lrange(p + "q", 0, -1), ["two"])

    # XADD * gets the same ID on both caches.
    xid = r.xadd(p + "x", {"f": "v"})
    both(lambda c: assert_eq(c.xrange(p + "x")[0][0], xid))

    # Pub/sub.
    ps = r.pubsub()
    ps.subscribe(p + "chan")
    msg = ps.get_message(timeout=2)
    assert msg["type"] == "subscribe" and msg["data"] == 1, msg
    assert r.publish(p + "chan", "hello") == 1
    msg = ps.get_message(timeout=2)
    assert msg and msg["type"] == "message" and msg["data"] == "hello", msg
    ps.unsubscribe(p + "chan")
    ps.close()

    # Scripts.
    sha = r.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert r.evalsha(sha, 1, p + "n", 5) == 5
    both(lambda c: assert_eq(c.get(p + "n"), "5"))


print("OK")
