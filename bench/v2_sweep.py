"""Concurrency sweep of KServe v2 inference against a running `balsa serve`, reported the
way NVIDIA's perf_analyzer reports it: client throughput and p50/p90/p95/p99 latency, and
the server-side breakdown from the statistics extension (queue, compute input, compute
infer, compute output per request; sequences per engine step). The load comes from wrk
(C, keep-alive connections, closed loop: each connection keeps one request outstanding,
as perf_analyzer's concurrency mode does), driving POST /v2/models/MODEL/infer with a
JSON body of one 35-token sequence. Used by bench/perf_analyzer.sh when perf_analyzer
itself is not installed. Usage: python3 bench/v2_sweep.py PORT MODEL VOCAB SECONDS C1 C2 ..."""
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

port, model, vocab, secs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
levels = [int(c) for c in sys.argv[5:]]
steps = 35
body = json.dumps({"inputs": [{"name": "tokens", "shape": [1, steps], "datatype": "INT32",
                               "data": [(i * 37) % vocab for i in range(steps)]}]})
lua = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%f %%f %%f %%f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99)))
end
""" % body


def stats():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats") as r:
        m = json.loads(r.read())["model_stats"][0]
    s = m["inference_stats"]
    out = {k: (s[k]["count"], s[k]["ns"]) for k in ("success", "fail", "queue", "compute_input",
                                                   "compute_infer", "compute_output")}
    out["inference_count"], out["execution_count"] = m["inference_count"], m["execution_count"]
    return out


with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
    f.write(lua)
    script = f.name
url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
subprocess.run(["wrk", "-t1", "-c1", "-d2s", "-s", script, url], capture_output=True, check=True)
print(f"model {model}: POST /v2/models/{model}/infer, 1 sequence of {steps} tokens, JSON tensors, "
      f"{secs} s per level")
print(f"{'conc':>4} {'infer/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} | "
      f"server per request (ms): {'queue':>6} {'c.input':>7} {'c.infer':>7} {'c.output':>8} | seqs/step")
for c in levels:
    before = stats()
    p = subprocess.run(["wrk", f"-t{min(2, c)}", f"-c{c}", f"-d{secs}s", "--timeout", "30s", "-s", script, url],
                       capture_output=True, text=True, check=True)
    after = stats()
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")][0].split()
    n, errors, dur_us = int(line[1]), int(line[2]), int(line[3])
    p50, p90, p95, p99 = (float(x) / 1e3 for x in line[4:8])
    ok = after["success"][0] - before["success"][0]

    def per(k):
        return (after[k][1] - before[k][1]) / max(1, after[k][0] - before[k][0]) / 1e6

    seqs = after["inference_count"] - before["inference_count"]
    execs = after["execution_count"] - before["execution_count"]
    print(f"{c:4d} {n / (dur_us / 1e6):8.1f} {p50:7.2f} {p90:7.2f} {p95:7.2f} {p99:7.2f} {errors:6d} | "
          f"{'':24}{per('queue'):6.2f} {per('compute_input'):7.2f} {per('compute_infer'):7.2f} "
          f"{per('compute_output'):8.3f} | {seqs * steps / max(1, execs):.1f}  ({ok} ok)")
os.unlink(script)
