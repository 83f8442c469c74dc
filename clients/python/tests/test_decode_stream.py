"""DecodeStream against a stand-in for grpcio's stream-stream call that answers out of order."""

import threading

import grpc
import numpy as np
import pytest

from flashmla_client import FlashMlaError
from flashmla_client._contract import DecodeResponse
from flashmla_client.decode import DecodeStream
from flashmla_client.tensors import to_tensor


def answer(request):
    """A response whose out is full of the request's id (as bf16 bits) and whose lse is the id."""
    b, s_q, h_q = len(request.sequence_ids), request.s_q, request.h_q
    response = DecodeResponse(request_id=request.request_id)
    response.out.CopyFrom(to_tensor(np.full((b, s_q, h_q, 512), request.request_id, np.uint16), 1))
    response.lse.CopyFrom(to_tensor(np.full((b, h_q, s_q), request.request_id, np.float32), 2))
    response.timings.batch_requests = 1
    return response


class ReversingCall:
    """Reads ``group`` requests, then answers them last first; ``fail_with`` ends the call with that code."""

    def __init__(self, group: int, fail_with: grpc.StatusCode | None = None):
        self.group = group
        self.fail_with = fail_with
        self.received = []

    def __call__(self, requests, timeout=None, metadata=None, compression=None):
        self.requests = requests
        return self._responses()

    def _responses(self):
        batch = []
        for request in self.requests:
            self.received.append(request)
            if request.sequence_ids[0] == 404:
                batch.append(DecodeResponse(request_id=request.request_id, error={"code": 5, "message": "no such sequence"}))
            else:
                batch.append(answer(request))
            if len(batch) == self.group:
                if self.fail_with is not None:
                    raise FakeRpcError(self.fail_with)
                yield from reversed(batch)
                batch = []
        yield from reversed(batch)

    def cancel(self):
        pass


class FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "ended by the test"


def q_of(b=1, s_q=1, h_q=2):
    return np.zeros((b, s_q, h_q, 576), np.uint16)


def test_futures_resolve_by_request_id_when_answers_come_in_reverse_order():
    call = ReversingCall(group=4)
    with DecodeStream(call, max_in_flight=4) as stream:
        futures = [stream.submit(0, [1, 2], q_of(b=2, h_q=3)) for _ in range(8)]
        outputs = [f.result(5) for f in futures]
    assert [o.request_id for o in outputs] == [r.request_id for r in call.received]
    for output in outputs:
        assert output.out.shape == (2, 1, 3, 512) and (output.out == output.request_id).all()
        assert output.lse.shape == (2, 3, 1) and (output.lse == output.request_id).all()


def test_a_failed_request_fails_its_future_with_the_code_and_the_others_succeed():
    with DecodeStream(ReversingCall(group=3), max_in_flight=3) as stream:
        good, bad, other = stream.submit(0, [1], q_of()), stream.submit(0, [404], q_of()), stream.submit(0, [2], q_of())
        assert good.result(5).request_id == 1 and other.result(5).request_id == 3
        with pytest.raises(FlashMlaError) as failure:
            bad.result(5)
    assert failure.value.code == grpc.StatusCode.NOT_FOUND and failure.value.details == "no such sequence"


def test_a_fault_of_the_stream_fails_every_outstanding_future_with_its_code():
    stream = DecodeStream(ReversingCall(group=2, fail_with=grpc.StatusCode.UNAVAILABLE), max_in_flight=2)
    futures = [stream.submit(0, [1], q_of()), stream.submit(0, [2], q_of())]
    for future in futures:
        with pytest.raises(FlashMlaError) as failure:
            future.result(5)
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(FlashMlaError):
        stream.submit(0, [3], q_of())


class GatedCall:
    """Answers each request in order, one for each release of ``gate``."""

    def __init__(self):
        self.gate = threading.Semaphore(0)

    def __call__(self, requests, timeout=None, metadata=None, compression=None):
        return self._responses(requests)

    def _responses(self, requests):
        for request in requests:
            self.gate.acquire()
            yield answer(request)

    def cancel(self):
        pass


def test_submit_waits_while_max_in_flight_requests_are_unanswered():
    call = GatedCall()
    stream = DecodeStream(call, max_in_flight=2)
    first = stream.submit(0, [1], q_of())
    stream.submit(0, [2], q_of())
    third = []
    sender = threading.Thread(target=lambda: third.append(stream.submit(0, [3], q_of())))
    sender.start()
    sender.join(0.3)
    assert sender.is_alive() and stream.in_flight == 2
    call.gate.release()  # the first answer frees a place
    sender.join(5)
    assert not sender.is_alive() and first.result(5).request_id == 1 and stream.in_flight == 2
    call.gate.release(2)
    assert third[0].result(5).request_id == 3
    stream.close(5)


def test_an_id_already_in_flight_is_refused():
    stream = DecodeStream(ReversingCall(group=2), max_in_flight=4)
    stream.submit(0, [1], q_of(), request_id=7)
    with pytest.raises(ValueError):
        stream.submit(0, [1], q_of(), request_id=7)
    stream.submit(0, [1], q_of(), request_id=8).result(5)


def test_q_must_be_four_dimensional_bf16_bits():
    stream = DecodeStream(ReversingCall(group=1), max_in_flight=1)
    with pytest.raises(TypeError):
        stream.submit(0, [1], np.zeros((1, 1, 2, 576), np.float32))
    with pytest.raises(ValueError):
        stream.submit(0, [1], np.zeros((1, 2, 576), np.uint16))
    assert stream.decode(0, [1], q_of()).request_id >= 1
    stream.close()
