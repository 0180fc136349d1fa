"""The forecaster's entry: ``bentoml serve service.forecast_service:SeqForecast``; the services live in their room,
``service/tasks/forecast/app.py``."""

from service.tasks.forecast.app import ForecastModel, SeqForecast

__all__ = ["SeqForecast", "ForecastModel"]
