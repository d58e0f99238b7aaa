"""Helpers for testing Orchard and third-party storage backends."""
