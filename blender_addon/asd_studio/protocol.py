"""The wire protocol, bundled in the extension zip or (when developing) installed with the backend."""

try:  # the extension zip carries a copy of shared/asd_protocol next to this file
    from . import asd_protocol as wire  # type: ignore[attr-defined]
    from .asd_protocol import client  # type: ignore[attr-defined]
except ImportError:  # developing from the repository: the package installed by `make`
    import asd_protocol as wire
    from asd_protocol import client

Accepted, Done, Error, Image, Jobs, JobSpec, Log, MeshSnapshot, Progress, Texture, Welcome = (
    wire.Accepted, wire.Done, wire.Error, wire.Image, wire.Jobs, wire.JobSpec, wire.Log, wire.MeshSnapshot,
    wire.Progress, wire.Texture, wire.Welcome)
AsdClient = client.AsdClient
is_loopback = client.is_loopback
load_keypair = client.load_keypair

__all__ = ["Accepted", "AsdClient", "Done", "Error", "Image", "JobSpec", "Jobs", "Log", "MeshSnapshot", "Progress",
           "Texture", "Welcome", "is_loopback", "load_keypair"]
