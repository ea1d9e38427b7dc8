"""``manage.py seed_items N``: make sure items item-1 .. item-N exist (for /items/)."""

from django.core.management.base import BaseCommand

from core.models import Item


class Command(BaseCommand):
    help = "Create items named item-1 .. item-N that do not exist yet."

    def add_arguments(self, parser):
        parser.add_argument("count", type=int)

    def handle(self, *args, count, **options):
        wanted = {f"item-{n}": n for n in range(1, count + 1)}
        existing = set(Item.objects.filter(name__in=wanted).values_list("name", flat=True))
        Item.objects.bulk_create(
            [
                Item(name=name, value=value)
                for name, value in wanted.items()
                if name not in existing
            ],
            batch_size=1000,
        )
        self.stdout.write(f"{len(wanted) - len(existing)} items created, {len(existing)} existed")
