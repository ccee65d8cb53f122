"""Converters and op definitions for exported models."""
