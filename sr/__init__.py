"""ZSSR core."""
