"""The FID floors: what two samples of real images score against each other, the figure a GAN's FID is read
against (GET /models' `card.fid_floor`, service/api/cards.py). FID is biased upwards at small n, so a floor
only means something at the n and in the feature space (extractor) of the FID it is set beside.

Data only, and only measured values: a (dataset, extractor, n) not listed has no floor (null, "not measured"),
never an interpolated one. Each figure is `ganserve evaluate --real DATASET --n N` (training/evaluation.py,
`real_floor`: held-out images against the dataset's reference images, both min(N, 2000) for MNIST, whose
held-out part is t10k 8000..9999), run once on the CPU with OMP_NUM_THREADS=1 and the MNIST t10k files in
../shared/data. A larger n cannot be measured with these files: `--n 10000` measures 2,000 images
(`n_fake: 2000`, the n = 2000 figure again), so n = 10000 has no floor.
"""

# (dataset, extractor, n) -> FID of held-out real images against the reference images.
FID_FLOORS: dict[tuple[str, str, int], float] = {
    # `ganserve evaluate --real mnist --n 1000 --data-root ../shared/data --json`: fid 19.526 (precision 0.825,
    # recall 0.864), 2026-12-05, for issue 19.
    ("mnist", "mnist-cnn-v1", 1000): 19.53,
    # `ganserve evaluate --real mnist --n 2000`: fid 9.54, measured by the lead for issue 19; the same command
    # with `--n 10000 --data-root ../shared/data` (capped at 2,000 images) gave 9.536 again on 2026-12-05.
    ("mnist", "mnist-cnn-v1", 2000): 9.54,
}


def fid_floor(dataset: str | None, extractor: str | None, n: int | None) -> float | None:
    """The measured floor at exactly this dataset, extractor and n; None when it was not measured."""
    if dataset is None or extractor is None or n is None:
        return None
    return FID_FLOORS.get((dataset, extractor, n))
