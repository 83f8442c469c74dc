"""A model host's decode step, sketched: two micro-batches pipelined across the layers.

Each layer of a (toy) model projects the hidden state to q and the new KV row, has the service attend,
and projects the attention output back. With two micro-batches, A and B, the host computes B's
projections while A's attention runs on the service and the other way round, so neither waits idle:

    layer l:  submit A(l) ... [host: pre B(l)] submit B(l) ... wait A(l), [host: post A(l), pre A(l+1)]
              submit A(l+1) ... wait B(l), [host: post B(l)] ...

Both schedules run (one micro-batch after the other, then pipelined) and the step times are printed.
With --check the last attention output of micro-batch A is compared with the float64 reference.

    python3 model_host.py --address localhost:50051 --decode-port 50052 --steps 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flashmla_client import FlashMlaClient, KvUpload, float32_to_bf16, mla_decode_reference, random_bf16
from flashmla_client.reference import relative_error

HIDDEN = 256


class ToyModel:
    """Random projections per layer: hidden -> q [h_q, 576] and the new KV row [576]; attention [h_q, 512] -> hidden."""

    def __init__(self, rng, layers: int, heads: int):
        self.heads = heads
        self.w_q = [rng.standard_normal((HIDDEN, heads * 576), dtype=np.float32) / 16 for _ in range(layers)]
        self.w_kv = [rng.standard_normal((HIDDEN, 576), dtype=np.float32) / 16 for _ in range(layers)]
        self.w_o = [rng.standard_normal((heads * 512, HIDDEN), dtype=np.float32) / 64 for _ in range(layers)]

    def before_attention(self, x: np.ndarray, layer: int):
        b = x.shape[0]
        x = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))  # RMS norm, as real layers have
        q = float32_to_bf16(x @ self.w_q[layer]).reshape(b, 1, self.heads, 576)
        kv = float32_to_bf16(x @ self.w_kv[layer]).reshape(b, 1, 576)
        return q, kv

    def after_attention(self, x: np.ndarray, layer: int, output) -> np.ndarray:
        attention = output.out_float32().reshape(x.shape[0], self.heads * 512)
        return x + attention @ self.w_o[layer]


def step_one_after_the_other(stream, model, layers, batches, states):
    for name, sequences in batches.items():
        for layer in range(layers):
            q, kv = model.before_attention(states[name], layer)
            states[name] = model.after_attention(states[name], layer, stream.decode(layer, sequences, q, kv))


def step_pipelined(stream, model, layers, batches, states):
    """Two micro-batches in flight: one's host work overlaps the other's attention on the service.
    Returns micro-batch A's last attention: (layer, q, output)."""
    a, b = batches["A"], batches["B"]
    q_a, kv_a = model.before_attention(states["A"], 0)
    pending_a = stream.submit(0, a, q_a, kv_a)
    for layer in range(layers):
        q_b, kv_b = model.before_attention(states["B"], layer)
        pending_b = stream.submit(layer, b, q_b, kv_b)
        output_a = pending_a.result()
        states["A"] = model.after_attention(states["A"], layer, output_a)
        if layer + 1 < layers:
            q_a, kv_a = model.before_attention(states["A"], layer + 1)
            pending_a = stream.submit(layer + 1, a, q_a, kv_a)
        states["B"] = model.after_attention(states["B"], layer, pending_b.result())
    return layers - 1, q_a, output_a


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--decode-port", type=int, default=50052)
    parser.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--context", type=int, default=256, help="prefilled tokens per sequence")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with FlashMlaClient(args.address, decode_port=args.decode_port) as client:
        layers = client.get_config().num_layers
        model = ToyModel(rng, layers, args.heads)
        batches = {name: [client.create_sequence() for _ in range(args.batch)] for name in ("A", "B")}
        prompt = random_bf16(rng, (args.context, 576))
        client.append_kv(KvUpload(s, layer, prompt) for ids in batches.values() for s in ids for layer in range(layers))
        states = {name: rng.standard_normal((args.batch, HIDDEN), dtype=np.float32) for name in batches}
        last = None
        try:
            with client.open_decode_stream(max_in_flight=2) as stream:
                for schedule in ("one after the other", "pipelined"):
                    times = []
                    for _ in range(args.steps):
                        start = time.perf_counter()
                        if schedule == "pipelined":
                            last = step_pipelined(stream, model, layers, batches, states)
                        else:
                            step_one_after_the_other(stream, model, layers, batches, states)
                        times.append(time.perf_counter() - start)
                    print(f"{schedule}: {1e3 * float(np.median(times)):.1f} ms per step "
                          f"({layers} layers, 2 micro-batches of {args.batch}, h_q {args.heads})")
            if args.check:
                layer, q, out = last
                rows = [client.read_kv(s, layer) for s in batches["A"]]
                expected_out, expected_lse = mla_decode_reference(q, rows)
                error = max(relative_error(out.out_float32(), expected_out), relative_error(out.lse, expected_lse))
                print(f"last attention of micro-batch A, layer {layer}: relative error {error:.2e} against float64")
                if error >= 1e-2:
                    return 1
        finally:
            for ids in batches.values():
                for s in ids:
                    client.free_sequence(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
