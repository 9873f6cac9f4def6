"""Rendering for /generate and /interpolate: seeds or latents in, a request's finished output out, batched.

Two places can run the forwards, chosen by `GANSERVE_RENDER_PROCESS`:

- `ProcessRenderer` (service/serving/render_process.py, the default): a render process beside each API process,
  which batches the requests, runs the forwards and encodes the PNGs. The API's event loop only writes a
  request's seeds to a socket and reads the answer back: no thread of its own competes with it for the GIL.
- `InProcessRenderer`: the batchers and the encoding pool (service/serving/batcher.py,
  service/serving/cpu_pool.py) in the API process itself. Nothing to start; what the route tests use.

Either way a request's rows are rendered by `LoadedModel.render` in forwards of `batch_rows` rows and
finished by `finish` where the pixels are, so both give the same bytes.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

import torch

from service.serving.batcher import BatcherClosed, Batchers
from service.serving.cpu_pool import CpuPool
from service.serving.registry import LoadedModel
from training.images import grid, png_bytes
from training.latents import latent_from_seed, latents_from_seeds

# zlib level of every PNG served, by measurement (torchvision's encode_png, one AMD EPYC core, torch 2.14.1;
# bytes / µs per image):
#   level                    0              1             3             6              9
#   28×28 digit (mnist-mlp)  880 / 34       285 / 46      262 / 44      259 / 57       257 / 92
#   3×64×64, noisy colour    12432 / 179    9791 / 400    9791 / 395    9707 / 411     9707 / 430
#   4×4 grid, 3×122×122      44907 / 378    6962 / 546    6552 / 644    7754 / 1186    7534 / 5425
# 3 is within 1 % of 6's size on single images and smaller on grids, in about half 6's time on grids. Not a
# setting: nobody needs another, and it changes the bytes (never the pixels), so it is part of the ETag.
PNG_LEVEL = 3

Form = Literal["pngs", "grid", "pixels"]
"""What a request gets back: `pngs`, one PNG per row; `grid`, one PNG of all its rows as a grid (row-major,
as square as possible); `pixels`, the N×C×H×W uint8 images themselves (/interpolate encodes its own)."""

Output = list[bytes] | bytes | torch.Tensor


@dataclass(frozen=True)
class Seeds:
    """Rows given by their seeds: the latents are drawn where the forward runs (training/latents.py)."""

    seeds: list[int]


Rows = torch.Tensor | Seeds
"""A request's rows: N×latent_dim latents, or N seeds."""


def latents_of(rows: Rows, latent_dim: int) -> torch.Tensor:
    if not isinstance(rows, Seeds):
        return rows
    if len(rows.seeds) == 1:  # the common case, without a stack
        return latent_from_seed(rows.seeds[0], latent_dim).unsqueeze(0)
    return latents_from_seeds(rows.seeds, latent_dim)


class RendererClosed(RuntimeError):
    """The request was not rendered, and may be sent again: the renderer is stopping (the server is shutting
    down), or its process has just died. `code` is the 503's error code."""

    code = "shutting_down"


def finish(form: Form, images: torch.Tensor) -> Output:
    """A request's N×C×H×W uint8 images → what `form` asks for."""
    if form == "pngs":
        return [png_bytes(image, PNG_LEVEL) for image in images]
    if form == "grid":
        return png_bytes(images[0] if len(images) == 1 else grid(images), PNG_LEVEL)
    return images


class Renderer(Protocol):
    async def start(self) -> None: ...

    async def render(
        self,
        model: LoadedModel,
        rows: Rows,
        labels: list[int] | None,
        generators: list[int] | None,
        form: Form,
    ) -> Output:
        """Raises RendererClosed when the request was not run (answer 503, retry)."""
        ...

    async def close(self) -> None: ...


class InProcessRenderer:
    """The batchers' threads and the encoding pool inside the API process."""

    def __init__(self, cpu_pool: CpuPool, max_wait_s: float, on_forward: Callable[[int], None] | None = None):
        self.cpu_pool = cpu_pool  # the app's: this renderer does not close it
        self.batchers = Batchers(max_wait_s=max_wait_s, dispatch=self.cpu_pool.dispatch, on_forward=on_forward)

    async def start(self) -> None:
        return None

    async def render(
        self,
        model: LoadedModel,
        rows: Rows,
        labels: list[int] | None,
        generators: list[int] | None,
        form: Form,
    ) -> Output:
        # seed → latent takes ~8 µs a seed: on the loop up to a forward's worth of rows, in the pool beyond.
        if isinstance(rows, Seeds) and len(rows.seeds) > model.batch_rows:
            latents = await self.cpu_pool.run(latents_of, rows, model.latent_dim)
        else:
            latents = latents_of(rows, model.latent_dim)
        try:
            future = self.batchers.submit(model, latents, labels, generators, finish=partial(finish, form))
        except BatcherClosed as e:
            raise RendererClosed(str(e)) from None
        try:
            return await asyncio.wrap_future(future)
        except BatcherClosed as e:
            raise RendererClosed(str(e)) from None

    async def close(self) -> None:
        # No request left waiting (those still queued fail, answered 503), no thread left running.
        await asyncio.to_thread(self.batchers.close)
