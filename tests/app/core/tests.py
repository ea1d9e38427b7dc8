"""The sample app's own tests, run by ``manage.py test`` as a developer runs them.

Written as any app's tests are; nothing here knows about djpool. Each test
also writes one JSON line to the file named by APP_TEST_RECORD (when set):
the test, the process, the database Django says it uses and the one the
server says it is connected to, and backend pids. tests/test_compat.py reads
it to see which database the tests ran on and whether connections were reused.
"""

from __future__ import annotations

import json
import os
import threading

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from core.models import Item


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def current_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        return cursor.fetchone()[0]


def record(test, **values) -> None:
    """Append what this test saw to $APP_TEST_RECORD (one line, one write)."""
    path = os.environ.get("APP_TEST_RECORD")
    if not path:
        return
    line = json.dumps(
        {
            "test": test.id(),
            "process": os.getpid(),
            "settings_name": connection.settings_dict["NAME"],
            "datname": current_database(),
            **values,
        }
    )
    with open(path, "a") as stream:
        stream.write(line + "\n")


class ItemTests(TestCase):
    """TestCase: every test inside a transaction that is rolled back."""

    @classmethod
    def setUpTestData(cls):
        Item.objects.bulk_create([Item(name=f"fixture-{n}", value=n) for n in range(3)])

    def test_fixture_rows_are_there(self):
        self.assertEqual(Item.objects.filter(name__startswith="fixture-").count(), 3)
        record(self, backend_pid=backend_pid())

    def test_a_change_is_rolled_back_after_the_test(self):
        Item.objects.filter(name="fixture-0").update(value=100)
        self.assertEqual(Item.objects.get(name="fixture-0").value, 100)
        record(self, backend_pid=backend_pid())

    def test_the_change_of_the_other_test_is_gone(self):
        self.assertEqual(Item.objects.get(name="fixture-0").value, 0)
        record(self, backend_pid=backend_pid())


class ReconnectTests(TransactionTestCase):
    """TransactionTestCase: real commits, and a connection closed and opened again."""

    def test_close_and_query_again(self):
        before = backend_pid()
        connection.close()  # what the end of a request does
        after = backend_pid()
        Item.objects.create(name="after-reconnect", value=1)
        self.assertTrue(Item.objects.filter(name="after-reconnect").exists())
        record(self, backend_pid_before_close=before, backend_pid_after_close=after)

    def test_commit_is_visible_to_another_connection(self):
        with transaction.atomic():
            Item.objects.create(name="committed", value=2)
        seen = []

        def look() -> None:
            try:
                seen.append(Item.objects.filter(name="committed").exists())
            finally:
                connection.close()  # a thread's connection is its own to close

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        self.assertEqual(seen, [True])
        record(self, backend_pid=backend_pid())


class RollbackTests(TransactionTestCase):
    def test_an_error_in_atomic_rolls_back(self):
        with self.assertRaises(RuntimeError), transaction.atomic():
            Item.objects.create(name="rolled-back", value=3)
            raise RuntimeError("undo")
        self.assertFalse(Item.objects.filter(name="rolled-back").exists())
        record(self, backend_pid=backend_pid())
