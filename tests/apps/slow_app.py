"""A test app whose import takes a while, like a worker loading a big model."""

import os
import time

from flask import Flask, jsonify

time.sleep(float(os.environ.get("SLOW_APP_DELAY_S", "1.0")))
app = Flask(__name__)


@app.get("/health")
def health():  # noqa: ANN201
    return jsonify(status="ok", pid=os.getpid())
