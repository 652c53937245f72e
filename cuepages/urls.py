from django.urls import path

from cuepages import views

urlpatterns = [
    path("", views.index, name="index"),
    path("receive", views.receive, name="receive"),
    path("send", views.send, name="send"),
    path("send-link.svg", views.share_qr, name="share-qr"),
]
