"""Orion Advisor API (wealth management): clients, accounts, AUM history."""
