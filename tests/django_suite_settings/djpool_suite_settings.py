"""Settings for Django's own runtests.py on PostgreSQL: ``--settings djpool_suite_settings``.

Like Django's tests/test_sqlite.py, with the two aliases the suite needs on
the throwaway server that tests/django_suite.py starts. Both come from URLs
the way a Heroku app's settings do (dj-database-url): DATABASE_URL, which the
shim reads too, is "default"; OTHER_DATABASE_URL is "other". Both are TLS
URLs (sslmode=verify-full against the server's private CA).
"""

import os

import dj_database_url
import django

DATABASES = {
    "default": dj_database_url.parse(os.environ["DATABASE_URL"]),
    "other": dj_database_url.parse(os.environ["OTHER_DATABASE_URL"]),
}

SECRET_KEY = "django_tests_secret_key"

# Use a fast hasher to speed up tests.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
]

if django.VERSION < (6, 0):  # Django 6's own test settings dropped it (its ids are bigint)
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

USE_TZ = False
