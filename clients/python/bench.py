"""Decode throughput of the Python client against a running server: payload GB/s and latency per call.

For every b x h_q x s_k x connections x decode port: one Decode stream per connection keeps --inflight
requests outstanding (s_q 1, no append, layer 0, the same sequences for every request, as the C#
client's `flashmla bench-matrix` does), for --seconds after --warmup. up = q bytes sent, down = out + lse
bytes received (GB = 1e9 B); p50/p99 = from submit to answer of each request; compute = the server's
backend time per call (timings.compute_us). Prints a markdown table; --out also writes it with the date,
the machine and the versions.

    python3 bench.py --address localhost:50051 --decode-port 50052 --batch 32,128 --heads 16,128 \\
        --context 4096 --connections 1,4 --seconds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import threading
import time

import grpc
import numpy as np

from flashmla_client import FlashMlaClient, KvUpload, random_bf16

COLUMNS = ["b", "h_q", "s_k", "conns", "decode port", "steps/s", "up GB/s", "down GB/s", "p50 ms", "p99 ms", "compute ms/call"]


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def measure(args, decode_port, sequences, b, heads, context, connections, rng) -> list[str]:
    q = random_bf16(rng, (b, 1, heads, 576))
    ids = sequences[:b]
    latencies, computes, down = [], [], [0]
    measuring = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    with FlashMlaClient(args.address, decode_port=decode_port, connections=connections) as client:
        streams = [client.open_decode_stream(max_in_flight=args.inflight) for _ in range(connections)]

        def record(future, started):
            done = time.perf_counter()
            if future.exception() is None and measuring.is_set():
                output = future.result()
                with lock:
                    latencies.append(done - started)
                    computes.append(output.timings.compute_us)
                    down[0] += output.payload_bytes

        def drive(stream):
            while not stop.is_set():
                started = time.perf_counter()
                future = stream.submit(0, ids, q)  # waits while --inflight requests are outstanding
                future.add_done_callback(lambda f, started=started: record(f, started))

        workers = [threading.Thread(target=drive, args=(s,), daemon=True) for s in streams]
        for worker in workers:
            worker.start()
        time.sleep(args.warmup)
        measuring.set()
        began = time.perf_counter()
        time.sleep(args.seconds)
        measuring.clear()
        elapsed = time.perf_counter() - began
        stop.set()
        for worker in workers:
            worker.join()
        for stream in streams:
            stream.close()

    steps = len(latencies)
    ordered = np.sort(np.array(latencies)) if steps else np.array([np.nan])
    percentile = lambda p: 1e3 * ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return [str(b), str(heads), str(context), str(connections), "data plane" if decode_port else "gRPC",
            f"{steps / elapsed:.0f}", f"{steps * q.nbytes / elapsed / 1e9:.3f}", f"{down[0] / elapsed / 1e9:.3f}",
            f"{percentile(0.5):.2f}", f"{percentile(0.99):.2f}", f"{np.mean(computes) / 1e3 if computes else np.nan:.3f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="localhost:50051", help="the gRPC port (cache calls)")
    parser.add_argument("--decode-port", type=int, default=50052, help="the data-plane port")
    parser.add_argument("--decode", default="dataplane,grpc", help="ports to decode through: dataplane, grpc")
    parser.add_argument("--batch", type=int_list, default=[32, 128])
    parser.add_argument("--heads", type=int_list, default=[16, 128])
    parser.add_argument("--context", type=int_list, default=[4096], help="tokens per sequence (s_k)")
    parser.add_argument("--connections", type=int_list, default=[1])
    parser.add_argument("--inflight", type=int, default=4, help="requests in flight per stream")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    ports = {"dataplane": args.decode_port, "grpc": None}
    targets = [ports[name.strip()] for name in args.decode.split(",")]

    rng = np.random.default_rng(7)
    rows = []
    with FlashMlaClient(args.address) as admin:
        config = admin.get_config()
        print(f"bench.py against {config.backend} ({config.device}): {args.inflight} in flight per stream, "
              f"{args.seconds:.1f} s per row, grpcio {grpc.__version__}")
        for context in args.context:
            sequences = [admin.create_sequence() for _ in range(max(args.batch))]
            try:
                prompt = random_bf16(rng, (context, 576))
                started = time.perf_counter()
                admin.append_kv(KvUpload(s, 0, prompt) for s in sequences)
                print(f"prefilled {len(sequences)} sequences x {context} tokens in {time.perf_counter() - started:.1f} s")
                for b in args.batch:
                    for heads in args.heads:
                        for connections in args.connections:
                            for port in targets:
                                rows.append(measure(args, port, sequences, b, heads, context, connections, rng))
                                print("  ".join(f"{k} {v}" for k, v in zip(COLUMNS, rows[-1])), flush=True)
            finally:
                for s in sequences:
                    admin.free_sequence(s)

    table = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n".join(table))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.out, "w") as out:
            out.write(f"# Python client decode throughput ({stamp})\n\n"
                      f"Machine: {platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}), Python "
                      f"{platform.python_version()}, grpcio {grpc.__version__}, numpy {np.__version__}. Server: "
                      f"{config.backend} ({config.device}) at {args.address}. `clients/python/bench.py`, "
                      f"{args.inflight} requests in flight per stream, one stream per connection, s_q 1, no append, "
                      f"{args.warmup:.1f} s warm-up, {args.seconds:.1f} s per row. up = q bytes sent, down = out + lse "
                      f"bytes received (GB = 1e9 B), p50/p99 from submit to answer, compute = the server's "
                      f"compute_us per call.\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
