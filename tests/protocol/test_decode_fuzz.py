"""Whatever arrives, decode returns a valid message or raises ProtocolError, never anything else."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asd_protocol import MESSAGE_TYPES, ProtocolError, decode, encode
from asd_protocol.frames import FrameLimits

from .examples import all_examples

EXAMPLES = [[bytes(f) for f in encode(e)] for e in all_examples()]
LIMITS = FrameLimits(max_message_bytes=1 << 20)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def check(frames):
    try:
        msg = decode(frames, limits=LIMITS)
    except ProtocolError as exc:
        assert exc.code and exc.message
        return
    # Whatever decodes is itself valid: it re-encodes and decodes to the same type.
    assert type(decode(encode(msg))) is type(msg)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes(frames):
    check(frames)


@settings(max_examples=300)
@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.dictionaries(st.text(max_size=16), json_values, max_size=8),
       st.dictionaries(st.sampled_from(["msg_id", "job_id", "parent_id", "timestamp", "version"]), json_values),
       st.lists(st.binary(max_size=48), max_size=3))
def test_arbitrary_json_for_each_type(msg_type, content, header_overrides, buffers):
    header = {"protocol": "asd", "version": "2.0", "msg_type": msg_type, "msg_id": "m1", "job_id": "j1",
              "parent_id": None, "timestamp": "t"}
    header.update(header_overrides)
    check([json.dumps(header).encode(), json.dumps(content).encode(), *buffers])


@settings(max_examples=500)
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_valid_messages(frames, data):
    frames = list(frames)
    content = json.loads(frames[1])
    if content:
        key = data.draw(st.sampled_from(sorted(content)))
        content[key] = data.draw(json_values | st.fixed_dictionaries(
            {"dtype": st.sampled_from(["uint8", "uint32", "float32", "float64", "object"]),
             "shape": st.lists(st.integers(-2, 70), max_size=4), "buffer": st.integers(-1, 3)}))
    frames[1] = json.dumps(content).encode()
    if len(frames) > 2 and data.draw(st.booleans()):
        i = data.draw(st.integers(2, len(frames) - 1))
        frames[i] = data.draw(st.binary(max_size=200))
    check(frames)


@settings(max_examples=200)
@given(st.sampled_from(EXAMPLES), st.integers(0, 1), st.binary(min_size=1, max_size=8), st.integers(0, 400))
def test_corrupted_json_bytes(frames, which, junk, at):
    frames = list(frames)
    raw = frames[which]
    at = min(at, len(raw))
    frames[which] = raw[:at] + junk + raw[at + len(junk):]
    check(frames)


def test_deeply_nested_json_is_a_protocol_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    header = b'{"protocol":"asd","version":"2.0","msg_type":"hello","msg_id":"a","timestamp":"t"}'
    for frames in ([deep, b"{}"], [header, b'{"client":' + deep + b"}"]):
        with pytest.raises(ProtocolError):
            decode(frames)


@pytest.mark.parametrize("content", [b'{"spec":{"prompt":"x","guidance":{"cfg":NaN}}}',
                                     b'{"spec":{"prompt":"x","guidance":{"cfg":1e999}}}',
                                     b'{"spec":{"prompt":"x","seed":' + b"9" * 5000 + b"}}"])
def test_nan_and_huge_numbers_are_refused(content):
    header = b'{"protocol":"asd","version":"2.0","msg_type":"submit","msg_id":"a","timestamp":"t"}'
    with pytest.raises(ProtocolError) as info:
        decode([header, content])
    assert info.value.code in ("bad_frames", "invalid_field")
