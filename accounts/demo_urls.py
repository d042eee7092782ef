from django.urls import path

from accounts import demo_views

urlpatterns = [
    path("", demo_views.passkeys_demo, name="passkeys-demo"),
]
