"""JSON against binary tensors for a large v2 output, in one run against one server: the
same request (batch 1, 35 tokens, parameter output "all": a 10,000-word softmax at every
step = 350,000 floats) answered with the output as JSON numbers and as raw bytes
(binary tensor extension). Prints requests/s, client latency, the response size, and the
server's own time per request from the statistics extension (compute_output = rendering
the answer). Raw HTTP (http.client) so the client does not parse the numbers; the body is
read in full. Usage: python3 bench/v2_tensors.py PORT MODEL [SECONDS_PER_MODE]"""
import http.client
import json
import sys
import time

port, model = int(sys.argv[1]), sys.argv[2]
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
steps = 35
tokens = [(i * 37) % 10000 for i in range(steps)]


def body(binary):
    req = {"parameters": {"output": "all"},
           "inputs": [{"name": "tokens", "shape": [1, steps], "datatype": "INT32", "data": tokens}],
           "outputs": [{"name": "output", "parameters": {"binary_data": binary}}]}
    return json.dumps(req).encode()


def stats(conn):
    conn.request("GET", f"/v2/models/{model}/stats")
    s = json.loads(conn.getresponse().read())["model_stats"][0]["inference_stats"]
    return {k: (s[k]["count"], s[k]["ns"]) for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}


def run(binary):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    b = body(binary)
    hdr = {"Content-Type": "application/json"}
    for _ in range(3):  # warm-up
        conn.request("POST", f"/v2/models/{model}/infer", b, hdr)
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, data[:200]
    before = stats(conn)
    lat, size, t0 = [], len(data), time.perf_counter()
    while time.perf_counter() - t0 < secs:
        t = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", b, hdr)
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    after = stats(conn)
    n = len(lat)
    per = {k: (after[k][1] - before[k][1]) / max(1, after[k][0] - before[k][0]) / 1e6 for k in after}
    lat.sort()
    hl = r.getheader("Inference-Header-Content-Length")
    return {"mode": "binary" if binary else "JSON", "requests": n, "rps": n / wall,
            "p50_ms": lat[n // 2] * 1e3, "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3,
            "bytes": size, "json_header": hl, "server_ms": per}


res = [run(False), run(True)]
print(f"model {model}, batch 1, {steps} steps, output all: {steps * 10000} floats per answer, "
      f"{secs:.0f} s per mode, 1 client, keep-alive")
print(f"{'mode':7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'bytes':>9} | server ms/request: "
      f"{'total':>6} {'queue':>6} {'input':>6} {'infer':>6} {'output':>7}")
for r in res:
    s = r["server_ms"]
    print(f"{r['mode']:7} {r['rps']:7.1f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['bytes']:9d} | "
          f"{'':18}{s['success']:6.2f} {s['queue']:6.2f} {s['compute_input']:6.2f} "
          f"{s['compute_infer']:6.2f} {s['compute_output']:7.2f}")
j, b = res
print(f"binary/JSON: {b['rps'] / j['rps']:.2f}x requests/s, server time per request "
      f"{j['server_ms']['success'] / b['server_ms']['success']:.2f}x lower, rendering "
      f"{j['server_ms']['compute_output'] / max(1e-9, b['server_ms']['compute_output']):.0f}x lower, "
      f"{j['bytes'] / b['bytes']:.2f}x fewer bytes")
