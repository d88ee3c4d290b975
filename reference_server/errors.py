"""API errors and the one error envelope every failure is answered with."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """A failure to answer with `{"error": {message, type, param, code}}` and an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The JSON body for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        """An aiohttp response carrying the envelope."""
        return web.json_response(self.envelope(), status=self.status, headers=self.headers)
