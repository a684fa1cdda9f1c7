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
RESUMABLE_STATES = wire.RESUMABLE_STATES
partial_from_options = wire.job_spec.partial_from_options


def reason(exc: BaseException) -> str:
    """What a failed request shows the artist: a spec error in the protocol's one format (with its hint),
    anything else as it says."""
    return exc.text if isinstance(exc, wire.ProtocolError) else str(exc)


def spec_range(section: str, name: str) -> tuple[float, float]:
    """(lo, hi) of a job-spec setting, e.g. ("guidance", "cfg"): the add-on allows what the spec allows."""
    import dataclasses

    section_cls = next(f.type for f in dataclasses.fields(JobSpec) if f.name == section)
    if isinstance(section_cls, str):  # postponed annotations: resolve the section's class by name
        section_cls = getattr(wire.job_spec, section_cls)
    field = next(f for f in dataclasses.fields(section_cls) if f.name == name)
    rule = field.metadata["spec"]
    return float(rule.lo), float(rule.hi)

AsdClient = client.AsdClient
is_loopback = client.is_loopback
load_keypair = client.load_keypair

__all__ = [
    "RESUMABLE_STATES",
    "Accepted",
    "AsdClient",
    "Done",
    "Error",
    "Image",
    "JobSpec",
    "Jobs",
    "Log",
    "MeshSnapshot",
    "Progress",
    "Texture",
    "Welcome",
    "is_loopback",
    "load_keypair",
]
