from django.urls import path

from cuepages import views

urlpatterns = [
    path("", views.index, name="index"),
]
