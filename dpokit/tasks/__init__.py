"""Shipped example tasks: data builders and judges used by the quickstart."""
