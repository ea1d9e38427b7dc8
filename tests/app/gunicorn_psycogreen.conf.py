"""gunicorn config for the gevent worker with psycopg2, as its users write it.

psycopg2 waits for the server in C, blocking the whole worker under gevent;
psycogreen's wait callback makes it yield to other greenlets instead. It is
installed after the fork, in each worker, once gevent has patched the worker.

    gunicorn testproj.wsgi --worker-class gevent --config gunicorn_psycogreen.conf.py
"""


def post_fork(server, worker):
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    worker.log.info("psycogreen: psycopg2 made cooperative for gevent")
