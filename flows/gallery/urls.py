from django.urls import path

from flows.gallery import views as gallery_views

urlpatterns = [
    path("templates/", gallery_views.gallery_page, name="gallery"),
    path("templates/<slug:slug>/", gallery_views.use_template, name="use_template"),
]
