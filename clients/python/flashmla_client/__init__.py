"""Python client of the FlashMLA service (``flashmla.v1``): numpy in and out, bf16 as uint16 bits.

    from flashmla_client import FlashMlaClient, KvUpload, float32_to_bf16
    with FlashMlaClient("localhost:50051", decode_port=50052) as client:
        seq = client.create_sequence()
        ...

The contract (``proto/flashmla/v1/``) is the manual; this package is a thin typed layer over grpcio.
"""

from .bf16 import bf16_to_float32, float32_to_bf16, random_bf16
from .client import CacheStats, FlashMlaClient, ForkResult, KvUpload, SequenceInfo, ServiceConfig
from .decode import DecodeOutput, DecodeStream, DecodeTimings
from .errors import FlashMlaError
from .reference import mla_decode_reference

__all__ = [
    "FlashMlaClient", "KvUpload", "ServiceConfig", "SequenceInfo", "CacheStats", "ForkResult",
    "DecodeStream", "DecodeOutput", "DecodeTimings", "FlashMlaError",
    "bf16_to_float32", "float32_to_bf16", "random_bf16", "mla_decode_reference",
]
