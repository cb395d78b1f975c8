"""The read-only sweep and experiment endpoints of ``digitlab serve`` (GET):

- ``/api/sweep?ids=a,b`` or ``?prefix=folder``: the sweep of those runs
  (:func:`digitlab.serve.sweeps.sweep`); ``/api/sweep.csv?...``: its table as CSV;
- ``/api/sweep/curves?ids=|prefix=&column=val_acc``: each seed group's history curve,
  mean ± sd (:func:`digitlab.serve.sweeps.curves`);
- ``/api/experiments``: every experiment folder under the root with its marks;
- ``/api/experiment?id=``: one experiment (figures, members, marks);
- ``/api/experiment/file?id=&name=``: one of its listed figure files (PNG or SVG).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from digitlab.serve import experiments as ex
from digitlab.serve import sweeps as sw
from digitlab.serve.runs import RunIndex


def _selection(request: Request) -> tuple[list[str], str | None]:
    ids = [i for i in request.query_params.get("ids", "").split(",") if i]
    return ids, request.query_params.get("prefix")


def routes(
    index: RunIndex,
    guarded: Callable[[Callable[[Request], Response]], Callable[[Request], Response]],
    json_response: Callable[[Any], Response],
) -> list[Route]:
    """The routes above over ``index``, each wrapped by ``guarded`` (errors as JSON)."""
    runs, exps = sw.SweepCache(), ex.ExperimentCache(index)

    def sweep(request: Request) -> Response:
        return json_response(sw.sweep(index, runs, *_selection(request)))

    def sweep_csv(request: Request) -> Response:
        text = sw.sweep_csv(sw.sweep(index, runs, *_selection(request)))
        disposition = {"Content-Disposition": 'attachment; filename="sweep.csv"'}
        return Response(text, media_type="text/csv; charset=utf-8", headers=disposition)

    def curves(request: Request) -> Response:
        column = request.query_params.get("column")
        return json_response(sw.curves(index, runs, *_selection(request), column))

    def experiments(request: Request) -> Response:
        return json_response(ex.experiments(index, exps))

    def experiment(request: Request) -> Response:
        return json_response(ex.experiment(index, exps, request.query_params.get("id")))

    def figure(request: Request) -> Response:
        q = request.query_params
        path = ex.figure(index, exps, q.get("id"), q.get("name"))
        media = ex.FIGURE_TYPES[str(q.get("name"))[-4:]]  # a listed name: <kind>.png or .svg
        return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})

    return [
        Route("/api/sweep", guarded(sweep)),
        Route("/api/sweep.csv", guarded(sweep_csv)),
        Route("/api/sweep/curves", guarded(curves)),
        Route("/api/experiments", guarded(experiments)),
        Route("/api/experiment", guarded(experiment)),
        Route("/api/experiment/file", guarded(figure)),
    ]
