"""A decode loop: one sequence, a prefill of every layer, then 8 steps of one new token per layer.

    python3 decode_loop.py [GRPC_ADDRESS [DATA_PLANE_PORT]]     (default localhost:50051 50052)
"""

import sys

import numpy as np

from flashmla_client import FlashMlaClient, KvUpload, random_bf16

address = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
decode_port = int(sys.argv[2]) if len(sys.argv) > 2 else 50052
rng = np.random.default_rng(0)
with FlashMlaClient(address, decode_port=decode_port) as client:
    layers = client.get_config().num_layers
    seq = client.create_sequence()
    client.append_kv([KvUpload(seq, layer, random_bf16(rng, (100, 576))) for layer in range(layers)])
    with client.open_decode_stream() as stream:
        for step in range(8):
            for layer in range(layers):  # q: bf16 [b, s_q, h_q, 576]; kv: the new token's row, appended first
                out = stream.decode(layer, [seq], random_bf16(rng, (1, 1, 16, 576)), kv=random_bf16(rng, (1, 1, 576)))
            print(f"step {step}: out {out.out.shape} lse {out.lse.shape}, server compute {out.timings.compute_us:.0f} us")
    print("lengths", client.get_sequence(seq).layer_lengths)
    client.free_sequence(seq)
