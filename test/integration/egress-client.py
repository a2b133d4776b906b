"""The job side of the egress tests: downloads or uploads through $http_proxy and prints what arrived.

Run inside a job as `python3 -c "$(cat egress-client.py)" OP MODE URL [FILE] [--rate BYTES_PER_SECOND]`:
OP is "down" or "up"; MODE "absolute" sends the absolute URI to the proxy, "connect" opens a CONNECT
tunnel first, "halfclose" (downloads only) opens a CONNECT tunnel on a raw socket and shuts its write
side (sends EOF) right after the request, as `nc -N` does; "direct" bypasses the proxy (benchmarks
compare against it). Downloads are read no faster than --rate (0: as fast as they come). Prints one JSON line.
"""

import argparse
import hashlib
import http.client
import json
import os
import socket
import time
import urllib.parse
import urllib.request

args = argparse.ArgumentParser()
args.add_argument("op", choices=["down", "up"])
args.add_argument("mode", choices=["absolute", "connect", "halfclose", "direct"])
args.add_argument("url")
args.add_argument("file", nargs="?")
args.add_argument("--rate", type=int, default=0)
opts = args.parse_args()


class HalfClosed:
    """A GET through a CONNECT tunnel whose client sends EOF after the request; reads like a response."""

    def __init__(self):
        proxy = urllib.parse.urlsplit(os.environ["http_proxy"])
        target = urllib.parse.urlsplit(opts.url)
        self.s = socket.create_connection((proxy.hostname, proxy.port), timeout=60)
        self.f = self.s.makefile("rb")
        self.s.sendall(f"CONNECT {target.netloc} HTTP/1.1\r\nHost: {target.netloc}\r\n\r\n".encode())
        self.head()
        self.s.sendall(f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nConnection: close\r\n\r\n".encode())
        self.s.shutdown(socket.SHUT_WR)
        self.head()

    def head(self):
        status = self.f.readline()
        if b" 200 " not in status:
            raise SystemExit(f"unexpected answer: {status!r}")
        while self.f.readline() not in (b"\r\n", b""):
            pass

    def read(self, n):
        return self.f.read1(n)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.s.close()


def request(method, body=None, length=None):
    if opts.mode == "halfclose":
        return HalfClosed()
    headers = {} if length is None else {"Content-Length": str(length)}
    if opts.mode in ("absolute", "direct"):
        req = urllib.request.Request(opts.url, data=body, method=method, headers=headers)
        proxies = {} if opts.mode == "direct" else None  # None: from $http_proxy
        return urllib.request.build_opener(urllib.request.ProxyHandler(proxies)).open(req, timeout=60)
    proxy = urllib.parse.urlsplit(os.environ["http_proxy"])
    target = urllib.parse.urlsplit(opts.url)
    conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=60)
    conn.set_tunnel(target.hostname, target.port)
    conn.request(method, target.path, body=body, headers=headers)
    return conn.getresponse()


start = time.monotonic()
if opts.op == "down":
    digest, got, error = hashlib.sha256(), 0, None
    try:
        with request("GET") as r:
            while chunk := r.read(64 << 10):
                digest.update(chunk)
                got += len(chunk)
                ahead = got / opts.rate - (time.monotonic() - start) if opts.rate else 0
                if ahead > 0:
                    time.sleep(ahead)
    except OSError as e:
        # A cut connection must show as an error: http.client ends a short body silently on a clean EOF.
        error = e.__class__.__name__
    result = {"bytes": got, "sha256": digest.hexdigest(), "error": error}
else:
    size = os.path.getsize(opts.file)
    with open(opts.file, "rb") as f, request("POST", f, size) as r:
        result = json.loads(r.read())
elapsed = time.monotonic() - start
print(json.dumps({"op": opts.op, "mode": opts.mode, **result, "seconds": round(elapsed, 3)}), flush=True)
