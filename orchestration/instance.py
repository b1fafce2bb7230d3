"""The Dagster instance of ``cryptopipe up``, initialised once before anything uses it.

Dagster's webserver and daemon each create the local SQLite storages when they find
none. Started at the same moment on a fresh ``DAGSTER_HOME``, both can create a
storage and stamp its schema version, leaving two rows in its ``alembic_version``
table ("more than one head present"): the code location never loads, and the broken
database stays. ``cryptopipe up`` therefore runs ``python -m orchestration.instance``
first, alone, and starts the webserver and daemon only once it succeeded:

* a database with several version rows, all naming a known revision and one of them
  the newest (both racers created the current schema), is repaired by keeping the
  newest; anything else is explained (what is wrong, what to move away) and refused;
* then the instance is created and upgraded (``dagster instance migrate``), so every
  storage exists at the current schema before two processes open it.

Exit status 0 when ready, 1 with one paragraph on stderr saying what to do.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path


class BrokenInstanceError(Exception):
    """The instance's storage is damaged in a way we do not repair; says what to do."""


def _revisions() -> tuple[str, set[str]]:
    """The newest schema revision of Dagster's storages and every known one."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.sql import ALEMBIC_SCRIPTS_LOCATION  # the one script dir
    from dagster._core.storage.sql import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", ALEMBIC_SCRIPTS_LOCATION)
    script = ScriptDirectory.from_config(config)
    head = script.as_revision_number("head")
    return str(head), {r.revision for r in script.walk_revisions()}


def repair_versions(home: Path) -> list[str]:
    """Repair storages of ``home`` left with several schema versions; what was done.

    Raises:
        BrokenInstanceError: a storage's versions are not ones we can safely repair.

    """
    repaired: list[str] = []
    for db in sorted(home.rglob("*.db")):
        conn = sqlite3.connect(db)
        try:
            try:
                rows = [str(r[0]) for r in conn.execute("SELECT version_num FROM alembic_version")]
            except sqlite3.DatabaseError:
                continue  # no version table (not a Dagster storage, or not created yet)
            if len(rows) <= 1:
                continue
            head, known = _revisions()
            if head not in rows or not set(rows) <= known:
                msg = (
                    f"Dagster's storage {db} has {len(rows)} schema versions "
                    f"({', '.join(rows)}), not a state cryptopipe repairs. Stop cryptopipe "
                    f"up, move {home} away (it holds only Dagster's run history; candles "
                    "and trades are in Redis and the lake) and start again."
                )
                raise BrokenInstanceError(msg)
            with conn:
                conn.execute("DELETE FROM alembic_version")
                conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (head,))
            repaired.append(
                f"repaired {db.relative_to(home)}: {len(rows)} schema version rows "
                f"({', '.join(rows)}), kept {head}"
            )
        finally:
            conn.close()
    return repaired


def initialise(home: Path) -> list[str]:
    """Repair, then create and upgrade the instance at ``home``; lines to show.

    Raises:
        BrokenInstanceError: see :func:`repair_versions`, or the upgrade failed.

    """
    lines = repair_versions(home)
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    try:
        with DagsterInstance.get() as instance:
            instance.upgrade()
    except Exception as exc:
        msg = (
            f"Dagster's instance at {home} cannot be opened or upgraded: "
            f"{type(exc).__name__}: {str(exc).strip()[:800]}. If it was written by another "
            f"Dagster version or is damaged, move {home} away (it holds only Dagster's run "
            "history) and start again."
        )
        raise BrokenInstanceError(msg) from exc
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestration.instance DAGSTER_HOME``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m orchestration.instance DAGSTER_HOME", file=sys.stderr)
        return 2
    try:
        for line in initialise(Path(args[0])):
            print(line)
    except BrokenInstanceError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
