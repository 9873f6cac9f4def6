"""`ganserve keys create|list|revoke`: the API keys in the keys file (core/keys.py keeps the file's format)."""

import re
from pathlib import Path
from typing import Annotated

import typer

from core.keys import (
    CREATE_COMMAND,
    ApiKeyEntry,
    KeyFileError,
    Scope,
    hash_key,
    new_key,
    read_key_file,
    write_key_file,
)
from core.settings import Settings
from core.train_config import NAME_PATTERN
from ganserve.cli.common import err, fail

app = typer.Typer(
    help="Make, list and revoke API keys.\n\nA key is shown once, when it is made; only its SHA-256 is stored.",
    no_args_is_help=True,
)

KeysFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help="The keys file (default: GANSERVE_API_KEYS_FILE, else <GANSERVE_CHECKPOINT_DIR>/api-keys.json).",
        show_default=False,
    ),
]
Name = Annotated[str, typer.Option("--name", help="Who holds the key (a-z 0-9 . _ -), e.g. ci or alice.")]
NAME_RULE = "1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"


def parse_scopes(text: str) -> list[Scope]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("give at least one scope")
    unknown = [s for s in names if s not in Scope.__members__]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(Scope)}")
    return list(dict.fromkeys(Scope(s) for s in names))


def _entries(path: Path) -> list[ApiKeyEntry]:
    try:
        return read_key_file(path)
    except KeyFileError as e:
        raise fail(str(e), 2) from None


@app.command()
def create(
    name: Name,
    scopes: Annotated[str, typer.Option(help=f"Comma-separated, of: {', '.join(Scope)} (admin: all of them).")],
    file: KeysFile = None,
) -> None:
    """Make a key, print it once (stdout) and add its hash to the keys file."""
    path = file or Settings().effective_api_keys_file
    if not re.fullmatch(NAME_PATTERN, name):
        raise fail(f"--name {name!r}: {NAME_RULE}", 2)
    try:
        chosen = parse_scopes(scopes)
    except ValueError as e:
        raise fail(str(e), 2) from None
    entries = _entries(path)
    if any(e.name == name for e in entries):
        raise fail(
            f"{path} already has a key named {name!r}; choose another name, or revoke it first "
            f"(ganserve keys revoke --name {name})",
            2,
        )
    key = new_key()
    write_key_file(path, [*entries, ApiKeyEntry(name=name, sha256=hash_key(key), scopes=chosen)])
    typer.echo(key)
    err().print(
        f"API key {name!r} (scopes: {', '.join(chosen)}) added to {path}.\n"
        "This is the only time the key is shown: only its SHA-256 is stored. A running server reads the file "
        "again on its next request.\nSend it as `Authorization: Bearer <key>`, e.g. "
        'export API_KEY=<key>; curl -H "Authorization: Bearer $API_KEY" …',
        markup=False,
        highlight=False,
    )


@app.command("list")
def list_keys(file: KeysFile = None) -> None:
    """The keys' names, scopes and where each is configured (never a key or its hash)."""
    settings = Settings()
    path = file or settings.effective_api_keys_file
    from_file = _entries(path)
    file_names = {e.name for e in from_file}
    rows = [(e, str(path)) for e in from_file]
    rows += [(e, "GANSERVE_API_KEYS") for e in settings.api_keys if e.name not in file_names]
    if not rows:
        typer.echo(f"no API keys (none in GANSERVE_API_KEYS, none in {path}); make one with: {CREATE_COMMAND}")
    for entry, source in rows:
        typer.echo(f"{entry.name}\t{','.join(entry.scopes)}\t{source}")


@app.command()
def revoke(name: Name, file: KeysFile = None) -> None:
    """Remove a key from the keys file.

    A running server refuses it from its next request."""
    path = file or Settings().effective_api_keys_file
    entries = _entries(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        raise fail(f"{path} has no key named {name!r}", 2)
    write_key_file(path, kept)
    err().print(f"revoked {name!r} in {path}; a running server refuses it from its next request", markup=False)
