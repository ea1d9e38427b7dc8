"""The sample app with Heroku Connection Pooling attached, as the README tells a user to do.

``heroku pg:connection-pooling:attach DATABASE_URL --as DATABASE_CONNECTION_POOL``
sets DATABASE_CONNECTION_POOL_URL; the one change to the settings is to read
the database from it (DJANGO_SETTINGS_MODULE=testproj.connection_pooling_settings
picks this module in the tests). DATABASE_URL, the direct URL, stays set.
"""

import json
import os

import dj_database_url

from testproj.settings import *  # noqa: F403 - the app's settings, one line changed
from testproj.settings import DATABASES

DATABASES["default"] = dj_database_url.config(env="DATABASE_CONNECTION_POOL_URL")

# As in testproj.settings: APP_DB_OPTIONS stands for OPTIONS the user wrote.
if os.environ.get("APP_DB_OPTIONS"):
    DATABASES["default"].setdefault("OPTIONS", {}).update(json.loads(os.environ["APP_DB_OPTIONS"]))
