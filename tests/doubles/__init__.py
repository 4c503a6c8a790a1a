"""Test doubles for the services meshgw talks to (test support, not product code)."""
