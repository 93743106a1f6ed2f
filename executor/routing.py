from django.urls import path

from executor import consumers

websocket_urlpatterns = [
    path("ws/runs/<uuid:code>/", consumers.RunConsumer.as_asgi()),
    path("ws/flows/<str:code>/runs/", consumers.FlowRunsConsumer.as_asgi()),
    path("ws/teams/<str:code>/runs/", consumers.TeamRunsConsumer.as_asgi()),
]
