"""Thin views: input serializer -> service/selector -> output serializer."""

from __future__ import annotations

from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.serializers import (
    LoginInput,
    LogoutInput,
    PasswordChangeInput,
    ProfileInput,
    RefreshInput,
    SignupInput,
    UserOutput,
    token_body,
)
from velro.net import client_ip, user_agent


class PublicView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]


class SignupView(PublicView):
    def post(self, request: Request) -> Response:
        data = SignupInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = services.user_signup(
            email=data.validated_data["email"],
            password=data.validated_data["password"],
            username=data.validated_data.get("username") or None,
            ip=client_ip(request),
            user_agent=user_agent(request),
        )
        return Response(token_body(tokens), status=status.HTTP_201_CREATED)


class LoginView(PublicView):
    def post(self, request: Request) -> Response:
        data = LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = services.user_login(
            email=data.validated_data.get("email"),
            username=data.validated_data.get("username"),
            password=data.validated_data["password"],
            ip=client_ip(request),
            user_agent=user_agent(request),
        )
        return Response(token_body(tokens))


class RefreshView(PublicView):
    def post(self, request: Request) -> Response:
        data = RefreshInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = services.session_refresh(refresh_token=data.validated_data["refresh_token"])
        return Response(token_body(tokens))


class LogoutView(APIView):
    def post(self, request: Request) -> Response:
        data = LogoutInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.session_logout(
            user_id=request.user.pk, session_id=request.auth.session_id, scope=data.validated_data["scope"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    def get(self, request: Request) -> Response:
        return Response(UserOutput(request.user).data)

    def patch(self, request: Request) -> Response:
        data = ProfileInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update_profile(user_id=request.user.pk, **data.validated_data)
        return Response(UserOutput(user).data)


class PasswordChangeView(APIView):
    def post(self, request: Request) -> Response:
        data = PasswordChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_change_password(
            user_id=request.user.pk,
            session_id=request.auth.session_id,
            current_password=data.validated_data["current_password"],
            new_password=data.validated_data["new_password"],
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
