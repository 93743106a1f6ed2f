from django.urls import include, path

from flows import views

urlpatterns = [
    path("", views.home, name="home"),
    path("flows/new/", views.flow_create, name="flow_create"),  # before the editor's flows/<code>/
    path("", include("flows.editor.urls")),
]
