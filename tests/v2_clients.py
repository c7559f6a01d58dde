"""NVIDIA's tritonclient.http (the KServe v2 client, unmodified, from PyPI) against a
running `balsa serve`: server and model metadata, model config, readiness, inference with
JSON tensors and with binary tensors (inputs and outputs), lengths, "all" outputs, top_k,
statistics, compressed requests and answers, the model repository index, load_model
and unload_model's refusal, and a sequence (sequence_id, sequence_start, sequence_end)
sent in pieces. Every answer is compared with balsa's native POST /infer for
the same sequences. Run by tests/test_v2.c as:
python3 tests/v2_clients.py PORT MODEL VOCAB OUT.
Prints one line per check and exits 1 when any failed."""
import json
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

port, model, vocab, out_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
failed = 0


def check(ok, what):
    global failed
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failed += 1


def native_infer(seqs, output="last", top_k=None):
    body = {"model": model, "inputs": [list(map(int, s)) for s in seqs], "output": output}
    if top_k:
        body["top_k"] = top_k
    req = urllib.request.Request(f"http://127.0.0.1:{port}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["outputs"]


def close(a, b):
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        print(f"     shapes differ: {a.shape} vs {b.shape}")
        return False
    d = float(np.max(np.abs(a - b))) if a.size else 0.0
    if d > 1e-6:
        print(f"     max abs difference {d}")
    return d <= 1e-6


c = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
check(c.is_server_live(), "is_server_live")
check(c.is_server_ready(), "is_server_ready")
meta = c.get_server_metadata()
check(meta["name"] == "balsa" and "binary_tensor_data" in meta["extensions"]
      and "statistics" in meta["extensions"], f"get_server_metadata: {meta}")
check(c.is_model_ready(model), "is_model_ready")
check(c.is_model_ready(model, model_version="1"), "is_model_ready version 1")
try:
    c.is_model_ready(model, model_version="2")
    ok = not c.is_model_ready(model, model_version="2")
except InferenceServerException:
    ok = True
check(ok, "version 2 is not ready")
mm = c.get_model_metadata(model)
names = [i["name"] for i in mm["inputs"]]
check(names == ["tokens", "lengths"] and mm["inputs"][0]["datatype"] == "INT32"
      and mm["outputs"][0]["shape"] == [-1, out_size], f"get_model_metadata: {mm}")
cfg = c.get_model_config(model)
check(cfg["max_batch_size"] >= 1 and cfg["input"][0]["data_type"] == "TYPE_INT32"
      and "max_queue_delay_microseconds" in cfg["dynamic_batching"], f"get_model_config: {cfg}")
try:
    c.get_model_metadata("no_such_model")
    check(False, "unknown model raises")
except InferenceServerException as e:
    check("no model named" in str(e), f"unknown model raises: {e}")

rng = np.random.default_rng(7)
lens = np.array([7, 3, 12], dtype=np.int32)
steps = int(lens.max())
tokens = rng.integers(0, vocab, size=(3, steps), dtype=np.int32)
seqs = [tokens[i, :lens[i]] for i in range(3)]
want_last = native_infer(seqs)
want_all = native_infer(seqs, output="all")

for binary in (False, True):
    kind = "binary" if binary else "JSON"
    inp = httpclient.InferInput("tokens", list(tokens.shape), "INT32")
    inp.set_data_from_numpy(tokens, binary_data=binary)
    ln = httpclient.InferInput("lengths", [3], "INT32")
    ln.set_data_from_numpy(lens, binary_data=binary)
    outs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
    res = c.infer(model, [inp, ln], outputs=outs, request_id=f"req-{kind}")
    got = res.as_numpy("output")
    check(got is not None and got.dtype == np.float32 and close(got, want_last),
          f"infer {kind} tensors, last step == /infer")
    check(res.get_response()["id"] == f"req-{kind}", f"infer {kind}: id echoed")

    res = c.infer(model, [inp, ln], outputs=outs, parameters={"output": "all"})
    got = res.as_numpy("output")
    ok = got is not None and got.shape == (3, steps, out_size)
    for i in range(3):
        ok = ok and close(got[i, :lens[i]], want_all[i]) and not np.any(got[i, lens[i]:])
    check(ok, f"infer {kind} tensors, output all == /infer, padding rows zero")

    outs = [httpclient.InferRequestedOutput(n, binary_data=binary)
            for n in ("top_k_indices", "top_k_values")]
    res = c.infer(model, [inp, ln], outputs=outs, parameters={"top_k": 4})
    want_k = native_infer(seqs, top_k=4)
    idx, val = res.as_numpy("top_k_indices"), res.as_numpy("top_k_values")
    check(idx is not None and idx.dtype == np.int32 and idx.tolist() == [w["indices"] for w in want_k]
          and close(val, [w["values"] for w in want_k]), f"infer {kind} tensors, top_k == /infer")

# INT64 tokens, no lengths (every sequence full length), binary in, JSON out
full = rng.integers(0, vocab, size=(2, 5), dtype=np.int64)
inp = httpclient.InferInput("tokens", [2, 5], "INT64")
inp.set_data_from_numpy(full, binary_data=True)
res = c.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("output", binary_data=False)])
check(close(res.as_numpy("output"), native_infer([full[0], full[1]])), "infer INT64 binary tokens")

# Triton's request timeout (microseconds) is taken as the request's deadline
res = c.infer(model, [inp], timeout=10_000_000)
check(close(res.as_numpy("output"), native_infer([full[0], full[1]])),
      "infer with a timeout (10 s) == /infer")

# compressed requests and answers (tritonclient's request/response_compression_algorithm)
for alg in ("gzip", "deflate"):
    res = c.infer(model, [inp], request_compression_algorithm=alg,
                  response_compression_algorithm="gzip")
    check(close(res.as_numpy("output"), native_infer([full[0], full[1]])),
          f"infer with a {alg} request and a gzip answer == /infer")

# a client error comes back as InferenceServerException with balsa's message
bad = httpclient.InferInput("tokens", [1, 2], "INT32")
bad.set_data_from_numpy(np.array([[1, vocab]], dtype=np.int32), binary_data=False)
try:
    c.infer(model, [bad])
    check(False, "out-of-range token raises")
except InferenceServerException as e:
    check("out of range" in str(e), f"out-of-range token raises: {e}")

# Triton's model repository extension: the index, a reload of the model from its file
index = c.get_model_repository_index()
check(any(m["name"] == model and m["state"] == "READY" for m in index),
      f"get_model_repository_index: {index}")
c.load_model(model)
check(c.is_model_ready(model) and close(c.infer(model, [inp]).as_numpy("output"),
                                        native_infer([full[0], full[1]])),
      "load_model reloads the model, which serves the same answers")
try:
    c.unload_model(model)
    check(False, "unload_model raises")
except InferenceServerException as e:
    check("unload: not supported" in str(e), f"unload_model raises: {e}")

# Triton's sequence extension: one sequence in three requests (sequence_id, with
# sequence_start on the first and sequence_end on the last) answers what the whole does
check("sequence" in meta["extensions"] and "sequence(string_id)" in meta["extensions"],
      "get_server_metadata: the sequence extensions")
check(cfg.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0) > 0,
      "get_model_config: sequence_batching")
whole = rng.integers(0, vocab, size=10, dtype=np.int32)
want = native_infer([whole], output="all")[0]
for sid in (4242, "session-9"):
    got = []
    for i, (a, b) in enumerate(((0, 3), (3, 4), (4, 10))):
        piece = httpclient.InferInput("tokens", [1, b - a], "INT32")
        piece.set_data_from_numpy(whole[None, a:b], binary_data=True)
        res = c.infer(model, [piece], sequence_id=sid, sequence_start=i == 0,
                      sequence_end=i == 2, parameters={"output": "all"})
        got.append(res.as_numpy("output")[0])
    got = np.concatenate(got)
    d = float(np.max(np.abs(got - np.asarray(want, dtype=np.float32))))
    check(got.shape == (10, out_size) and d <= 1e-5 * max(1.0, float(np.max(np.abs(want)))),
          f"infer in a sequence ({sid!r}) of three requests == the whole sequence at once (max diff {d})")
    try:
        c.infer(model, [piece], sequence_id=sid)
        check(False, "a request of an ended sequence raises")
    except InferenceServerException as e:
        check("no such sequence is open" in str(e), f"a request of an ended sequence raises: {e}")

stats = c.get_inference_statistics(model)
ms = stats["model_stats"][0]
st = ms["inference_stats"]
check(ms["name"] == model and ms["inference_count"] >= 20 and ms["execution_count"] > 0
      and st["success"]["count"] >= 8 and st["fail"]["count"] >= 1
      and st["queue"]["count"] == st["success"]["count"]
      and st["compute_infer"]["ns"] > 0 and len(ms["batch_stats"]) >= 1,
      f"get_inference_statistics: {json.dumps(ms)[:300]}")
c.close()
print(f"v2_clients: {failed} failed")
sys.exit(1 if failed else 0)
