import numpy as np

from flashmla_client import bf16_to_float32, float32_to_bf16


def test_bf16_is_the_upper_half_of_float32():
    bits = np.array([0x3F80, 0xC000, 0x0000, 0x8000, 0x7F80, 0x0001], dtype=np.uint16)
    values = bf16_to_float32(bits)
    assert values.dtype == np.float32
    assert list(values[:5]) == [1.0, -2.0, 0.0, -0.0, np.inf]
    assert values.view(np.uint32)[5] == 0x00010000


def test_float32_rounds_to_nearest_even():
    def from_bits(b):
        return np.array([b], dtype=np.uint32).view(np.float32)

    assert float32_to_bf16(from_bits(0x3F808000))[0] == 0x3F80  # halfway, even stays
    assert float32_to_bf16(from_bits(0x3F818000))[0] == 0x3F82  # halfway, odd rounds up
    assert float32_to_bf16(from_bits(0x3F808001))[0] == 0x3F81  # past halfway
    assert float32_to_bf16(from_bits(0x3F807FFF))[0] == 0x3F80  # short of halfway
    assert float32_to_bf16(from_bits(0x7F7FFFFF))[0] == 0x7F80  # the largest float rounds to infinity


def test_nan_stays_a_quiet_nan_with_its_sign():
    nan = np.array([0x7F800001, 0xFF800001], dtype=np.uint32).view(np.float32)
    bits = float32_to_bf16(nan)
    assert list(bits) == [0x7FC0, 0xFFC0]
    assert np.isnan(bf16_to_float32(bits)).all()


def test_every_bf16_value_survives_a_round_trip():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(bf16_to_float32(bits))
    assert np.array_equal(float32_to_bf16(bf16_to_float32(bits))[finite], bits[finite])


def test_bf16_to_float32_refuses_other_dtypes():
    try:
        bf16_to_float32(np.zeros(3, dtype=np.int16))
    except TypeError as error:
        assert "uint16" in str(error)
    else:
        raise AssertionError("int16 was taken for bf16 bits")
