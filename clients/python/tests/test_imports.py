import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_importing_the_package_does_not_import_torch():
    code = "import sys, flashmla_client; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_the_contract_has_every_message_and_method_of_proto():
    from flashmla_client._contract import FLASHMLA

    kv_cache = ["GetConfig", "CreateSequence", "AppendKv", "ForkSequence", "TruncateSequence", "FreeSequence",
                "GetSequence", "ReadKv", "GetStats"]
    for name in kv_cache:
        assert FLASHMLA.method(_NoChannel(), "flashmla.v1.KvCache", name) == name
    assert FLASHMLA.method(_NoChannel(), "flashmla.v1.Decoder", "Decode") == "Decode"
    request = FLASHMLA.message("flashmla.v1.DecodeRequest")(request_id=3, s_q=1)
    assert FLASHMLA.message("flashmla.v1.DecodeRequest").FromString(request.SerializeToString()).request_id == 3


class _NoChannel:
    """Records which kind of multicallable the contract asks for."""

    def _kind(expected):
        def make(self, path, request_serializer, response_deserializer):
            name = path.rsplit("/", 1)[1]
            kinds = {"AppendKv": "stream_unary", "ReadKv": "unary_stream", "Decode": "stream_stream"}
            assert kinds.get(name, "unary_unary") == expected, path
            return name
        return make

    unary_unary = _kind("unary_unary")
    unary_stream = _kind("unary_stream")
    stream_unary = _kind("stream_unary")
    stream_stream = _kind("stream_stream")
