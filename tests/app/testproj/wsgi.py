"""WSGI entry point: ``gunicorn testproj.wsgi``, as in a Heroku Procfile."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproj.settings")

application = get_wsgi_application()
