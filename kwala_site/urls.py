from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from executor import health, metrics, webhooks
from executor import views as executor_views
from flows.throttle import ThrottledLoginView
from kwala_site import api

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("runs/", include("executor.urls")),
    path("alerts/", executor_views.notifications, name="notifications"),
    path("api/v1/", include(api.urlpatterns())),
    path("", include("flows.teams.account_urls")),
    path("", include("flows.teams.urls")),
    path("", include("flows.gallery.urls")),
    path("", include("flows.urls")),
    path("hooks/<str:code>/<str:token>/", webhooks.inbound_webhook, name="inbound_webhook"),
    path("hooks/<str:code>/", webhooks.tokenless_webhook),
]

handler404 = "flows.views.page_not_found"
handler500 = "flows.views.server_error"
