"""The app's own sitecustomize: djpool's shim must still run it."""

import os

os.environ["APP_SITECUSTOMIZE"] = "loaded"
