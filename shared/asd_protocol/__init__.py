"""ASD Studio wire protocol v2: the code the Blender add-on and the backend share.

No bpy, no torch: standard library, numpy and pyzmq only, so the add-on can bundle it.
The specification is docs/protocol.md.
"""

from .errors import ProtocolError, error_text
from .frames import FrameLimits, decode, encode
from .job_spec import JobSpec
from .messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    RESUMABLE_STATES,
    Accepted,
    Attach,
    Cancel,
    Done,
    Error,
    Heartbeat,
    Hello,
    Image,
    JobInfo,
    Jobs,
    ListJobs,
    Log,
    MeshSnapshot,
    Message,
    Progress,
    Resume,
    Submit,
    TeacherInfo,
    Texture,
    Welcome,
)

__version__ = "0.1.0"

__all__ = [
    "MESSAGE_TYPES", "PROTOCOL_VERSION", "RESUMABLE_STATES", "Accepted", "Attach", "Cancel", "Done", "Error",
    "FrameLimits", "Heartbeat", "Hello", "Image", "JobInfo", "JobSpec", "Jobs", "ListJobs", "Log", "MeshSnapshot",
    "Message", "Progress", "ProtocolError", "Resume", "Submit", "TeacherInfo", "Texture", "Welcome", "decode",
    "encode", "error_text",
]
