"""Typed errors of the teacher service.

Each error carries a stable ``code`` and the HTTP ``status`` it maps to. They are raised inside
replicas, travel through Ray handles (Ray re-raises the original type) and become the JSON body
``{"error": {"code", "message"}}`` over HTTP; the client turns that body back into the same type.
"""

from __future__ import annotations


class TeacherServiceError(Exception):
    """Base class: a request the service refuses, with a code, a message and an HTTP status."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __reduce__(self):  # keep code/status when pickled across Ray processes
        return (type(self), (self.message, self.code, self.status))

    def to_body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(TeacherServiceError):
    code, status = "invalid_request", 422


class UnknownTeacher(TeacherServiceError):
    code, status = "unknown_teacher", 404


class UnsupportedSignal(TeacherServiceError):
    code, status = "unsupported_signal", 422


class RequestTooLarge(TeacherServiceError):
    code, status = "request_too_large", 413


class Unauthorized(TeacherServiceError):
    code, status = "unauthorized", 401


class Overloaded(TeacherServiceError):
    code, status = "overloaded", 429


ERROR_TYPES: dict[str, type[TeacherServiceError]] = {
    cls.code: cls
    for cls in (TeacherServiceError, InvalidRequest, UnknownTeacher, UnsupportedSignal, RequestTooLarge, Unauthorized, Overloaded)
}


def error_from_body(body: dict, status: int) -> TeacherServiceError:
    """Rebuild a typed error from an HTTP error body (client side)."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code", "internal_error")
    cls = ERROR_TYPES.get(code, TeacherServiceError)
    return cls(err.get("message", f"HTTP {status}"), code=code, status=status)
