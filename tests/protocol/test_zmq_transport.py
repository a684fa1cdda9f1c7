"""Messages over real ZeroMQ sockets on loopback: the ROUTER/DEALER pair the product uses."""

import numpy as np
import zmq

from asd_protocol import MeshSnapshot, decode, encode

from .examples import all_examples


def router_dealer(port: int):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10_000)
    return ctx, router, dealer


def test_one_million_triangles_arrive_intact(free_port):
    ctx, router, dealer = router_dealer(free_port)
    try:
        rng = np.random.default_rng(0)
        n_vertices, n_faces = 500_002, 1_000_000
        vertices = rng.normal(size=(n_vertices, 3)).astype(np.float32)
        faces = rng.integers(0, n_vertices, size=(n_faces, 3), dtype=np.uint32)
        colors = rng.integers(0, 256, size=(n_vertices, 3), dtype=np.uint8)
        msg = MeshSnapshot(job_id="big", vertices=vertices, faces=faces, colors=colors, snapshot=7, final=True)
        dealer.send_multipart(encode(msg), copy=False)
        identity, *frames = router.recv_multipart(copy=False)
        got = decode(frames)
        # Server -> client direction too, through the routing identity.
        router.send_multipart([identity, *encode(got)], copy=False)
        back = decode(dealer.recv_multipart(copy=False))
        for out in (got, back):
            assert out.faces.shape == (n_faces, 3) and out.final and out.snapshot == 7
            assert np.array_equal(out.vertices, vertices)
            assert np.array_equal(out.faces, faces)
            assert np.array_equal(out.colors, colors)
    finally:
        ctx.destroy(linger=0)


def test_every_type_crosses_the_socket(free_port):
    ctx, router, dealer = router_dealer(free_port)
    try:
        for msg in all_examples():
            dealer.send_multipart(encode(msg), copy=False)
            _identity, *frames = router.recv_multipart(copy=False)
            assert decode(frames).msg_id == msg.msg_id
    finally:
        ctx.destroy(linger=0)



def test_the_client_takes_one_request_form_and_every_error_reads_one_way(free_port):
    """`submit` takes a partial spec (flat settings go through `partial_from_options`; the server tests submit
    that way end to end); a stray setting is a TypeError saying where settings go, before anything is sent;
    an error reads 'field: message — hint' whoever shows it."""
    import pytest

    from asd_protocol import Error, ProtocolError, error_text
    from asd_protocol.client import AsdClient
    from asd_protocol.job_spec import partial_from_options

    spec = partial_from_options("generate", prompt="a red mug", cfg=30.0, preset="smoke")
    assert spec == {"kind": "generate", "prompt": "a red mug", "preset": "smoke", "guidance": {"cfg": 30.0}}
    with AsdClient(f"tcp://127.0.0.1:{free_port}", client_name="tests") as client:
        with pytest.raises(TypeError, match="partial_from_options"):
            client.submit(spec, cfg=7.5)
    with pytest.raises(ProtocolError) as refused:
        partial_from_options("generate", prompt="a mug", strength=0.5)  # an edit setting
    assert refused.value.text.startswith("spec.strength: 'strength' is not a setting of generate jobs — settings: ")
    assert Error.from_exception(refused.value).text == refused.value.text
    assert error_text("disk is full") == "disk is full" and error_text("m", "h", "f") == "f: m — h"
