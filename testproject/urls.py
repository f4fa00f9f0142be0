from django.contrib import admin
from django.urls import include, path

from testproject.demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("send/<str:demo>/", views.send_demo_event, name="send-demo-event"),
    path("admin/", admin.site.urls),
    path("workflows/api/", include("django_workflows.api.urls")),
]
