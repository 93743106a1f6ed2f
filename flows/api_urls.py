from django.urls import path

from flows.api import api

urlpatterns = [path("", api.urls)]
