"""TODO (not yet written): MNIST sample grids over epochs for the seed MLP, DCGAN and a class-conditional
model (one row per digit), side by side.

Plan, for whoever picks it up: for each of `{"architecture": "mlp"}`, `{"architecture": "dcgan",
"image_size": 32}` and `{"architecture": "dcgan", "conditional": True}`, run `training.loop.train` on
MNIST (`common.DATA_ROOT`) with `sample_every=1`; the loop already writes `samples/epoch-NNNN.png` from
the fixed seeds 0..63 (a conditional grid has row i = digit i), so this script only has to copy chosen
epochs into experiments/results/mnist_grids/ and write a markdown page with them plus wall times. It was
left out because DCGAN and the conditional models were still being built when the experiments were
written, and a full run does not fit the CPU budget of that session.
"""

raise SystemExit("experiments/mnist_grids.py is a documented TODO; see its docstring")
