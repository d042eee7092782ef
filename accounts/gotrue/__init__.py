"""Supabase Auth (GoTrue) compatible surface under /auth/v1/.

Thin views over the same services, selectors, rate limits and sessions as the
native API (accounts.views): only the request/response shapes, the error
bodies and the access-token claims are GoTrue's.
"""
