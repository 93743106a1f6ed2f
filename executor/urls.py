from django.urls import path

from executor import views

urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("<uuid:code>/", views.run_detail, name="run_detail"),
    path("<uuid:code>/state/", views.run_state, name="run_state"),
    path("<uuid:code>/steps/<str:step_id>/", views.run_step, name="run_step"),
    path("<uuid:code>/retry/", views.run_retry, name="run_retry"),
    path("<uuid:code>/rerun/", views.run_rerun, name="run_rerun"),
]
