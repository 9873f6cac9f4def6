"""`ganserve`: run the service, make images, train and evaluate GANs, on this machine or through a server
(`--server URL` or GANSERVE_SERVER, on the Python client ganserve/client.py).

Work done here runs the code the server runs (the API's model registry and encoders for images, the training
loop and evaluation for jobs), so a local answer is the server's answer for the same settings. Heavy modules
(torch, the service) are imported inside the commands that need them: talking to a server stays quick.
"""

import typer

from ganserve.cli import datasets, db, evaluation, images, jobs, keys, models, processes, recipes, secrets, workers

HELP = """Train GANs and serve their generators: run the service, make images, train and evaluate.

Commands work on this machine or, with `--server URL` (or GANSERVE_SERVER), through a ganserve server.
Every command has `--help`."""
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown", help=HELP)

# Typer names each command after its function.
PANELS = {
    "Run the service": [processes.serve, processes.api, processes.worker, workers.workers],
    "Images": [images.sample, images.generate, images.interpolate],
    "Training and evaluation": [
        jobs.train,
        recipes.recipes,
        jobs.jobs,
        jobs.job,
        jobs.cancel,
        evaluation.evaluate,
        evaluation.classifier,
    ],
}
for panel, commands in PANELS.items():
    for command in commands:
        app.command(rich_help_panel=panel)(command)
app.add_typer(datasets.app, name="datasets", rich_help_panel="Training and evaluation")
app.add_typer(models.app, name="models", rich_help_panel="Models and keys")
app.add_typer(keys.app, name="keys", rich_help_panel="Models and keys")
app.add_typer(db.app, name="db", rich_help_panel="Run the service")
app.add_typer(secrets.app, name="secrets", rich_help_panel="Run the service")


def main() -> None:
    app(prog_name="ganserve")
