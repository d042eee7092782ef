"""GET /api/v1/referrals/me: the caller's code, counts by status, the people they referred."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from referrals import selectors
from referrals.serializers import MyReferralsOutput, ReferredUserOutput
from velro.openapi import errors


class ReferralPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class MyReferralsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("page", int, description="1-based page number"),
            OpenApiParameter("page_size", int, description="up to 100 (default 20)"),
        ],
        responses={200: MyReferralsOutput, **errors(401, 404, 503)},
        summary="The caller's referral code, counts by status and referred users",
    )
    def get(self, request: Request) -> Response:
        paginator = ReferralPagination()
        page = paginator.paginate_queryset(selectors.referrals_made(referrer_id=request.user.pk), request, view=self)
        return Response(
            {
                "code": selectors.referral_code_get(user_id=request.user.pk),
                "counts": selectors.referral_counts(referrer_id=request.user.pk),
                "count": paginator.page.paginator.count,
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "results": ReferredUserOutput(page, many=True).data,
            }
        )
