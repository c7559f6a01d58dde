"""Dense LSTM baselines for `balsa bench lstm`: PyTorch nn.LSTM and ONNX Runtime on the
same shapes (2 layers, hidden 1500 and 650, 35 steps, batch 1 and 16, vector input of
width hidden, inference only). bench/lstm.sh runs both and balsa in one go; run alone:

    OPENBLAS_CORETYPE=Haswell OMP_WAIT_POLICY=passive \\
        /usr/bin/python3 bench/lstm_baselines.py torch --threads 2 --onnx-dir /tmp/onnx
    python3 bench/lstm_baselines.py ort --threads 2 --onnx-dir /tmp/onnx

Mode "torch" needs Debian's python3-torch (/usr/bin/python3); it times nn.LSTM and, with
--onnx-dir, exports each model with torch.onnx.export(opset_version=14). Mode "ort" needs
onnxruntime (pip, in the other python3) and times the exported files. Each prints lines
"result lstm hidden=H batch=B steps=S <name>_ms=T" (median of the runs).
"""
import argparse
import os
import statistics
import sys
import time


def timed(fn, min_time):
    fn()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_torch(a):
    import torch
    torch.set_num_threads(a.threads)
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(default)')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}")
    for h in a.hidden:
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(h, h, num_layers=a.layers, batch_first=True).eval()
        for b in a.batch:
            x = torch.randn(b, a.steps, h)
            with torch.no_grad():
                t = timed(lambda: lstm(x), a.min_time)
            print(f"result lstm hidden={h} batch={b} steps={a.steps} pytorch_ms={t * 1e3:.4f}",
                  flush=True)
        if a.onnx_dir:
            os.makedirs(a.onnx_dir, exist_ok=True)
            path = os.path.join(a.onnx_dir, f"lstm_{h}.onnx")
            with torch.no_grad():
                torch.onnx.export(lstm, torch.randn(1, a.steps, h), path, opset_version=14,
                                  input_names=["x"], output_names=["y", "h", "c"],
                                  dynamic_axes={"x": {0: "batch"}})


def run_ort(a):
    import numpy as np
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}, {a.threads} intra-op threads")
    for h in a.hidden:
        path = os.path.join(a.onnx_dir, f"lstm_{h}.onnx")
        if not os.path.exists(path):
            sys.exit(f"{path} missing: run the torch mode with --onnx-dir first")
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for b in a.batch:
            x = np.random.default_rng(0).standard_normal((b, a.steps, h), dtype=np.float32)
            t = timed(lambda: sess.run(None, {"x": x}), a.min_time)
            print(f"result lstm hidden={h} batch={b} steps={a.steps} onnxruntime_ms={t * 1e3:.4f}",
                  flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["torch", "ort"])
    p.add_argument("--hidden", default="1500,650")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--onnx-dir")
    a = p.parse_args()
    a.hidden = [int(v) for v in a.hidden.split(",")]
    a.batch = [int(v) for v in a.batch.split(",")]
    if a.mode == "ort" and not a.onnx_dir:
        sys.exit("ort mode needs --onnx-dir")
    (run_torch if a.mode == "torch" else run_ort)(a)


if __name__ == "__main__":
    main()
