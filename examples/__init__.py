"""Example host agents for loop-middleware."""
