"""``digitlab serve``: a local, offline web application over a folder of runs.

It lists every run (``train``) and experiment member (``reproduce``) under the runs root,
shows one run's curves, weights, confusion matrix and settings (live while it trains),
overlays the curves of several runs, and predicts digits drawn on a canvas with the runs'
checkpoints. The JSON endpoints are documented in :mod:`digitlab.serve.app`; the page
(``static/``) is plain HTML, CSS and JavaScript drawing its charts as SVG.
"""

from __future__ import annotations

from digitlab.serve.app import create_app, serve_in_thread

__all__ = ["create_app", "serve_in_thread"]
