"""Who a model name belongs to, and who may be served it (`model_names`, `model_grants`, core/db.py).

A name is claimed by the first key that trains a model under it (POST /train claims it before the job is queued,
so no job trains for a name it cannot publish under); only its owner (or an `admin` key) may publish new versions,
change its visibility or grant read access. A `public` name is served to every caller of /generate; a `private`
one to its owner, `admin` keys and the keys it is granted to. The bundled models' names are reserved: never
claimed, never shadowed (`reserved_names`). A name nobody has claimed yet reads as public.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from core import db as tables
from core.db import Database, aware
from core.records import now

Visibility = Literal["public", "private"]
VISIBILITIES: tuple[Visibility, ...] = ("public", "private")


@dataclass(frozen=True)
class ModelName:
    name: str
    owner: str | None  # an API key's name; None: claimed not over HTTP (the operator's: admin keys only)
    visibility: Visibility
    created_at: datetime
    grantees: tuple[str, ...] = field(default=())  # keys granted read access (sorted)

    def owned_by(self, key: str | None, *, admin: bool = False) -> bool:
        """May `key` publish under this name, change it or grant it (`admin`: every key's)."""
        return admin or (key is not None and key == self.owner)

    def readable_by(self, key: str | None, *, admin: bool = False) -> bool:
        """May `key` (None: an anonymous caller) be served this name's versions and see them listed."""
        if self.visibility == "public" or admin:
            return True
        return key is not None and (key == self.owner or key in self.grantees)


class NameOwned(Exception):
    """The name is claimed by another key."""

    def __init__(self, name: str, owner: str | None):
        super().__init__(name)
        self.name = name
        self.owner = owner

    def __str__(self) -> str:
        who = f"key {self.owner!r}" if self.owner is not None else "the operator"
        return (
            f"Model name {self.name!r} belongs to {who}: only its owner (or an `admin` key) may train or publish "
            "under it. Choose another model_name."
        )


class NameReserved(Exception):
    """The name is a bundled model's."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return (
            f"Model name {self.name!r} is a bundled model's, which cannot be trained over or shadowed. Choose another "
            "model_name."
        )


@lru_cache(maxsize=8)
def reserved_names(bundled_dir: Path) -> frozenset[str]:
    """The bundled models' names (the folders of `bundled_dir`): read once, they ship with the code."""
    try:
        return frozenset(p.name for p in bundled_dir.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


class ModelNames:
    def __init__(self, db: Database, reserved: Iterable[str] = ()):
        self.db = db
        self.reserved = frozenset(reserved)

    def get(self, name: str, conn: Connection | None = None) -> ModelName | None:
        if conn is None:
            with self.db.begin() as own:
                return self.get(name, own)
        t, g = tables.model_names, tables.model_grants
        row = conn.execute(select(t).where(t.c.name == name)).one_or_none()
        if row is None:
            return None
        grantees = conn.execute(select(g.c.grantee).where(g.c.name == name).order_by(g.c.grantee)).scalars().all()
        return _name(row._mapping, tuple(grantees))

    def all(self) -> dict[str, ModelName]:
        """Every claimed name (two queries, whatever the count)."""
        t, g = tables.model_names, tables.model_grants
        with self.db.begin() as conn:
            rows = conn.execute(select(t)).all()
            grants: dict[str, list[str]] = {}
            for name, grantee in conn.execute(select(g.c.name, g.c.grantee).order_by(g.c.grantee)):
                grants.setdefault(name, []).append(grantee)
        return {r.name: _name(r._mapping, tuple(grants.get(r.name, ()))) for r in rows}

    def claim(
        self,
        name: str,
        owner: str | None,
        *,
        visibility: Visibility = "public",
        admin: bool = False,
        conn: Connection | None = None,
    ) -> ModelName:
        """The claim on `name` for `owner`: made now if nobody holds it (with `visibility`), else the existing one
        when `owner` holds it (or `admin`: an admin key may publish under any key's name, which stays that key's).
        Raises NameReserved for a bundled model's name, NameOwned when another key holds it. Two first claims at
        once make one: the primary key lets one insert through, and the other reads it."""
        if name in self.reserved:
            raise NameReserved(name)
        if conn is None:
            try:
                with self.db.begin() as own:
                    return self.claim(name, owner, visibility=visibility, admin=admin, conn=own)
            except IntegrityError:  # claimed by another process between our read and our insert
                with self.db.begin() as own:
                    return self.claim(name, owner, visibility=visibility, admin=admin, conn=own)
        existing = self.get(name, conn)
        if existing is None:
            created = now()
            conn.execute(
                insert(tables.model_names).values(name=name, owner=owner, visibility=visibility, created_at=created)
            )
            return ModelName(name, owner, visibility, created)
        if not existing.owned_by(owner, admin=admin):
            raise NameOwned(name, existing.owner)
        return existing

    def set_visibility(self, name: str, visibility: Visibility) -> bool:
        with self.db.begin() as conn:
            t = tables.model_names
            return conn.execute(update(t).where(t.c.name == name).values(visibility=visibility)).rowcount > 0

    def grant(self, name: str, grantee: str) -> bool:
        """Give `grantee` read access to `name` (claimed); False when it had it already."""
        try:
            with self.db.begin() as conn:
                conn.execute(insert(tables.model_grants).values(name=name, grantee=grantee, created_at=now()))
        except IntegrityError:
            return False
        return True

    def revoke(self, name: str, grantee: str) -> bool:
        with self.db.begin() as conn:
            g = tables.model_grants
            return conn.execute(delete(g).where(g.c.name == name, g.c.grantee == grantee)).rowcount > 0


def _name(row: dict, grantees: tuple[str, ...]) -> ModelName:
    visibility = row["visibility"] if row["visibility"] in VISIBILITIES else "private"  # unknown: the safe reading
    return ModelName(row["name"], row["owner"], visibility, aware(row["created_at"]), grantees)
