"""The wire protocol, bundled in the extension zip or (when developing) installed with the backend."""

try:  # the extension zip carries a copy of shared/asd_protocol next to this file
    from .asd_protocol import (  # type: ignore[no-redef]
        Accepted,
        Done,
        Error,
        Image,
        Jobs,
        JobSpec,
        Log,
        MeshSnapshot,
        Progress,
        Texture,
        Welcome,
        client,
    )
except ImportError:  # developing from the repository: the package installed by `make`
    from asd_protocol import (
        Accepted,
        Done,
        Error,
        Image,
        Jobs,
        JobSpec,
        Log,
        MeshSnapshot,
        Progress,
        Texture,
        Welcome,
        client,
    )

AsdClient = client.AsdClient
is_loopback = client.is_loopback
load_keypair = client.load_keypair

__all__ = ["Accepted", "AsdClient", "Done", "Error", "Image", "JobSpec", "Jobs", "Log", "MeshSnapshot", "Progress",
           "Texture", "Welcome", "load_keypair"]
