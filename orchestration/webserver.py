"""Asking a running Dagster webserver whether the project's code location loaded.

``cryptopipe up`` starts the webserver and daemon, then waits here until the code
location (``orchestration.definitions``) has loaded, so it can say so, or print
the load error and exit non-zero instead of leaving a UI with nothing in it. It asks
the webserver's GraphQL endpoint, the one the UI itself uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


class CodeLocationError(Exception):
    """The code location could not load (the message is Dagster's error)."""


@dataclass(frozen=True)
class LocationState:
    """One code location as the webserver sees it.

    Attributes:
        name: the location's name.
        loading: still loading.
        error: the load error's message, when it failed.
    """

    name: str
    loading: bool
    error: str | None


def locations(url: str, timeout: float = 5.0) -> list[LocationState]:
    """The webserver's code locations; raises ``requests`` errors when it does not answer."""
    resp = requests.post(f"{url.rstrip('/')}/graphql", json={"query": _QUERY}, timeout=timeout)
    resp.raise_for_status()
    ws = resp.json()["data"]["workspaceOrError"]
    if ws["__typename"] != "Workspace":
        raise CodeLocationError(ws.get("message", ws["__typename"]))
    out = []
    for entry in ws["locationEntries"]:
        loaded = entry.get("locationOrLoadError") or {}
        error = loaded.get("message") if loaded.get("__typename") == "PythonError" else None
        out.append(LocationState(entry["name"], entry["loadStatus"] == "LOADING", error))
    return out


def wait_loaded(
    url: str, timeout: float, *, alive: Callable[[], bool] = lambda: True, poll_s: float = 0.5
) -> list[str]:
    """Wait until every code location of the webserver at ``url`` loaded; their names.

    Raises:
        CodeLocationError: a location failed to load (Dagster's message), or none
            loaded within ``timeout`` seconds, or ``alive()`` turned false (the
            webserver or daemon exited).

    """
    deadline = time.monotonic() + timeout
    last = "the webserver did not answer"
    while time.monotonic() < deadline:
        if not alive():
            msg = f"Dagster exited while the code location was loading ({last})"
            raise CodeLocationError(msg)
        try:
            states = locations(url)
        except (requests.RequestException, KeyError, ValueError) as exc:
            last = f"the webserver did not answer: {exc}"
        else:
            failed = [s for s in states if s.error]
            if failed:
                raise CodeLocationError(
                    "; ".join(f"code location {s.name}: {s.error}" for s in failed)
                )
            if states and not any(s.loading for s in states):
                return [s.name for s in states]
            last = "still loading" if states else "no code location yet"
        time.sleep(poll_s)
    msg = f"the code location did not load within {timeout:.0f} s ({last})"
    raise CodeLocationError(msg)
