"""The status API (API Gateway REST -> StatusFunction): routes, auth, error bodies."""

from promptrun.api.routes import app_from_settings, build_app

__all__ = ["app_from_settings", "build_app"]
