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


class ReferralCountsOutput(serializers.Serializer):
    pending = serializers.IntegerField()
    credited = serializers.IntegerField()
    rejected = serializers.IntegerField()


class MyReferralsOutput(serializers.Serializer):
    code = serializers.CharField(allow_null=True)
    counts = ReferralCountsOutput()
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ReferredUserOutput(many=True)
