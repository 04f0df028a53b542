"""The prediction server of a distilled classifier (`llmdistill serve-bert`): uvicorn + Starlette, JSON.

    POST /predict  {"texts": ["...", ...]}  ->  {"labels": [...], "ids": [...], "probs": [[...], ...]}
    GET  /health                             ->  {"status": "ok", "model": ..., "labels": [...]}

settings.py (limits and defaults), predictor.py (the run checked before binding, the model), app.py (routes,
validation, micro-batching), server.py (socket, protocol, start-up). docs/bert.md and docs/robustness.md say
what it guarantees.
"""

from llmdistill.bert.serve.predictor import Predictor, ServedRun, check_run, predictor_for_run
from llmdistill.bert.serve.server import PredictionServer, serving
from llmdistill.bert.serve.settings import ServeSettings

__all__ = ["PredictionServer", "Predictor", "ServeSettings", "ServedRun", "check_run", "predictor_for_run", "serving"]
