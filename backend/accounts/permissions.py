from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class HasHospital(BasePermission):
    message = "Your account does not belong to a hospital."

    def has_permission(self, request: Request, view: object) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.hospital_id)


class IsHospitalAdmin(BasePermission):
    message = "Only an admin of your hospital may do this."

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_hospital_admin)
