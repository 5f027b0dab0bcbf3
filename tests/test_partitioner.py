"""Output placement: our key hash must place records where every other Kafka client would."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from consumer.kafka import murmur2

# Expected values of the Java client's Utils.murmur2 (signed ints) from Kafka's UtilsTest.
JAVA_CLIENT = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "signed"), JAVA_CLIENT)
def test_murmur2_matches_the_java_client(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed % 2**32


@given(st.binary(max_size=64))
def test_murmur2_agrees_with_aiokafka_on_any_bytes(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


def test_murmur2_covers_every_tail_length() -> None:
    for length in range(13):
        key = bytes(range(250 - length, 250))
        assert murmur2(key) == aiokafka_murmur2(key), length
