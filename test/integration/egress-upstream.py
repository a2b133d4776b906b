"""The upstream HTTP server of the egress tests, run inside the test's own network namespace.

GET /blob serves the file given on the command line; GET /cut sends the head and 1 MiB of it, then
resets the connection (RST), as a server that crashes mid-answer; POST /sink reads the body slowly (a slow reader on
the far side of the proxy) and answers with its length and sha256. Prints "ready" once listening, and
stops by itself after --lifetime seconds in case the test that started it could not.

Usage: egress-upstream.py ADDRESS PORT BLOB_FILE [--rate BYTES_PER_SECOND] [--lifetime SECONDS]
"""

import argparse
import hashlib
import http.server
import json
import os
import shutil
import socket
import struct
import threading
import time

args = argparse.ArgumentParser()
args.add_argument("address")
args.add_argument("port", type=int)
args.add_argument("blob")
args.add_argument("--rate", type=int, default=0)  # 0: read uploads as fast as they come
args.add_argument("--lifetime", type=int, default=900)
opts = args.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_GET(self):
        if self.path not in ("/blob", "/cut"):
            self.send_error(404)
            return
        size = os.path.getsize(opts.blob)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        with open(opts.blob, "rb") as f:
            if self.path == "/blob":
                shutil.copyfileobj(f, self.wfile, 1 << 20)
            else:
                self.cut(f.read(1 << 20))
        self.close_connection = True

    def cut(self, part):
        self.wfile.write(part)
        self.wfile.flush()
        # Linger 0 makes close() send RST; closing the fd itself skips the server's shutdown (a FIN).
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(self.connection.detach())
        self.wfile = open(os.devnull, "wb")

    def do_POST(self):
        if self.path != "/sink":
            self.send_error(404)
            return
        left = int(self.headers["Content-Length"])
        digest, got, start = hashlib.sha256(), 0, time.monotonic()
        while left > 0:
            chunk = self.rfile.read(min(64 << 10, left))
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
            left -= len(chunk)
            # Read no faster than --rate, so the proxy's side of this connection fills up.
            ahead = got / opts.rate - (time.monotonic() - start) if opts.rate else 0
            if ahead > 0:
                time.sleep(ahead)
        body = json.dumps({"bytes": got, "sha256": digest.hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


server = http.server.ThreadingHTTPServer((opts.address, opts.port), Handler)
threading.Timer(opts.lifetime, lambda: os._exit(0)).start()
print("ready", flush=True)
server.serve_forever()
