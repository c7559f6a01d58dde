"""Mixed, misbehaving load for tests/chaos/run.sh, against one `balsa serve` on loopback
serving the trained fortunes model as `lm`: valid and broken /infer bodies, generation
answered at once and streamed (also through the v2 generate extension), sequences
(sequence_id) started, continued and ended out of order, the KServe v2 path, reloads asked
over HTTP, scrapes of /metrics and /models, compressed bodies, and raw sockets that stop
mid-request or close while a stream is being sent. Bounded: CLIENTS threads for SECONDS seconds, loopback
only. Prints the count of each outcome and exits 1 when the server answered any status
but 200, 400, 401, 404, 409, 413, 415 and 503 (a 500 or a dropped connection is a defect).
With KEY, requests carry `Authorization: Bearer KEY` (all but a few, which get 401). Some
requests come from a web page's origin (CORS), with their preflights, from an allowed
origin or not. With CHAOS_TLS_CA set (a PEM file of the certificates to trust), everything
goes over HTTPS, and raw sockets also send plain HTTP to the TLS port or leave half-way
through a handshake.
Usage: python3 tests/chaos/load.py PORT CLIENTS SECONDS [KEY]"""
import collections
import gzip
import http.client
import json
import os
import random
import socket
import ssl
import sys
import threading
import time

port, nclients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
key = sys.argv[4] if len(sys.argv) > 4 else None
stop = time.time() + seconds
counts = collections.Counter()
bad = []
lock = threading.Lock()
ALLOWED = {200, 204, 400, 401, 403, 404, 409, 413, 415, 503}
TLS_CA = os.environ.get("CHAOS_TLS_CA")
tls = ssl.create_default_context(cafile=TLS_CA) if TLS_CA else None


def connect(timeout):
    """A socket to the server: TLS (handshake done) when CHAOS_TLS_CA is set."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return tls.wrap_socket(s, server_hostname="127.0.0.1") if tls else s

BODIES = [
    lambda r: {"text": "And the", "top_k": 3},
    lambda r: {"text": "Love", "generate": r.randrange(1, 200), "temperature": 0.7},
    lambda r: {"text": "Q", "generate": r.randrange(1, 300), "stream": True},
    lambda r: {"text": "abc", "sequence_id": r.randrange(1, 20), "top_k": 2,
               "sequence_start": r.random() < 0.3, "sequence_end": r.random() < 0.2},
    lambda r: {"text": "abc", "sequence_id": "s%d" % r.randrange(5), "generate": r.randrange(1, 50),
               "stream": r.random() < 0.5, "sequence_start": r.random() < 0.5},
    lambda r: {"inputs": [[r.randrange(200) for _ in range(r.randrange(1, 30))]]},
    lambda r: {"text": "x" * r.randrange(1, 3000), "output": "all", "top_k": 1},
    lambda r: {"text": ["a", "bb", "ccc"], "return_state": True},
    lambda r: {"model": r.choice(["demo", "nope"]), "inputs": [[r.randrange(1000)] * r.randrange(1, 9)],
               "sequence_id": r.randrange(1, 4), "sequence_start": r.random() < 0.4, "top_k": 4},
    lambda r: {"model": "demo", "inputs": [[r.randrange(1000) for _ in range(20)]] * 4,
               "generate": 30, "seed": r.randrange(100), "temperature": 1.0},
]


def raw_client(r):
    """A client that misbehaves at the socket level; returns its outcome's name."""
    if tls and r.random() < 0.3:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            if r.random() < 0.5:  # plain HTTP to the TLS port
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                s.recv(100)
            else:  # the first bytes of a ClientHello, then gone
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(r.randrange(40)))
        except OSError:
            pass
        finally:
            s.close()
        return "TLS-level client left"
    s = connect(30)
    try:
        kind = r.randrange(4)
        if kind == 0:  # leaves while its stream is being sent
            b = json.dumps({"text": "And the", "generate": 500, "stream": True}).encode()
            s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
            s.recv(r.randrange(1, 500))
        elif kind == 1:  # stops half-way through its body
            s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text\":")
        elif kind == 2:  # half a gzip body
            b = gzip.compress(json.dumps({"text": "Love is", "top_k": 2}).encode())
            s.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(b) + b[: len(b) // 2])
        else:  # a v2 request of a sequence, gone before its answer is read
            b = json.dumps({"parameters": {"sequence_id": 3, "sequence_start": True},
                            "inputs": [{"name": "tokens", "datatype": "INT32", "shape": [1, 3],
                                        "data": [1, 2, 3]}]}).encode()
            s.sendall(b"POST /v2/models/lm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                      % len(b) + b)
            s.recv(100)
    finally:
        s.close()
    return "socket client left"


def client(cid):
    r = random.Random(cid)
    while time.time() < stop:
        try:
            if r.random() < 0.15:
                outcome = raw_client(r)
            else:
                fields = BODIES[r.randrange(len(BODIES))](r)
                fields.setdefault("model", "lm")
                body = json.dumps(fields)
                path, method = "/infer", "POST"
                if r.random() < 0.05:
                    body = body[:-3]  # malformed
                pick = r.random()
                if pick < 0.05:  # a reload asked over HTTP (model_control), beside the SIGHUPs
                    path, body = "/v2/repository/models/lm/load", "{}"
                elif pick < 0.10:
                    path = r.choice(["/metrics", "/models", "/v2/models/lm/stats"])
                    method, body = "GET", None
                elif pick < 0.20:
                    path = "/v2/models/lm/generate" + ("_stream" if r.random() < 0.5 else "")
                    body = json.dumps({"text_input": "And", "parameters": {
                        "max_tokens": r.randrange(1, 100), "sequence_id": r.randrange(1, 6),
                        "sequence_start": r.random() < 0.5}})
                headers = {"Content-Type": "application/json"}
                if r.random() < 0.1:  # a page of an allowed origin, or of another
                    headers["Origin"] = r.choice(["https://app.example", "https://evil.example"])
                    if r.random() < 0.5:  # its preflight (no key, no body)
                        method, body = "OPTIONS", None
                        headers = {"Origin": headers["Origin"],
                                   "Access-Control-Request-Method": "POST"}
                if key and r.random() < 0.97:
                    headers["Authorization"] = "Bearer " + key
                if r.random() < 0.2:
                    headers["Accept-Encoding"] = "gzip"
                if body is not None and r.random() < 0.1:
                    body = gzip.compress(body.encode())
                    headers["Content-Encoding"] = "gzip"
                elif body is not None and r.random() < 0.02:
                    body = "[" * 70000  # over the body limit
                elif r.random() < 0.02:
                    headers["Content-Type"] = "text/csv"
                conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=tls)
                        if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=60))
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                outcome = resp.status
                if outcome not in ALLOWED:
                    with lock:
                        bad.append(f"{outcome} for {method} {path} {str(body)[:120]}")
        except (ConnectionError, socket.timeout, http.client.HTTPException, ssl.SSLError) as e:
            outcome = type(e).__name__
            with lock:
                bad.append(f"{outcome}: {e}")
        with lock:
            counts[outcome] += 1


threads = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("outcomes:", dict(sorted(counts.items(), key=lambda kv: str(kv[0]))))
for b in bad[:10]:
    print("BAD", b)
sys.exit(1 if bad else 0)
