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


class Unavailable(TeacherServiceError):
    """The service cannot be reached or is not ready (connection refused, 502/503/504 from a proxy)."""

    code, status = "unavailable", 503


ERROR_TYPES: dict[str, type[TeacherServiceError]] = {
    cls.code: cls
    for cls in (TeacherServiceError, InvalidRequest, UnknownTeacher, UnsupportedSignal, RequestTooLarge, Unauthorized,
                Overloaded, Unavailable)
}

# Errors whose body is not ours (a proxy's, a load balancer's) still map to a typed error by status.
STATUS_TYPES: dict[int, type[TeacherServiceError]] = {
    401: Unauthorized, 413: RequestTooLarge, 422: InvalidRequest, 429: Overloaded, 502: Unavailable, 503: Unavailable,
    504: Unavailable,
}


def error_from_body(body: object, status: int) -> TeacherServiceError:
    """Rebuild a typed error from an HTTP error body (client side)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        code = err["code"]
        return ERROR_TYPES.get(code, TeacherServiceError)(str(err.get("message") or f"HTTP {status}"), code=code, status=status)
    cls = STATUS_TYPES.get(status, TeacherServiceError)
    detail = err if isinstance(err, str) else (body if isinstance(body, str) else "")
    message = f"HTTP {status} from the teacher service" + (f": {detail[:300]}" if detail else "")
    return cls(message, code=cls.code if cls is not TeacherServiceError else "http_error", status=status)
