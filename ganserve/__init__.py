"""ganserve's Python client and command line (`ganserve …`); the service itself is `service/`, the training
loop `training/`, the worker `worker/`."""

from ganserve.client import (
    Client,
    Evaluation,
    GanserveError,
    GeneratedImage,
    Job,
    ModelDetail,
    ModelSummary,
    ServerUnreachable,
    WaitTimeout,
)

__all__ = [
    "Client",
    "Evaluation",
    "GanserveError",
    "GeneratedImage",
    "Job",
    "ModelDetail",
    "ModelSummary",
    "ServerUnreachable",
    "WaitTimeout",
]
