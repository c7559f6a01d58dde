"""Client side of bench/sequences.sh: streams long token inputs to a running `balsa serve`
in chunks, the three ways a client can, and compares them in one run:
  sequence  the server keeps the LSTM state (sequence_id, sequence_start, sequence_end);
  state     the client carries it (initial_state in, return_state out, as JSON);
  prefix    a stateless client re-sends everything so far with each chunk.
Each of CLIENTS threads streams its own input of CHUNKS x TOKENS ids over one kept-alive
connection; every chunk's answer is the top 5 of the model's output after it. Reports per
mode: chunks/s over all clients, p50/p99 latency of a chunk, bytes sent and received per
chunk; the ratios of sequence against the other two; and whether the three agree (the
last chunk's top-5 indices of every client). Standard library only.
Usage: python3 bench/sequences.py PORT VOCAB [--clients 1,8] [--chunks 40] [--tokens 5]
       [--rounds 3]"""
import argparse
import http.client
import json
import random
import statistics
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("vocab", type=int)
p.add_argument("--clients", default="1,8")
p.add_argument("--chunks", type=int, default=40)
p.add_argument("--tokens", type=int, default=5)
p.add_argument("--rounds", type=int, default=3)
a = p.parse_args()


def stream(mode, cid, tokens, out):
    """One client's input, chunk by chunk; appends (latency s, sent, received) per chunk to
    out["chunks"] and puts the last answer's top-5 indices in out["last"]."""
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
    state, sent_ids = None, []
    sid = f"bench-{mode}-{cid}-{time.monotonic_ns()}"
    for k in range(a.chunks):
        chunk = tokens[k * a.tokens:(k + 1) * a.tokens]
        sent_ids += chunk
        body = {"top_k": 5}
        if mode == "sequence":
            body.update(inputs=[chunk], sequence_id=sid, sequence_start=k == 0,
                        sequence_end=k == a.chunks - 1)
        elif mode == "state":
            body.update(inputs=[chunk], initial_state=[state], return_state=True)
        else:
            body.update(inputs=[sent_ids])
        data = json.dumps(body).encode()
        t0 = time.perf_counter()
        conn.request("POST", "/infer", data, {"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        answer = json.loads(raw)
        if r.status != 200:
            raise SystemExit(f"{mode}: HTTP {r.status}: {raw[:200]!r}")
        if mode == "state":
            state = answer["states"][0]
        out["chunks"].append((time.perf_counter() - t0, len(data), len(raw)))
        out["last"] = answer["outputs"][0]["indices"]
    conn.close()


def run(mode, n, inputs):
    outs = [{"chunks": []} for _ in range(n)]
    th = [threading.Thread(target=stream, args=(mode, i, inputs[i], outs[i])) for i in range(n)]
    t0 = time.perf_counter()
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(c[0] for o in outs for c in o["chunks"])
    if len(lat) != n * a.chunks:
        raise SystemExit(f"{mode}: a client failed")
    return {"rate": len(lat) / wall, "p50": lat[len(lat) // 2] * 1e3,
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
            "up": statistics.mean(c[1] for o in outs for c in o["chunks"]),
            "down": statistics.mean(c[2] for o in outs for c in o["chunks"]),
            "last": [o["last"] for o in outs]}


modes = ("sequence", "state", "prefix")
rng = random.Random(5)
print(f"{a.chunks} chunks of {a.tokens} tokens per client ({a.chunks * a.tokens} tokens), "
      f"top 5 after each chunk; {a.rounds} rounds, the modes alternating; medians")
print("| clients | mode | chunks/s | p50 ms | p99 ms | bytes sent / chunk | bytes received / chunk |"
      " sequence's chunks/s over this |")
print("|---|---|---|---|---|---|---|---|")
agree = True
for n in [int(c) for c in a.clients.split(",")]:
    inputs = [[rng.randrange(a.vocab) for _ in range(a.chunks * a.tokens)] for _ in range(n)]
    res = {m: [] for m in modes}
    for _ in range(a.rounds):
        for m in modes:
            res[m].append(run(m, n, inputs))
    med = {m: {k: statistics.median(r[k] for r in res[m]) for k in ("rate", "p50", "p99", "up",
                                                                    "down")} for m in modes}
    for m in modes:
        ratios = [s["rate"] / r["rate"] for s, r in zip(res["sequence"], res[m])]
        print(f"| {n} | {m} | {med[m]['rate']:.0f} | {med[m]['p50']:.2f} | {med[m]['p99']:.2f} | "
              f"{med[m]['up']:.0f} | {med[m]['down']:.0f} | "
              + ("" if m == "sequence" else
                 f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})")
              + " |")
        agree &= all(r["last"] == res["sequence"][0]["last"] for r in res[m])
print(f"\nanswers agree across the three modes (last chunk's top 5, every client): "
      f"{'yes' if agree else 'NO'}")
raise SystemExit(0 if agree else 1)
