import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asd_protocol import MESSAGE_TYPES, ProtocolError, decode, encode
from asd_protocol import messages as m
from asd_protocol.fields import Array, spec_fields

from .examples import all_examples, mesh_arrays


def assert_same(a: m.Message, b: m.Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def test_every_type_has_an_example():
    assert {type(e).msg_type for e in all_examples()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", all_examples(), ids=lambda e: e.msg_type)
def test_round_trip(msg):
    frames = encode(msg)
    n_arrays = sum(1 for f, s in spec_fields(type(msg)) if isinstance(s, Array) and getattr(msg, f.name) is not None)
    assert len(frames) == 2 + n_arrays
    back = decode([bytes(f) for f in frames])
    assert_same(msg, back)


def test_header_fields_travel():
    msg = m.Progress(job_id="j-7", parent_id="abc", phase="loading")
    back = decode(encode(msg))
    assert (back.msg_id, back.job_id, back.parent_id, back.timestamp) == (msg.msg_id, "j-7", "abc", msg.timestamp)


def test_unknown_content_fields_are_ignored():
    frames = [bytes(f) for f in encode(m.Hello(client="x"))]
    frames[1] = frames[1][:-1] + b',"from_the_future":[1,2,3]}'
    assert decode(frames).client == "x"


def test_unknown_type_is_a_protocol_error_naming_the_field():
    frames = [bytes(f) for f in encode(m.Hello(client="x"))]
    frames[0] = frames[0].replace(b'"hello"', b'"teleport"')
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == "unknown_msg_type" and info.value.field == "header.msg_type"


def test_newer_major_version_is_refused_with_a_hint():
    frames = [bytes(f) for f in encode(m.Hello(client="x"))]
    ours = f'"version":"{m.PROTOCOL_VERSION}"'.encode()
    assert ours in frames[0]
    frames[0] = frames[0].replace(ours, b'"version":"3.0"')
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == "version_mismatch" and "update" in info.value.hint


def test_newer_minor_version_is_accepted():
    frames = [bytes(f) for f in encode(m.Hello(client="x"))]
    ours = f'"version":"{m.PROTOCOL_VERSION}"'.encode()
    assert ours in frames[0]
    frames[0] = frames[0].replace(ours, b'"version":"2.99"')
    assert decode(frames).client == "x"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: m.Submit(spec={"kind": "generate", "prompt": ""}), "content.spec.prompt"),
        (lambda: m.Submit(spec={"prompt": "x" * 5000}), "content.spec.prompt"),
        (lambda: m.Submit(spec={"kind": "sculpt", "prompt": "x"}), "content.spec.kind"),
        (lambda: m.Submit(spec={"prompt": "x", "guidance": {"cfg": float("nan")}}), "content.spec.guidance.cfg"),
        (lambda: m.Submit(spec={"prompt": "x", "guidance": {"cfg": float("inf")}}), "content.spec.guidance.cfg"),
        (lambda: m.Submit(spec={"prompt": "x", "guidance": {"cfgg": 3}}), "content.spec.guidance.cfgg"),
        (lambda: m.Submit(spec={"prompt": "x", "colour": "red"}), "content.spec.colour"),
        (lambda: m.Submit(spec={"prompt": "x", "guidance": 3}), "content.spec.guidance"),
        (lambda: m.Submit(spec={"prompt": "x", "output": {"mesh_every": -1}}), "content.spec.output.mesh_every"),
        (lambda: m.Submit(spec={"prompt": "x", "output": {"mc_resolution": 100000}}),
         "content.spec.output.mc_resolution"),
        (lambda: m.Submit(spec={"prompt": "x", "output": {"turntable": -1}}), "content.spec.output.turntable"),
        (lambda: m.Submit(spec={"prompt": "x", "output": {"texture_size": 100000}}),
         "content.spec.output.texture_size"),
        (lambda: m.Submit(spec={"prompt": "x", "output": {"turntable_size": 100000}}),
         "content.spec.output.turntable_size"),
        (lambda: m.Submit(spec={"kind": "image", "prompt": "x", "image": {"resolution": 0}}),
         "content.spec.image.resolution"),
        (lambda: m.Submit(spec={"kind": "image", "prompt": "x", "image": {"resolution": 100000}}),
         "content.spec.image.resolution"),
        (lambda: m.Submit(spec={"prompt": "x", "seed": -1}), "content.spec.seed"),
        (lambda: m.Submit(spec={"prompt": "x", "seed": True}), "content.spec.seed"),
        (lambda: m.Submit(spec={"kind": "edit_texture", "prompt": "x"}), "content.vertices"),
        (lambda: m.Cancel(), "header.job_id"),
        (lambda: m.Cancel(job_id="../../etc"), "header.job_id"),
        (lambda: m.Progress(job_id="j", phase="loading", step=-1), "content.step"),
        (lambda: m.Progress(job_id="j", phase="dreaming"), "content.phase"),
        (lambda: m.Submit(spec={"prompt": "a \ud800 teapot"}), "content.spec.prompt"),
        (lambda: m.Submit(spec={"kind": "edit_texture", "prompt": "x"}, vertices=np.zeros((3, 3), np.float32),
                          faces=np.zeros((0, 3), np.uint32), uvs=np.zeros((0, 3, 2), np.float32),
                          texture=np.zeros((8, 8, 3), np.uint8)), "content.faces"),
        (lambda: m.Submit(spec={"prompt": "x", "negative_prompt": "bell \x07"}), "content.spec.negative_prompt"),
        (lambda: m.Log(job_id="j", text="\x1b[2J"), "content.text"),
        (lambda: m.Done(job_id="j", status="completed", outputs={"mesh": "a\udfffb"}), "content.outputs.mesh"),
    ],
)
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ProtocolError) as info:
        encode(make())
    assert info.value.field == field


def test_mesh_rules():
    vertices, faces, colors = mesh_arrays(5, 4)
    bad_faces = faces.copy()
    bad_faces[0, 0] = 5
    with pytest.raises(ProtocolError, match="out of range") as info:
        encode(m.MeshSnapshot(job_id="j", vertices=vertices, faces=bad_faces))
    assert info.value.field == "content.faces"
    with pytest.raises(ProtocolError) as info:
        encode(m.MeshSnapshot(job_id="j", vertices=vertices, faces=faces, colors=colors[:3]))
    assert info.value.field == "content.colors"
    with pytest.raises(ProtocolError) as info:
        encode(m.MeshSnapshot(job_id="j", vertices=vertices.astype(np.float64), faces=faces))
    assert "float32" in str(info.value)
    with pytest.raises(ProtocolError) as info:
        encode(m.MeshSnapshot(job_id="j", vertices=vertices[:, :2].copy(), faces=faces))
    assert info.value.field == "content.vertices"


def test_empty_mesh_is_valid():
    msg = m.MeshSnapshot(job_id="j", vertices=np.zeros((0, 3), np.float32), faces=np.zeros((0, 3), np.uint32))
    back = decode(encode(msg))
    assert back.vertices.shape == (0, 3) and back.faces.shape == (0, 3)


def test_buffer_size_must_match_descriptor():
    vertices, faces, _ = mesh_arrays()
    frames = [bytes(f) for f in encode(m.MeshSnapshot(job_id="j", vertices=vertices, faces=faces))]
    frames[2] = frames[2][:-4]
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.field == "buffers[0]"


def test_extra_buffer_is_refused():
    frames = [bytes(f) for f in encode(m.Hello(client="x"))] + [b"\0" * 8]
    with pytest.raises(ProtocolError, match="not described"):
        decode(frames)


def test_direction_is_enforced():
    frames = encode(m.Welcome(server="s", server_id="i"))
    with pytest.raises(ProtocolError) as info:
        decode(frames, expect_sender="client")
    assert info.value.code == "wrong_direction"
    assert decode(encode(m.Heartbeat()), expect_sender="client").msg_type == "heartbeat"


def test_decoded_arrays_are_views_of_the_frames():
    vertices, faces, _ = mesh_arrays(1000, 2000)
    frames = [bytes(f) for f in encode(m.MeshSnapshot(job_id="j", vertices=vertices, faces=faces))]
    back = decode(frames)
    assert not back.vertices.flags.writeable  # zero-copy: read-only over the received frame
    assert np.array_equal(back.vertices, vertices)


def test_the_specification_documents_every_type_and_field():
    from pathlib import Path

    from asd_protocol import errors
    from asd_protocol.job_spec import JOB_KINDS, SPEC_VERSION, leaves

    spec = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert spec.startswith(f"# ASD Studio wire protocol, version {m.PROTOCOL_VERSION}\n")
    # Every message type and field, and every list the code keeps (phases, states, codes, kinds).
    for name, cls in MESSAGE_TYPES.items():
        assert f"`{name}`" in spec, name
        for f, _ in spec_fields(cls):
            assert f"`{f.name}`" in spec, f"{name}.{f.name}"
    codes = [v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)]
    for value in (*m.PHASES, *m.JOB_STATES, *m.LOG_LEVELS, *JOB_KINDS, *codes):
        assert f"`{value}`" in spec, value
    # …and every setting of the job spec, by its dotted path.
    assert f"`spec_version` is {SPEC_VERSION}" in spec
    for path, _, _ in leaves():
        assert f"| `{path}` |" in spec, path


@pytest.mark.parametrize(("address", "loopback"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.8.0.2:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/asd", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://10.0.0.5:5555", False), ("tcp://gpu-box:5555", False),
])
def test_loopback_addresses(address, loopback):
    from asd_protocol.client import is_loopback

    assert is_loopback(address) is loopback


@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_text_a_program_wrote_is_cleaned_into_text_every_reply_carries(value):
    """Exception messages and library warnings (terminal colours, stray bytes decoded as surrogates) go out
    in `error` and `log`: cleaned, they always pass the rules a stored prompt must pass."""
    from asd_protocol.fields import check_text, clean_text

    cleaned = check_text("content.message", clean_text(value))
    assert cleaned.encode("utf-8").decode("utf-8") == cleaned
    if all(c.isprintable() or c in "\t\n\r" for c in value):
        assert cleaned == value  # ordinary text is left alone
