from django.urls import path

from flows.editor import views

urlpatterns = [
    path("flows/<str:code>/", views.flow_editor, name="flow_editor"),
    path("flows/<str:code>/nodes/<str:node_id>/", views.node_inspector, name="node_inspector"),
    path("flows/<str:code>/abi/", views.abi_helper, name="abi_helper"),
    path("flows/<str:code>/versions/", views.flow_versions, name="flow_versions"),
    path("flows/<str:code>/versions/<int:number>/rollback/", views.version_rollback, name="version_rollback"),
    path("flows/<str:code>/export.yaml", views.flow_export, name="flow_export"),
    path("flows/<str:code>/import/", views.flow_import, name="flow_import"),
    path("flows/<str:code>/samples/", views.flow_samples, name="flow_samples"),
    path("flows/<str:code>/webhook-token/", views.webhook_token, name="webhook_token"),
]
