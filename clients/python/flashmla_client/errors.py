"""Failures as one exception type that carries the gRPC status code."""

from __future__ import annotations

import grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class FlashMlaError(Exception):
    """A call or a request that failed: ``code`` is the ``grpc.StatusCode``, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "FlashMlaError":
        # Every RpcError grpcio raises for a call is also a grpc.Call with code() and details().
        return cls(error.code(), error.details() or "")

    @classmethod
    def from_status(cls, status) -> "FlashMlaError":
        """From a ``google.rpc.Status`` (a failed request inside a Decode stream)."""
        return cls(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message)
