from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView


class MeView(APIView):
    def get(self, request: Request) -> Response:
        user = request.user
        return Response({"id": user.pk, "username": user.username, "email": user.email})


urlpatterns = [
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/token/refresh/", TokenRefreshView.as_view()),
    path("api/me/", MeView.as_view()),
]
