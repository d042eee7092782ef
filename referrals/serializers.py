from __future__ import annotations

from rest_framework import serializers

from referrals.models import Referral


class ReferredUserOutput(serializers.Serializer):
    id = serializers.UUIDField(source="referred.id")
    display_name = serializers.CharField(source="referred.display_name")
    joined = serializers.DateTimeField(source="referred.date_joined")
    status = serializers.CharField()

    class Meta:
        model = Referral
