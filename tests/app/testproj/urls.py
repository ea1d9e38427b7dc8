from django.urls import path

from core import asyncviews, faultviews, poolerviews, views

urlpatterns = [
    path("health/", views.health),
    path("whoami/", views.whoami),
    path("pid/", views.pid),
    path("sql/", views.sql),
    path("iterate/", views.iterate),
    path("raise-in-atomic/", views.raise_in_atomic),
    path("aborted/", views.aborted),
    path("slow/", views.slow),
    path("items/", views.items),
    path("items3/", views.items3),
    path("pool/", faultviews.pool),
    path("pause-in-atomic/", faultviews.pause_in_atomic),
    path("async/items/", asyncviews.items),
    path("pooler/iterate/", poolerviews.iterate),
    path("pooler/increment/", poolerviews.increment),
    path("pooler/session/", poolerviews.session),
]
