"""Admin building blocks every app may use (platform: imports no app)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only pages (no add, no edit, no direct delete) plus service-backed actions.

    Actions declare `permissions=["operate"]`: they need the model's real
    change permission, although the change form itself is view-only.
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Refused on this model's own pages; allowed when the row is only part
        # of a cascade (an operator deleting a user), which the admin checks
        # against each related model's admin.
        match = getattr(request, "resolver_match", None)
        own_pages = f"{self.opts.app_label}_{self.opts.model_name}_"
        if match is not None and (match.url_name or "").startswith(own_pages):
            return False
        return super().has_delete_permission(request, obj)
