"""Forecasting: ``POST /forecast`` (quantiles, mean, samples for many series), ``POST /anomalies`` and V2."""
