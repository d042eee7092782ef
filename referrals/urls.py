from django.urls import path

from referrals import views

urlpatterns = [path("me", views.MyReferralsView.as_view(), name="referrals-me")]
