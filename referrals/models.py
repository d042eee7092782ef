"""Referrals: codes, referral records and their Celery tasks (issue #4)."""
