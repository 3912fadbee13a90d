"""Drives cutover, listening with `[listen] cluster = true`, with redis-py's
cluster client (RedisCluster): slot discovery, keys on every slot, a
cluster pipeline, multi-slot reads split by the client, and checks both
caches. Run by tests/cluster_clients.rs:
    python redis_py_cluster.py <proxy-port> <old-port> <new-port>
"""
import sys
import time

import redis
from redis.cluster import RedisCluster

proxy_port, old_port, new_port = (int(a) for a in sys.argv[1:4])
old = redis.Redis(port=old_port, decode_responses=True)
new = redis.Redis(port=new_port, decode_responses=True)

rc = RedisCluster(host="127.0.0.1", port=proxy_port, decode_responses=True)
nodes = rc.get_nodes()
assert len(nodes) == 1 and nodes[0].port == proxy_port, nodes
assert rc.cluster_keyslot("foo") == 12182

keys = [f"user:{i}" for i in range(200)]
for i, k in enumerate(keys):
    assert rc.set(k, i)
for i, k in enumerate(keys):
    assert rc.get(k) == str(i), k
assert rc.incr("counter") == 1
assert rc.hset("h", mapping={"a": "1", "b": "2"}) == 2
assert rc.hgetall("h") == {"a": "1", "b": "2"}
# Keys in many slots, split by the client: all answered by cutover.
assert rc.mget_nonatomic(keys[:50]) == [str(i) for i in range(50)]
pipe = rc.pipeline()
for k in keys[:20]:
    pipe.incr(k)
assert pipe.execute() == [i + 1 for i in range(20)]
assert rc.delete(*keys[150:]) == 50

# dual-write: both caches hold what the cluster client wrote.
deadline = time.time() + 5
while True:
    try:
        for c in (old, new):
            assert c.get("user:0") == "1"
            assert c.get("user:100") == "100"
            assert c.exists("user:199") == 0
            assert c.get("counter") == "1"
        break
    except AssertionError:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
print("OK")
