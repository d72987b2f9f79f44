"""The reference peer: the straightforward redis-py sweep that token-sweeper
is measured against (bench/README.md). Usage: reference_peer.py URL PATTERN CUTOFF
"""
import sys

import redis


def main() -> None:
    url, pattern, cutoff = sys.argv[1], sys.argv[2], sys.argv[3]
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    removed = 0
    queued = 0
    for key in r.scan_iter(match=pattern, count=1000):
        pipe.zremrangebyscore(key, "-inf", cutoff)
        queued += 1
        if queued == 1000:
            removed += sum(pipe.execute())
            queued = 0
    if queued:
        removed += sum(pipe.execute())
    print(removed)


if __name__ == "__main__":
    main()
