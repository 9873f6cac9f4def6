"""A generator's render (forward, then quantisation to uint8) as one traced TorchScript graph, so that it runs
without the GIL.

Why: the batcher's thread runs the forward while the event loop's thread runs FastAPI. An eager forward goes back
to Python between every layer, and each time must win the GIL from the busy loop, which gives it up only every
`sys.getswitchinterval()` (5 ms). Measured on the bundled model, 16 rows, one torch thread, with another Python
thread busy: eager 149 ms per forward (1.7 ms idle), traced 9 ms (1.9 ms idle); under 64 concurrent clients
the eager forward took 15-22 ms inside the server.

TorchScript is deprecated in favour of torch.compile and torch.export: torch.compile's generated code still calls
its kernels from Python (holding the GIL between them), and torch.export's AOTInductor would compile a shared
library per model version at load, tens of seconds here. Until that is cheap, a trace it is, used only when it
is exact: it must give bit-identical outputs to the eager generator on random inputs (labels and generator
indices included), or the eager generator is served instead (and a warning says why).
"""

import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn

from training.images import to_uint8

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
"""`render(z, labels, generators)`: `to_uint8(generator(z, labels=…, generator=…), value_range)`."""

CHECKS = 3  # random inputs the trace must reproduce exactly


class _Render(nn.Module):
    """The generator and the quantisation after it, with positional inputs only (a trace takes tensors, not
    None): one graph, so a batch crosses the GIL once, not once per layer and once per quantisation step."""

    def __init__(self, generator: nn.Module, labels: bool, generators: bool, value_range: tuple[float, float]):
        super().__init__()
        self.generator = generator
        self.labels = labels
        self.generators = generators
        self.value_range = value_range

    def forward(self, z: torch.Tensor, labels: torch.Tensor, generators: torch.Tensor) -> torch.Tensor:
        out = self.generator(
            z, labels=labels if self.labels else None, generator=generators if self.generators else None
        )
        return to_uint8(out, self.value_range)


def _inputs(
    rows: int, latent_dim: int, num_classes: int | None, num_generators: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, latent_dim, generator=rng)
    labels = torch.randint(num_classes or 1, (rows,), generator=rng)
    gens = torch.randint(num_generators or 1, (rows,), generator=rng)
    return z, labels, gens


def trace_render(
    generator: nn.Module,
    rows: int,
    latent_dim: int,
    num_classes: int | None,
    num_generators: int | None,
    value_range: tuple[float, float],
    name: str,
) -> Forward | None:
    """The traced render of `generator` (in eval mode) for batches of `rows`, or None when the trace is not
    exactly the eager render."""
    call = _Render(generator, num_classes is not None, num_generators is not None, value_range).eval()
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the deprecation notice (see above), and tracer warnings checked below
            traced = torch.jit.trace(call, _inputs(rows, latent_dim, num_classes, num_generators, 0), check_trace=False)
            for seed in range(1, CHECKS + 1):
                inputs = _inputs(rows, latent_dim, num_classes, num_generators, seed)
                if not torch.equal(traced(*inputs), call(*inputs)):
                    log.warning("%s: the traced render differs from the eager one; serving the eager one", name)
                    return None
    except Exception as e:  # a generator the tracer cannot follow is served eagerly, not refused
        log.warning("%s: cannot trace the generator (%s: %s); serving the eager one", name, type(e).__name__, e)
        return None

    def render(z: torch.Tensor, labels: torch.Tensor | None, generators: torch.Tensor | None) -> torch.Tensor:
        n = z.shape[0]
        return traced(
            z,
            labels if labels is not None else torch.zeros(n, dtype=torch.long),
            generators if generators is not None else torch.zeros(n, dtype=torch.long),
        )

    return render
