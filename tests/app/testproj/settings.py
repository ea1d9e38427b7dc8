"""Settings of the sample app, written the way a Heroku user writes them.

Everything that differs between deployments comes from the environment:
DATABASE_URL (through dj-database-url), and for the tests APP_CONN_MAX_AGE,
APP_CONN_HEALTH_CHECKS and APP_DB_OPTIONS, which stand for the CONN_MAX_AGE,
CONN_HEALTH_CHECKS and OPTIONS a user might have set. There is nothing about djpool here.
"""

import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SECRET_KEY", "djpool-sample-app-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["core"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "testproj.urls"
WSGI_APPLICATION = "testproj.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        conn_max_age=int(os.environ.get("APP_CONN_MAX_AGE", "0")),
        conn_health_checks=os.environ.get("APP_CONN_HEALTH_CHECKS") == "1",
    )
}
# APP_DB_OPTIONS (JSON) stands for OPTIONS a user writes in the settings, e.g. TLS files.
if os.environ.get("APP_DB_OPTIONS"):
    DATABASES["default"].setdefault("OPTIONS", {}).update(json.loads(os.environ["APP_DB_OPTIONS"]))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

# Errors of requests (with their tracebacks) go to stderr, as on Heroku's log stream.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    },
}
