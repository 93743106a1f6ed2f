from django.urls import path

from flows import views

urlpatterns = [
    path("", views.home, name="home"),
]
